"""Synthetic VQA-CP-like benchmark in the real VQA v2 file formats: ``generate(cfg, out)``.

Writes into OUT (other tools rely on these names):

    images/{image_id:012d}.png       every image: the four VQA splits and the caption corpus
    synth_{split}_questions.json     VQA v2 questions, split in train, val, test, test_iid
    synth_{split}_annotations.json   VQA v2 annotations, 10 human answers per question
    boxes.json                       COCO detection boxes of every image ("given boxes")
    captions.json                    COCO captions on separate images, uniform attributes
    synth_meta.json                  config, seed, version, counts, answer distributions

Splits: ``train``, ``val`` and ``test_iid`` follow the train answer prior, ``test`` the shifted
one (VQA-CP style, see :mod:`pkd.data.synth_questions`); ``val`` is the model-selection split,
never ``test``. Ids: images of split s are ``ID_BASE[s] + 1, 2, ...`` so no image is shared
between splits or with the captions; question id and caption id = ``image_id * 10 + k``.
Randomness: every part draws from its own ``numpy`` Generator seeded with ``(seed, part)``;
PNGs carry no timestamp, so one seed gives byte-identical files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pkd.data import synth_formats as fmt
from pkd.data.synth_questions import (
    ANSWER_TYPE,
    QUESTION_TYPES,
    TEST_DOMINANT,
    TRAIN_DOMINANT,
    Question,
    acceptance,
    candidates,
    estimate_base,
    human_answers,
    target_prior,
)
from pkd.data.synth_scene import Scene, render_scene, sample_scene
from pkd.errors import PkdError
from pkd.progress import track

SYNTH_VERSION = "1"
SPLITS = ("train", "val", "test", "test_iid")
PRIOR = {"train": "train", "val": "train", "test": "test", "test_iid": "train"}
ID_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000, "test_iid": 4_000_000,
           "captions": 5_000_000}
STREAM = {"pilot": 0, "train": 1, "val": 2, "test": 3, "test_iid": 4, "captions": 5}


@dataclass
class SynthConfig:
    seed: int = 0  # master seed: the same seed gives byte-identical output
    image_size: int = 64  # image side in pixels
    max_objects: int = 4  # objects per image, 1..max_objects, P(n) ∝ n (largest count answer)
    train_images: int = 1500  # images of the train split
    val_images: int = 300  # images of the val split (train prior, for model selection)
    test_images: int = 600  # images of the test split (shifted prior)
    test_iid_images: int = 600  # images of the test_iid split (train prior)
    caption_images: int = 2000  # images of the unbiased caption corpus
    captions_per_image: int = 2  # captions per caption image
    questions_per_image: int = 3  # at most this many questions per VQA image (1..9)
    candidates_per_type: int = 5  # candidate questions per family and scene before acceptance
    bias: float = 0.6  # share of a question type's dominant answer (train's / test's dominant)
    yes_no_bias: float = 0.8  # share of the dominant yes/no answer ("yes" train, "no" test)
    rare: float = 0.03  # share of the train-dominant answer under the test prior
    answer_noise: float = 0.05  # chance that an annotator answers wrongly (at most 2 of 10)
    answer_variation: float = 0.1  # chance of a surface variant ("two", "Yes.") (at most 2 of 10)
    pixel_noise: float = 8.0  # std of the Gaussian pixel noise (0..255 scale)
    pilot_scenes: int = 3000  # scenes used to estimate the candidates' answer distribution

    def images_of(self, split: str) -> int:
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images,
                "test_iid": self.test_iid_images, "captions": self.caption_images}[split]

    def validate(self) -> None:
        """Raise PkdError naming the first unusable field."""
        checks = [
            (self.image_size >= 32, "image_size must be >= 32"),
            (3 <= self.max_objects <= 6, "max_objects must be in 3..6 (test favours count 3)"),
            (all(0 <= self.images_of(s) < 1_000_000 for s in STREAM if s != "pilot"),
             "image counts must be in 0..999999"),
            (1 <= self.questions_per_image <= 9, "questions_per_image must be in 1..9"),
            (1 <= self.captions_per_image <= 9, "captions_per_image must be in 1..9"),
            (self.candidates_per_type >= 1 and self.pilot_scenes >= 100,
             "candidates_per_type must be >= 1 and pilot_scenes >= 100"),
            (0 < self.rare and self.bias + self.rare < 1 and self.bias > 0,
             "need 0 < bias, 0 < rare, bias + rare < 1"),
            (0 < self.yes_no_bias < 1, "yes_no_bias must be in (0, 1)"),
            (0 <= self.answer_noise <= 1 and 0 <= self.answer_variation <= 1,
             "answer_noise and answer_variation must be in [0, 1]"),
        ]
        for ok, problem in checks:
            if not ok:
                raise PkdError(f"SynthConfig: {problem}")


@dataclass
class _Item:
    image_id: int
    scene: Scene
    questions: list[Question]


def _rng(cfg: SynthConfig, part: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, STREAM[part]])


def _keep_probabilities(cfg: SynthConfig) -> dict[str, dict[str, dict[str, float]]]:
    """prior ("train" / "test") -> question type -> answer -> probability of keeping it."""
    base = estimate_base(_rng(cfg, "pilot"), cfg.pilot_scenes, cfg.image_size, cfg.max_objects,
                         cfg.candidates_per_type)
    keep = {}
    for prior in ("train", "test"):
        target = {t: target_prior(t, prior, cfg.max_objects, cfg.bias, cfg.yes_no_bias, cfg.rare)
                  for t in QUESTION_TYPES}
        keep[prior] = acceptance(base, target)
    return keep


def _sample_split(cfg: SynthConfig, split: str, keep: dict, rng: np.random.Generator,
                  seen: set) -> list[_Item]:
    """Draw scenes until ``images_of(split)`` of them keep at least one question."""
    items: list[_Item] = []
    limit = 1000 * (cfg.images_of(split) + 1)
    for _ in range(limit):
        if len(items) == cfg.images_of(split):
            return items
        scene = sample_scene(rng, cfg.image_size, cfg.max_objects)
        if scene.signature() in seen:  # never repeat a layout across splits
            continue
        kept = [q for q in candidates(scene, rng, cfg.candidates_per_type)
                if rng.random() < keep[q.question_type].get(q.answer, 0.0)]
        if len(kept) > cfg.questions_per_image:
            pick = rng.choice(len(kept), cfg.questions_per_image, replace=False)
            kept = [kept[i] for i in sorted(pick)]
        if kept:
            seen.add(scene.signature())
            items.append(_Item(ID_BASE[split] + len(items) + 1, scene, kept))
    raise PkdError(f"SynthConfig: split {split} kept too few questions; lower bias / raise rare")


def _vqa_records(cfg: SynthConfig, items: list[_Item], rng: np.random.Generator):
    """VQA v2 question and annotation records of one split."""
    questions, annotations = [], []
    for item in items:
        for k, q in enumerate(item.questions):
            qid = item.image_id * 10 + k
            questions.append({"image_id": item.image_id, "question": q.text, "question_id": qid})
            answers = human_answers(q, rng, cfg.max_objects, cfg.answer_noise,
                                    cfg.answer_variation)
            annotations.append({
                "question_type": q.question_type, "multiple_choice_answer": q.answer,
                "answers": answers, "image_id": item.image_id,
                "answer_type": ANSWER_TYPE[q.question_type], "question_id": qid})
    return questions, annotations


def _caption_items(cfg: SynthConfig, rng: np.random.Generator, seen: set) -> list[_Item]:
    """Unbiased scenes (no question filter) for the caption corpus."""
    items: list[_Item] = []
    while len(items) < cfg.caption_images:
        scene = sample_scene(rng, cfg.image_size, cfg.max_objects)
        if scene.signature() not in seen:
            seen.add(scene.signature())
            items.append(_Item(ID_BASE["captions"] + len(items) + 1, scene, []))
    return items


def _render(cfg: SynthConfig, items: list[_Item], rng: np.random.Generator, folder: Path,
            what: str) -> None:
    for item in track(items, description=f"rendering {what}"):
        image = render_scene(item.scene, cfg.image_size, rng, cfg.pixel_noise)
        image.save(folder / fmt.image_file_name(item.image_id), format="PNG")


def _prepare(out: Path) -> Path:
    """Create OUT/images; refuse a non-empty folder that is not an earlier synth output."""
    if out.exists() and not out.is_dir():
        raise PkdError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth_meta.json").exists():
        raise PkdError(f"{out}: folder is not empty and holds no earlier synth output")
    images = out / "images"
    if images.is_dir():  # an earlier synth run: drop its images so no stale id survives
        for old in images.glob("*.png"):
            old.unlink()
    images.mkdir(parents=True, exist_ok=True)
    return images


def _write_json(path: Path, obj: dict, indent: int | None = None) -> None:
    path.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")


def _distribution(annotations: list[dict]) -> dict[str, dict[str, float]]:
    """question type -> majority answer -> share, rounded to 4 digits."""
    counts: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    for a in annotations:
        counts[a["question_type"]][a["multiple_choice_answer"]] += 1
    return {t: {a: round(n / max(1, sum(c.values())), 4) for a, n in sorted(c.items())}
            for t, c in counts.items()}


def generate(cfg: SynthConfig, out: Path) -> dict:
    """Write the benchmark into ``out`` (see the module docstring); returns the meta dict."""
    cfg.validate()
    out = Path(out)
    images = _prepare(out)
    keep = _keep_probabilities(cfg)
    seen: set = set()
    box_images, box_anns = [], []
    meta_splits = {}
    for split in SPLITS:
        rng = _rng(cfg, split)
        items = _sample_split(cfg, split, keep[PRIOR[split]], rng, seen)
        questions, annotations = _vqa_records(cfg, items, rng)
        _render(cfg, items, rng, images, split)
        _write_json(out / f"synth_{split}_questions.json", fmt.questions_file(split, questions))
        _write_json(out / f"synth_{split}_annotations.json",
                    fmt.annotations_file(split, annotations))
        meta_splits[split] = {"prior": PRIOR[split], "images": len(items),
                              "questions": len(questions),
                              "answer_distribution": _distribution(annotations)}
        box_images += [fmt.image_entry(i.image_id, cfg.image_size) for i in items]
        box_anns += [a for i in items for a in fmt.box_annotations(i.image_id, i.scene)]
    rng = _rng(cfg, "captions")
    caption_items = _caption_items(cfg, rng, seen)
    caption_anns = [{"id": item.image_id * 10 + k, "image_id": item.image_id, "caption": text}
                    for item in caption_items for k, text in
                    enumerate(fmt.caption_sentences(item.scene, rng, cfg.captions_per_image))]
    _render(cfg, caption_items, rng, images, "captions")
    caption_images = [fmt.image_entry(i.image_id, cfg.image_size) for i in caption_items]
    _write_json(out / "captions.json", fmt.captions_file(caption_images, caption_anns))
    box_anns += [a for i in caption_items for a in fmt.box_annotations(i.image_id, i.scene)]
    _write_json(out / "boxes.json", fmt.boxes_file(box_images + caption_images, box_anns))
    meta = {
        "generator": "pkd.data.synth", "version": SYNTH_VERSION, "seed": cfg.seed,
        "config": asdict(cfg), "splits": meta_splits,
        "captions": {"images": len(caption_items), "captions": len(caption_anns)},
        "id_base": ID_BASE,
        "dominant_answers": {"train": TRAIN_DOMINANT, "test": TEST_DOMINANT},
        "keep_probabilities": {prior: {t: {a: round(r, 4) for a, r in per.items()}
                                       for t, per in by_type.items()}
                               for prior, by_type in keep.items()},
    }
    _write_json(out / "synth_meta.json", meta, indent=2)
    return meta
