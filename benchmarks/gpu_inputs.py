"""The GPU benchmark's synthetic inputs: JPEG files named like COCO's, VQA v2-format question
and annotation files, and the same images decoded and resized in RAM."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from gpu_sizes import Size

WORDS = ("what color is the square circle triangle star there a red blue green yellow how many "
         "shapes are where left right top bottom center small large of next to photo").split()
COCO_NAME = "COCO_train2014_{:012d}.jpg"


def jpeg_contents(size: Size, seed: int = 0) -> list[bytes]:
    """``size.distinct`` JPEGs (quality 90): smooth random colour fields, a few shapes and
    sensor-like noise: ~105 KB at 640x480 (COCO averages ~160 KB)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size.jpeg
    out = []
    for _ in range(size.distinct):
        small = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = x0 + int(rng.integers(4, w // 3 + 5)), y0 + int(rng.integers(4, h // 3 + 5))
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        noisy = np.asarray(img, np.int16) + rng.normal(0, 9, (h, w, 3)).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_images(folder: Path, ids: np.ndarray, contents: list[bytes]) -> None:
    """One COCO-named JPEG per id, cycling through ``contents``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):
        (folder / COCO_NAME.format(int(image_id))).write_bytes(contents[i % len(contents)])


def write_vqa2(root: Path, ids: np.ndarray, per_image: int, answers: int,
               annotations: bool, seed: int = 0) -> Path:
    """VQA v2 train2014 question (and annotation) files over ``ids``; question id =
    image id * 10 + j; each question's most common answer cycles through ``answers`` classes
    (every class is seen once there are as many questions)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    questions, anns = [], []
    pool = [f"ans{k}" for k in range(answers)]
    order = rng.permutation(len(ids) * per_image)
    for n, (image_id, j) in enumerate((int(i), j) for i in ids for j in range(per_image)):
        qid = image_id * 10 + j
        words = rng.choice(WORDS, int(rng.integers(4, 13)))
        questions.append({"image_id": image_id, "question": " ".join(words) + " ?",
                          "question_id": qid})
        main = pool[order[n] % answers]
        others = [pool[int(k)] for k in rng.integers(0, answers, 2)]
        given = [main] * 6 + [others[0]] * 2 + [others[1]] * 2
        anns.append({"question_id": qid, "image_id": image_id, "question_type": "what is the",
                     "answer_type": "other", "multiple_choice_answer": main,
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                 for k, a in enumerate(given)]})
    head = {"info": {}, "license": {}, "data_subtype": "train2014"}
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(
        json.dumps({**head, "task_type": "Open-Ended", "data_type": "mscoco",
                    "questions": questions}))
    if annotations:
        (root / "v2_mscoco_train2014_annotations.json").write_text(
            json.dumps({**head, "data_type": "mscoco", "annotations": anns}))
    return root


def resized_size(w: int, h: int, side: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``side`` (CLIP's ``shortest_edge`` resize)."""
    return (side, int(side * h / w)) if w < h else (int(side * w / h), side)


def decoded_bank(contents: list[bytes], processor) -> torch.Tensor:
    """(K, 3, crop, crop) uint8: each JPEG decoded, resized and centre-cropped with PIL as the
    checkpoint's processor does (before rescale and normalize)."""
    from PIL import Image

    side, (ch, cw) = processor.size["shortest_edge"], crop_size(processor)
    out = []
    for data in contents:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img = img.resize(resized_size(*img.size, side), Image.Resampling.BICUBIC)
        left, top = (img.width - cw) // 2, (img.height - ch) // 2
        out.append(np.asarray(img.crop((left, top, left + cw, top + ch))).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def crop_size(processor) -> tuple[int, int]:
    return processor.crop_size["height"], processor.crop_size["width"]
