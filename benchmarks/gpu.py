"""GPU benchmark: extraction images/s and training steps/s of pkd at VQA v2 sizes, one table.

Run it on the GPU machine through ``benchmarks/gpu.sh`` (installs the carried wheels and pkd
first); ``--size tiny`` runs the same code on a CPU in well under a minute (the test), and
``--size full`` is the measurement: a random CLIP ViT-B/16 built from its config (no download),
``--images`` 640x480 JPEG files in COCO's naming, 36 x 2048 regions, batch 512, AMP.

Extraction rows (images/s; ``x forward`` = seconds per image / those of the bare forward pass at
the same batch, dtype and attention: the overhead; target <= 1.1x from decoded tensors):

* ``bare forward <dtype>, <attention>``: ``get_image_features`` of a batch already on the device,
  under the autocast pkd uses (float32 weights), for float32 / float16 / bfloat16, eager / SDPA
  attention (pkd loads eager: only DistillVLM's teacher needs attention maps). The limit.
* ``pkd as is``: ``extract_foundation(..., targets=("images",))`` in-process, exactly the code of
  ``pkd extract foundation`` (one prefetch thread decodes with PIL, the checkpoint's
  ``CLIPImageProcessorPil`` runs in the main thread, eager attention, the store written after
  each shard); and the CLI itself as a subprocess (images + questions; these stores feed PKD).
* ``CPU decode threads`` / ``GPU decode_jpeg`` / ``decoded tensors``: the same pkd runner and
  store (``run_stage``, ``StoreWriter``, shards of 512) and the same autocast forward and
  conversion as ``FoundationModel.encode_images``, with another image reader in pkd's
  prefetch thread: a pool of ``cores - 1`` threads running pkd's ``load_images`` + the PIL
  processor per image; ``torchvision.io.decode_jpeg(device="cuda")`` on the file bytes +
  resize / crop / normalize on the GPU (rows say n/a without CUDA or torchvision); uint8 images
  already decoded and resized in RAM. pkd has none of these readers yet: the rows show what
  adding one would give. On CUDA a reader's copies and kernels run on a side stream.
* ``compute only``: that stage's ``run`` over all images at once (reader, forward, conversion;
  no shards, no store) and ``store write alone`` (``StoreWriter.write_shard`` of the model's own
  outputs, no compute): with the rows above, where the time beyond the forward goes (pkd's
  runner writes each shard after computing it, with the GPU idle meanwhile).

Training rows (steps/s; ``x RAM`` = store steps/s / RAM steps/s, target >= 0.9x): a
:class:`pkd.train.loop.Trainer` built as ``pkd train`` builds it (``run.amp=true``) for the UpDn
baseline, PKD stage 2 (stage-1 predictors checkpoint, foundation stores from the CLI above) and
the DistillVLM student (cached teacher store from ``extract_teacher``), fed batches as ``fit``
feeds them (``pkd.prefetch``, 2 ahead) either from the stores (chunk cache emptied before each
pass: each chunk decoded once, as in an epoch over data larger than the cache) or by the same
``VQABatches`` code from the same arrays held in RAM. ``wait ms``: mean time a step waited for
its batch. ``GPU busy %``: mean of NVML's utilisation (what nvidia-smi shows; torch's
``cuda.utilization``) sampled every 50 ms during the row.

Every row is measured the size's ``repeat`` times (fastest kept) except the as-is ones; a
failing row prints ``error: ...`` (``--strict`` raises instead), rows left when ``--budget``
seconds have passed say so, and the table always comes out. Run:
``python benchmarks/gpu.py --size tiny`` here, ``bash benchmarks/gpu.sh --size full`` there.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_loader import ID_BASE, RamRegions, region_arrays, write_store
from common import VIT_B16, ClipSize, build_clip, machine, print_table

from pkd.demo import PKD as DEMO_PKD
from pkd.demo import STUDENT as DEMO_STUDENT
from pkd.demo import TEACHER as DEMO_TEACHER
from pkd.pipeline.extract import FoundationRecipe, extract_foundation
from pkd.pipeline.foundation import FoundationModel, FoundationSpec, _numpy, load_foundation
from pkd.pipeline.runner import RunOptions, auto_threads, run_stage, usable_cores
from pkd.pipeline.sources import SourceConfig, load_source
from pkd.pipeline.stages import FoundationImageStage, batches, empty_arrays, load_images
from pkd.prefetch import prefetch
from pkd.stores import Failure, StoreWriter
from pkd.train.config import load_config
from pkd.train.data import Stores, VQABatches
from pkd.train.loop import Trainer
from pkd.train.teacher_extract import extract_teacher

DTYPES = ("float32", "float16", "bfloat16")
ATTENTIONS = ("eager", "sdpa")
WORDS = ("what color is the square circle triangle star there a red blue green yellow how many "
         "shapes are where left right top bottom center small large of next to photo").split()
COCO_NAME = "COCO_train2014_{:012d}.jpg"
COMPUTE_ROW = "compute only: decoded tensors, sdpa (no runner, no store)"
WRITE_ROW = "store write alone (StoreWriter: f16 vision tokens + embeds, default codec)"
LEGEND = ("ratio: what 'ratio is' says (x forward: seconds per image / the bare forward's at that "
          "dtype and attention); wait ms: mean time a training step waited for its batch; GPU "
          "busy %: mean NVML utilisation sampled every 50 ms during the row")


@dataclass(frozen=True)
class Size:
    clip: ClipSize  # the foundation model built from its config
    images: int  # JPEG files for the extraction rows with fast readers
    train_images: int  # images of the training set (also the pkd-as-is rows and the CLI)
    jpeg: tuple[int, int]  # (width, height) of the JPEG files
    distinct: int  # distinct JPEG contents (the files cycle through them)
    batch: int  # images per forward pass
    regions: int  # regions per image
    region_dim: int  # region feature size
    questions_per_image: int  # VQA v2 train: 443,757 / 82,783 = 5.4
    answers: int  # answer classes (VQA v2 bottom-up: 3129)
    train_batch: int  # questions per training step
    steps: int  # timed training steps per pass
    repeat: int  # passes per row, fastest kept
    val_fraction: float  # carved validation share (pkd train needs a validation split)
    models: dict = field(default_factory=dict)  # overrides per role: updn, student, teacher, pkd


TINY_CLIP = ClipSize(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2,
                     vision_heads=2, text_hidden=32, text_layers=2, text_heads=2, projection=32)
SIZES = {
    "tiny": Size(TINY_CLIP, images=32, train_images=16, jpeg=(64, 48), distinct=8, batch=8,
                 regions=36, region_dim=32, questions_per_image=3, answers=20, train_batch=16,
                 steps=3, repeat=1, val_fraction=0.1,
                 models={"updn": {"model.hidden_size": 64, "model.word_dim": 32},
                         "student": DEMO_STUDENT, "teacher": DEMO_TEACHER, "pkd": DEMO_PKD}),
    # pkd's default model sizes (UpDn 512 wide; fusion student 512 x 4 layers; teacher 768 x 12)
    "full": Size(VIT_B16, images=8192, train_images=2048, jpeg=(640, 480), distinct=256,
                 batch=256, regions=36, region_dim=2048, questions_per_image=5, answers=3129,
                 train_batch=512, steps=20, repeat=2, val_fraction=0.02,
                 models={"student": {"model.arch": "fusion"}}),
}


# ----------------------------------------------------------------------------- the table
class Table:
    """The rows, in print order; a row's cells fill in as it is measured."""

    def __init__(self, strict: bool, budget_s: float):
        self.rows: dict[str, dict] = {}
        self.strict, self.budget_s, self.start = strict, budget_s, time.monotonic()

    def add(self, label: str, **cells) -> dict:
        row = self.rows.setdefault(label, {"what": label})
        row.update(cells)
        return row

    def na(self, label: str, why: str, unit: str = "images/s") -> None:
        self.add(label, **{unit: f"n/a ({why})"})

    def measure(self, labels: str | list[str], fn: Callable[[], None],
                unit: str = "images/s") -> None:
        """Run ``fn`` (which fills the rows); an error or the time budget marks the rows."""
        labels = [labels] if isinstance(labels, str) else labels
        if time.monotonic() - self.start > self.budget_s:
            for label in labels:
                self.na(label, "skipped: time budget", unit)
            return
        try:
            fn()
        except Exception as err:  # one failing row must not lose the others
            if self.strict:
                raise
            traceback.print_exc()
            for label in labels:
                self.na(label, f"error: {type(err).__name__}: {str(err)[:80]}", unit)
        for label in labels:  # as it goes: a run stopped at its time limit keeps these lines
            cells = {k: v for k, v in self.rows.get(label, {}).items() if k != "what" and v != ""}
            print(f"[gpu bench] {label}: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in cells.items()),
                file=sys.stderr, flush=True)

    def print(self) -> None:
        cols = ["what", "images/s", "steps/s", "seconds", "ratio", "ratio is", "wait ms",
                "GPU busy %"]
        rows = [{c: r.get(c, "") for c in cols} for r in self.rows.values()]
        print_table(rows, "what")


class Busy:
    """Mean GPU utilisation (NVML, as nvidia-smi shows it) sampled every ``interval`` seconds
    while the block runs: ``percent``, or the reason there is none."""

    def __init__(self, reader: Callable[[], float] | str, interval: float = 0.05):
        """``reader``: returns the utilisation now, or says why it cannot be read."""
        self.reader, self.interval, self.samples = reader, interval, []

    def __enter__(self) -> Busy:
        self._stop = threading.Event()
        if callable(self.reader):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(float(self.reader()))
            except Exception:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if callable(self.reader):
            self._thread.join()

    @property
    def percent(self) -> float | str:
        if not callable(self.reader):
            return f"n/a ({self.reader})"
        return float(np.mean(self.samples)) if self.samples else "n/a (no samples)"


def utilization_reader(device: str) -> Callable[[], float] | str:
    """torch's NVML reading, else nvidia-smi's; else why neither works."""
    if device != "cuda":
        return "no cuda"
    try:
        torch.cuda.utilization()
        return torch.cuda.utilization
    except Exception:
        pass

    def smi() -> float:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True).stdout
        return float(out.split()[0])

    try:
        smi()
        return smi
    except Exception:
        return "no NVML, no nvidia-smi"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- data
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

    side, (ch, cw) = processor.size["shortest_edge"], _crop(processor)
    out = []
    for data in contents:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img = img.resize(resized_size(*img.size, side), Image.Resampling.BICUBIC)
        left, top = (img.width - cw) // 2, (img.height - ch) // 2
        out.append(np.asarray(img.crop((left, top, left + cw, top + ch))).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def _crop(processor) -> tuple[int, int]:
    return processor.crop_size["height"], processor.crop_size["width"]


# ----------------------------------------------------------------------------- extraction
def set_attention(fm: FoundationModel, attention: str) -> None:
    fm.model.set_attn_implementation(attention)


@torch.inference_mode()
def encode_pixels(fm: FoundationModel, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """What :meth:`FoundationModel.encode_images` does after its image processor (CLIP)."""
    with fm._autocast():
        out = fm.model.get_image_features(pixel_values=pixels.to(fm.device))
    return {"vision_tokens": _numpy(out.last_hidden_state, fm.spec.token_dtype),
            "image_embeds": _numpy(F.normalize(out.pooler_output.float(), dim=-1), "float32")}


class ReaderStage(FoundationImageStage):
    """pkd's image stage (store spec, rows, failures) with another image reader:
    ``read(ids, positions) -> (ok positions, pixel batch (B, 3, H, W) on the device, failures)``,
    run in pkd's prefetch thread one batch ahead of the forward pass. On CUDA the reader's copies
    and kernels go to a side stream, so they overlap the forward pass of the batch before."""

    def __init__(self, fm: FoundationModel, source, batch_size: int, read: Callable):
        super().__init__(fm, source, batch_size, {**fm.provenance(), "stage": "foundation/images"})
        self.read = read
        self.side = torch.cuda.Stream() if fm.device.type == "cuda" else None

    def _read(self, ids, r: range):
        if self.side is None:
            return (*self.read(ids, r), None)
        with torch.cuda.stream(self.side):
            pos, pixels, failures = self.read(ids, r)
            done = torch.cuda.Event()
            done.record(self.side)
        return pos, pixels, failures, done

    def run(self, ids):
        arrays, failures = empty_arrays(self._spec, len(ids)), []
        for pos, pixels, failed, done in prefetch(lambda r: self._read(ids, r),
                                                  batches(len(ids), self.batch_size)):
            failures += failed
            if pos:
                if done is not None:  # the forward waits for the reader's stream, and the
                    torch.cuda.current_stream().wait_event(done)  # allocator for the forward
                    pixels.record_stream(torch.cuda.current_stream())
                out = encode_pixels(self.model, pixels)
                for name in arrays:
                    arrays[name][pos] = out[name]
        return arrays, failures


def _pinned(shape: tuple, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A host buffer for one batch: page-locked when it is copied to a GPU (a new one per batch:
    torch's pinned allocator keeps a block until the copies that read it are done)."""
    return torch.empty(shape, dtype=dtype, pin_memory=device == "cuda")


def _normalizer(processor, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B, 3, H, W) -> the processor's rescale + normalize, float32 on ``device``."""
    mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)
    sync(device)  # they are read on the readers' side stream
    scale = float(processor.rescale_factor)
    return lambda x: (x.to(device, non_blocking=True).float() * scale - mean) / std


def cpu_thread_reader(source, processor, pool: ThreadPoolExecutor, device: str) -> Callable:
    """Each image through pkd's ``load_images`` (PIL, failures) + the PIL processor, in
    ``pool``, written straight into one (pinned) batch buffer; one copy to the device."""
    ch, cw = _crop(processor)

    def one(ids, p: int, row: np.ndarray) -> list:
        _, images, failures = load_images(source, ids, range(p, p + 1))
        if images:
            row[...] = processor(images=images, return_tensors="np")["pixel_values"][0]
        return failures

    def read(ids, r: range):
        buf = _pinned((len(r), 3, ch, cw), torch.float32, device)
        rows = buf.numpy()
        failures = [f for fs in pool.map(lambda i: one(ids, r[i], rows[i]), range(len(r)))
                    for f in fs]
        bad = {int(f.id) for f in failures}
        keep = [i for i, p in enumerate(r) if int(ids[p]) not in bad]
        if not keep:
            return [], None, failures
        if len(keep) < len(r):
            buf = buf[keep]
        return [r[i] for i in keep], buf.to(device, non_blocking=True), failures

    return read


def torchvision_decoder(device: str) -> Callable:
    """``decode(list of uint8 file-byte tensors) -> list of (3, H, W) uint8 on device``:
    ``torchvision.io.decode_jpeg`` (batched nvjpeg on CUDA), RGB."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return lambda datas: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def gpu_decode_reader(source, processor, pool: ThreadPoolExecutor, device: str,
                      decode_jpeg: Callable | None = None) -> Callable:
    """File bytes read in ``pool``; ``decode_jpeg`` of the batch (default
    :func:`torchvision_decoder`) on the GPU; resize (shorter side, bicubic, antialias), centre
    crop, rescale + normalize there."""
    decode_jpeg = decode_jpeg or torchvision_decoder(device)
    side, (ch, cw) = processor.size["shortest_edge"], _crop(processor)
    normalize = _normalizer(processor, device)

    def load(ids, p: int):
        path = source.image_path(int(ids[p]))
        if path is None:
            return p, None, Failure(int(ids[p]), "", "no image file for this id")
        return p, torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), None

    def decode(datas: list[torch.Tensor], ids, pos: list[int]):
        try:
            return decode_jpeg(datas), []
        except RuntimeError:  # one bad file: decode one by one, the bad ones become failures
            images, failures = [], []
            for data, p in zip(datas, pos, strict=True):
                try:
                    images.append(decode_jpeg([data])[0])
                except RuntimeError as err:
                    images.append(None)
                    path = source.image_path(int(ids[p]))
                    failures.append(Failure(int(ids[p]), str(path), f"decode_jpeg: {err}"))
            return images, failures

    def read(ids, r: range):
        got = list(pool.map(lambda p: load(ids, p), r))
        failures = [f for _, _, f in got if f is not None]
        ok = [(p, d) for p, d, _ in got if d is not None]
        images, bad = decode([d for _, d in ok], ids, [p for p, _ in ok])
        keep = [(p, im) for (p, _), im in zip(ok, images, strict=True) if im is not None]
        if not keep:
            return [], None, failures + bad
        out = torch.empty((len(keep), 3, ch, cw), dtype=torch.uint8, device=device)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (_, im) in enumerate(keep):
            by_size.setdefault(tuple(im.shape[1:]), []).append(i)
        for (h, w), rows in by_size.items():  # one resize per distinct image size
            x = torch.stack([keep[i][1] for i in rows]).float()
            nw, nh = resized_size(w, h, side)
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True,
                              align_corners=False)
            top, left = (nh - ch) // 2, (nw - cw) // 2
            out[rows] = x[:, :, top:top + ch, left:left + cw].round().clamp(0, 255).to(torch.uint8)
        return [p for p, _ in keep], normalize(out), failures + bad

    return read


def tensor_reader(bank: torch.Tensor, ids_all: np.ndarray, processor, device: str) -> Callable:
    """Images already decoded and resized (uint8 in RAM): gather into a (pinned) batch buffer,
    copy, normalize on the device."""
    index = {int(i): k % len(bank) for k, i in enumerate(ids_all)}
    normalize = _normalizer(processor, device)

    def read(ids, r: range):
        rows = torch.tensor([index[int(ids[p])] for p in r])
        buf = _pinned((len(r), *bank.shape[1:]), torch.uint8, device)
        torch.index_select(bank, 0, rows, out=buf)
        return list(r), normalize(buf), []

    return read


@torch.inference_mode()
def bare_forward(fm: FoundationModel, pixels: torch.Tensor, n_batches: int, dtype: str,
                 device: str) -> float:
    """Seconds of ``n_batches`` forward passes of ``pixels`` (2 warm-up passes first)."""
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    ctx = lambda: torch.autocast(device, dtype=dt, enabled=dt != torch.float32)  # noqa: E731
    for _ in range(2):
        with ctx():
            fm.model.get_image_features(pixel_values=pixels)
    sync(device)
    start = time.perf_counter()
    for _ in range(n_batches):
        with ctx():
            out = fm.model.get_image_features(pixel_values=pixels)
            out.last_hidden_state, out.pooler_output  # noqa: B018 (what extraction keeps)
    sync(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args, size: Size, device: str, dtype: str, work: Path):
        self.args, self.size, self.device, self.dtype, self.work = args, size, device, dtype, work
        self.table = Table(args.strict, args.budget)
        self.util = utilization_reader(device)
        self.threads = max(1, usable_cores() - 1)
        self.phase_s: dict[str, float] = {}
        self.notes: list[str] = []
        self.forward_s: dict[tuple[str, str], float] = {}  # seconds per image

    def phase(self, name: str, fn: Callable[[], None]) -> None:
        start = time.monotonic()
        fn()
        self.phase_s[name] = time.monotonic() - start
        print(f"[gpu bench] {name}: {self.phase_s[name]:.1f} s", file=sys.stderr, flush=True)

    # -- data
    def prepare(self) -> None:
        s, w = self.size, self.work
        self.clip_dir = build_clip(w / "clip", s.clip)
        self.ids = ID_BASE + np.arange(s.images, dtype=np.int64)
        self.contents = jpeg_contents(s)
        self.image_dir = w / "images"
        write_images(self.image_dir, self.ids, self.contents)
        self.data_ext = write_vqa2(w / "data_ext", self.ids, 1, s.answers, annotations=False)
        self.data_train = write_vqa2(w / "data_train", self.ids[:s.train_images],
                                     s.questions_per_image, s.answers, annotations=True)
        self.stores = w / "stores"

    def source(self, root: Path) -> SourceConfig:
        return SourceConfig(root, dataset="vqa2", splits=("train",), images=self.image_dir)

    # -- extraction
    def extraction(self) -> None:
        s, t = self.size, self.table
        fm = load_foundation(FoundationSpec(str(self.clip_dir), device=self.device,
                                            dtype=self.dtype))
        pixels = torch.randn(s.batch, 3, *_crop(fm.image_processor), device=self.device)
        self._model_rows(fm, pixels)
        del fm, pixels
        self._free()
        t.measure("extract: JPEG, pkd as is (1 decode thread, PIL processor), eager",
                  self._as_is)
        t.measure("extract: `pkd extract foundation` CLI (as is; + questions)", self._cli)

    def _model_rows(self, fm: FoundationModel, pixels: torch.Tensor) -> None:
        """The rows that share one loaded model: bare forwards, fast readers, write alone."""
        s, t = self.size, self.table
        n_batches = max(1, s.images // s.batch)
        for attention in ATTENTIONS:
            set_attention(fm, attention)
            for dtype in DTYPES:
                label = f"bare forward {dtype}, {attention}"
                n = max(1, n_batches // 4) if dtype == "float32" else n_batches  # slow: fewer
                t.measure(label, lambda a=attention, d=dtype, lab=label, n=n: self._forward(
                    fm, pixels, n, d, a, lab))
        source = load_source(self.source(self.data_ext))
        pool = ThreadPoolExecutor(self.threads)
        readers = {
            "JPEG, CPU decode threads + PIL processor": (
                ATTENTIONS, lambda: cpu_thread_reader(source, fm.image_processor, pool,
                                                      self.device)),
            "JPEG, GPU decode_jpeg + GPU resize": (("sdpa",), lambda: self._gpu_reader(
                source, fm.image_processor, pool)),
            "decoded tensors (uint8 in RAM)": (ATTENTIONS, lambda: tensor_reader(
                decoded_bank(self.contents, fm.image_processor), self.ids, fm.image_processor,
                self.device)),
        }
        for name, (attentions, make) in readers.items():
            labels = [f"extract: {name}, {a}" for a in attentions]
            try:
                read = make()
            except _NotAvailable as why:
                for label in labels:
                    t.na(label, str(why))
                continue
            for attention, label in zip(attentions, labels, strict=True):
                t.measure(label, lambda a=attention, lab=label, rd=read: self._extract(
                    fm, source, rd, a, lab))
            if name.startswith("decoded"):
                t.measure(COMPUTE_ROW, lambda rd=read: self._compute_only(fm, source, rd))
        pool.shutdown()
        t.measure(WRITE_ROW, lambda: self._write_alone(fm, pixels))

    def _forward(self, fm, pixels, n_batches: int, dtype: str, attention: str, label: str):
        best = float("inf")
        with Busy(self.util) as busy:
            for _ in range(self.size.repeat):
                best = min(best, bare_forward(fm, pixels, n_batches, dtype, self.device))
        n = n_batches * len(pixels)
        self.forward_s[dtype, attention] = best / n
        base = self.forward_s.get(("float32", attention))
        self.table.add(label, **{"images/s": n / best, "seconds": best,
                                 "ratio": base * n / best if base else "",
                                 "ratio is": f"speed / float32 {attention}",
                                 "GPU busy %": busy.percent})

    def _ratio_cells(self, seconds: float, n: int, attention: str) -> dict:
        limit = self.forward_s.get((self.dtype, attention))
        return {"images/s": n / seconds, "seconds": seconds,
                "ratio": seconds / n / limit if limit else "",
                "ratio is": f"x forward {self.dtype} {attention}"}

    def _gpu_reader(self, source, processor, pool):
        if self.device != "cuda":
            raise _NotAvailable("no cuda")
        try:
            import torchvision.io  # noqa: F401 (never installed on the CPU machine)
        except ImportError:
            raise _NotAvailable("no torchvision") from None
        return gpu_decode_reader(source, processor, pool, self.device)

    def _extract(self, fm, source, read, attention: str, label: str) -> None:
        set_attention(fm, attention)
        stage = ReaderStage(fm, source, self.size.batch, read)
        out = self.work / "extract_tmp.zarr"
        best = float("inf")
        with Busy(self.util) as busy:
            for _ in range(self.size.repeat):
                report = run_stage(label, lambda _: stage, out, RunOptions(overwrite=True), label)
                if report.failures:
                    raise RuntimeError(f"{len(report.failures)} images failed, e.g. "
                                       f"{report.failures[0]}")
                best = min(best, report.seconds)
        shutil.rmtree(out, ignore_errors=True)
        self.table.add(label, **self._ratio_cells(best, len(stage.ids), attention),
                       **{"GPU busy %": busy.percent})

    def _compute_only(self, fm, source, read) -> None:
        """The decoded-tensor stage's ``run`` over every image at once: reader, forward and
        conversion overlapped by the prefetch thread, without the runner's shards and writes."""
        set_attention(fm, "sdpa")
        stage = ReaderStage(fm, source, self.size.batch, read)
        best = float("inf")
        with Busy(self.util) as busy:
            for _ in range(self.size.repeat):
                start = time.perf_counter()
                stage.run(stage.ids)
                best = min(best, time.perf_counter() - start)
        self.table.add(COMPUTE_ROW, **self._ratio_cells(best, len(stage.ids), "sdpa"),
                       **{"GPU busy %": busy.percent})

    def _write_alone(self, fm, pixels) -> None:
        set_attention(fm, "sdpa")
        one = encode_pixels(fm, pixels)  # the model's own outputs: realistic compressibility
        stage = FoundationImageStage(fm, load_source(self.source(self.data_ext)), self.size.batch,
                                     {**fm.provenance(), "stage": "foundation/images"})
        spec = dataclasses.replace(stage.spec(), items_per_shard=RunOptions.items_per_shard,
                                   items_per_chunk=RunOptions.items_per_chunk)
        out, best = self.work / "write_tmp.zarr", float("inf")
        for _ in range(self.size.repeat):
            with StoreWriter(out, spec, stage.ids, overwrite=True) as writer:
                start = time.perf_counter()
                for k in writer.pending():
                    n = len(writer.shard_rows(k))
                    tile = np.arange(n) % len(pixels)
                    writer.write_shard(k, {name: a[tile] for name, a in one.items()})
                best = min(best, time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)
        self.table.add(WRITE_ROW, **self._ratio_cells(best, len(stage.ids), "sdpa"))

    def _recipe(self, root: Path) -> FoundationRecipe:
        return FoundationRecipe(self.source(root), str(self.clip_dir), device=self.device,
                                dtype=self.dtype, batch_size=self.size.batch)

    def _as_is(self) -> None:
        label = "extract: JPEG, pkd as is (1 decode thread, PIL processor), eager"
        out = self.work / "as_is"
        with Busy(self.util) as busy:
            r = extract_foundation(self._recipe(self.data_train), out,
                                   RunOptions(overwrite=True), targets=("images",)).reports[0]
        shutil.rmtree(out, ignore_errors=True)
        self.table.add(label, **self._ratio_cells(r.seconds, r.items_run, "eager"),
                       **{"GPU busy %": busy.percent})
        self._free()

    def _cli(self) -> None:
        """``pkd extract foundation`` as a user runs it; its stores feed PKD stage 2."""
        label = "extract: `pkd extract foundation` CLI (as is; + questions)"
        cmd = [sys.executable, "-m", "pkd", "extract", "foundation", "--data",
               str(self.data_train), "--dataset", "vqa2", "--splits", "train", "--images",
               str(self.image_dir), "--model", str(self.clip_dir), "--out", str(self.stores),
               "--device", self.device, "--dtype", self.dtype, "--batch-size",
               str(self.size.batch), "--overwrite"]
        self.cli_command = " ".join(cmd[3:])
        start = time.perf_counter()  # cwd: not the checkout, whose pkd/ would shadow the install
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.work,
                              env={**os.environ, "PKD_QUIET": "1"})
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
        line = next(x for x in done.stdout.splitlines() if "foundation_images.zarr" in x)
        m = re.search(r"(\d+) items in [\d.]+s \((\d+) items/s", line)  # report_line format
        if m is None:
            raise RuntimeError(f"no images/s in the CLI's report line: {line!r}")
        n, seconds = int(m.group(1)), int(m.group(1)) / float(m.group(2))
        self.table.add(label, **self._ratio_cells(seconds, n, "eager"),
                       **{"GPU busy %": "n/a (subprocess)"})
        self.notes.append(f"CLI row: pkd {self.cli_command}: wall {wall:.1f} s "
                          "(start, imports, model load, images, questions); images/s from its "
                          "report line")

    def _free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    # -- training
    def training(self) -> None:
        s, t = self.size, self.table
        labels = {"baseline": "UpDn baseline", "pkd": "PKD stage 2",
                  "distillvlm": "DistillVLM student (cached teacher)"}
        self.regions = self.stores / "regions.zarr"
        write_store(self.regions, region_arrays(s.train_images, s.regions, s.region_dim))
        if not (self.stores / "foundation_questions.zarr" / "zarr.json").is_file():
            extract_foundation(self._recipe(self.data_train), self.stores,
                               RunOptions(overwrite=True))  # the CLI row did not make them
        self.runs = self.work / "runs"
        for method, name in labels.items():
            rows = [f"train {name}, {feed}" for feed in ("RAM", "store")]
            if time.monotonic() - t.start > t.budget_s:
                for label in rows:
                    t.na(label, "skipped: time budget", "steps/s")
                continue
            try:
                trainer = self._trainer(method)
            except Exception as err:
                if t.strict:
                    raise
                traceback.print_exc()
                for label in rows:
                    t.na(label, f"error: {type(err).__name__}: {str(err)[:80]}", "steps/s")
                continue
            t.measure(rows, lambda tr=trainer, r=rows: self._train_rows(tr, r), "steps/s")
            if trainer.log is not None:
                trainer.log.close()
            del trainer
            self._free()

    def overrides(self, method: str) -> dict:
        s, m = self.size, self.size.models
        base = {"data.root": self.data_train, "data.dataset": "vqa2",
                "data.regions": self.regions, "data.val_fraction": s.val_fraction,
                "data.answer_min_count": 1, "run.batch_size": s.train_batch, "run.amp": True,
                "run.device": "auto", "run.eval_every": 0, "run.checkpoint_every": 0,
                "run.out_dir": self.runs / method}
        foundation = {"data.foundation_image": self.stores / "foundation_images.zarr",
                      "data.foundation_text": self.stores / "foundation_questions.zarr"}
        teacher = {**m.get("teacher", {}), "data.teacher_regions": self.regions}
        return {**base, **{
            "baseline": {**m.get("updn", {}), "method.name": "baseline"},
            "predictors": {**foundation, **m.get("pkd", {}), "method.name": "pkd-predictors"},
            "pkd": {**foundation, **m.get("updn", {}), **m.get("pkd", {}), "method.name": "pkd",
                    "method.pkd.predictors": self.runs / "predictors"},
            "teacher": {**teacher, "method.name": "teacher-adapt"},
            "distillvlm": {**teacher, **m.get("student", {}), "method.name": "distillvlm",
                           "method.distill.teacher_checkpoint": self.runs / "teacher" / "ckpt",
                           "data.teacher": self.stores / "teacher.zarr"},
        }[method]}

    def config(self, method: str):
        return load_config(None, [f"{k}={v}" for k, v in self.overrides(method).items()])

    def _trainer(self, method: str) -> Trainer:
        """The method's Trainer, after the runs it builds on (checkpoints of step 0 are enough
        to time steps: stage-1 predictors for PKD; adapted teacher + its store for DistillVLM)."""
        needs = {"pkd": "predictors", "distillvlm": "teacher"}.get(method)
        if needs and not (self.runs / needs / "ckpt" / "latest.json").is_file():
            before = Trainer(self.config(needs), resume=False)
            before.save()
            if before.log is not None:
                before.log.close()
            del before
        if method == "distillvlm" and not (self.stores / "teacher.zarr" / "zarr.json").is_file():
            extract_teacher(self.config(method), device=self.device)
        return Trainer(self.config(method), resume=False)

    def _train_rows(self, trainer: Trainer, labels: list[str]) -> None:
        s = self.size
        store_feed = trainer.train
        ram = Stores(**{f.name: _in_ram(getattr(store_feed.stores, f.name))
                        for f in dataclasses.fields(Stores)})
        ram_feed = VQABatches(store_feed.split, ram, store_feed.rows, store_feed.num_answers,
                              store_feed.foundation_tokens)
        positions = epoch_positions(trainer, s.steps)
        trainer.task.train()
        for p in positions[:2]:  # warm-up: kernels, allocator, AdamW state
            trainer.train_step(ram_feed[p])
        best: dict[str, tuple[float, float, float | str]] = {}
        for _ in range(s.repeat):
            for label, feed in zip(labels, (ram_feed, store_feed), strict=True):
                for f in dataclasses.fields(Stores):
                    store = getattr(store_feed.stores, f.name)
                    if store is not None and store._cache is not None:
                        store._cache.clear()  # each chunk decoded once per pass
                total, wait, busy = self._train_pass(trainer, feed, positions)
                if label not in best or total < best[label][0]:
                    best[label] = (total, wait, busy)
        ram_rate = len(positions) / best[labels[0]][0]
        for label in labels:
            total, wait, busy = best[label]
            rate = len(positions) / total
            self.table.add(label, **{"steps/s": rate, "seconds": total,
                                     "ratio": rate / ram_rate, "ratio is": "x RAM",
                                     "wait ms": 1000 * wait / len(positions),
                                     "GPU busy %": busy})

    def _train_pass(self, trainer: Trainer, feed, positions) -> tuple[float, float, float | str]:
        """(seconds, seconds waited for batches, GPU busy) of one pass as ``fit`` runs it."""
        sync(self.device)
        with Busy(self.util) as busy:
            start = time.perf_counter()
            stream = prefetch(feed.__getitem__, positions, depth=2)
            _, wait = drain(stream, trainer.train_step)
            sync(self.device)
            total = time.perf_counter() - start
        return total, wait, busy.percent

    # -- report
    def report(self) -> None:
        s, args = self.size, self.args
        gpu, cuda = "no GPU (CPU run)", ""
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
            cuda = f", CUDA {torch.version.cuda}"
        print(f"gpu bench --size {args.size}: CLIP {s.clip.vision_layers} layers x "
              f"{s.clip.vision_hidden} ({s.clip.image_size} px, patch {s.clip.patch_size}, "
              f"random weights), {s.images} JPEG {s.jpeg[0]}x{s.jpeg[1]} ({s.train_images} for "
              f"the as-is rows), batch {s.batch}, dtype {self.dtype}, decode threads "
              f"{self.threads}; training {s.train_images} images x {s.regions} x {s.region_dim} regions,"
              f" {s.questions_per_image} questions/image, batch {s.train_batch}, AMP, "
              f"{s.steps} steps per pass; best of {s.repeat}")
        print(f"device: {gpu}{cuda}, torch {torch.__version__}")
        print(machine())
        self.table.print()
        for line in [LEGEND, *self.notes, *self.targets()]:
            print(line)
        print("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.phase_s.items())
              + f"; total {time.monotonic() - self.table.start:.0f} s")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(
                {"size": args.size, "device": gpu, "rows": list(self.table.rows.values()),
                 "phases_s": self.phase_s}, indent=1, default=str))

    def targets(self) -> list[str]:
        rows = self.table.rows

        def num(label: str, col: str):
            v = rows.get(label, {}).get(col)
            return v if isinstance(v, float) else None

        def best(prefix: str, col: str, pick=max):
            got = [(v, k) for k in rows if k.startswith(prefix)
                   if (v := num(k, col)) is not None]
            return pick(got) if got else (None, "")

        def verdict(value, ok: bool) -> str:
            return "n/a" if value is None else ("met" if ok else "MISSED")

        out = ["targets:"]
        jpeg, where = best("extract: JPEG", "images/s")
        out.append(f"  JPEG end to end >= 3000 img/s: {_f(jpeg)} ({where}) "
                   f"{verdict(jpeg, (jpeg or 0) >= 3000)}")
        dec, where = best("extract: decoded", "images/s")
        out.append(f"  decoded tensors >= 10000 img/s: {_f(dec)} ({where}) "
                   f"{verdict(dec, (dec or 0) >= 10000)}")
        ratio, where = best("extract: decoded", "ratio", min)
        out.append(f"  extraction <= 1.1x bare forward (decoded tensors): {_f(ratio, 'x')} "
                   f"({where}) {verdict(ratio, (ratio or 9) <= 1.1)}")
        busy, where = best("extract:", "GPU busy %")
        out.append(f"  GPU busy >= 90% during extraction: {_f(busy, '%')} ({where}) "
                   f"{verdict(busy, (busy or 0) >= 90)}")
        for name in ("UpDn baseline", "PKD stage 2", "DistillVLM student (cached teacher)"):
            r = num(f"train {name}, store", "ratio")
            out.append(f"  training from the store >= 0.9x RAM, {name}: {_f(r, 'x')} "
                       f"{verdict(r, (r or 0) >= 0.9)}")
        return out


class _NotAvailable(Exception):
    """A row that cannot run on this machine (no CUDA, no torchvision)."""


def _f(v, unit: str = "") -> str:
    return "-" if v is None else (f"{v:.3g}{unit}" if abs(v) < 1000 else f"{v:.0f}{unit}")


def drain(stream, step: Callable[[dict], object]) -> tuple[int, float]:
    """Run ``step`` on every batch of ``stream``: (steps, seconds spent waiting for batches)."""
    steps, wait = 0, 0.0
    while True:
        t0 = time.perf_counter()
        batch = next(stream, None)
        wait += time.perf_counter() - t0
        if batch is None:
            return steps, wait
        step(batch)
        steps += 1


def _in_ram(store):
    """Every array of ``store`` read into RAM, read like :meth:`FeatureStore.read`."""
    if store is None:
        return None
    ram = RamRegions(store.read_range(0, store.n_items))
    ram.path, ram.spec = store.path, store.spec  # what error messages name
    return ram


def epoch_positions(trainer: Trainer, n: int) -> list:
    """``n`` chunk-shuffled batches of the trainer's sampler (epochs 0, 1, ... as needed)."""
    out, epoch = [], 0
    while len(out) < n:
        trainer.sampler.set_epoch(epoch)
        got = list(trainer.sampler)
        if not got:
            raise RuntimeError("the training split has fewer questions than one batch")
        out += got
        epoch += 1
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--dtype", choices=DTYPES, help="extraction dtype (default: bfloat16 on "
                    "cuda, float32 on the CPU)")
    ap.add_argument("--images", type=int, help="override the size's JPEG count")
    ap.add_argument("--steps", type=int, help="override the size's timed training steps")
    ap.add_argument("--budget", type=float, default=360.0,
                    help="seconds after which remaining rows are skipped (table still printed)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--strict", action="store_true", help="raise on the first failing row")
    ap.add_argument("--no-train", action="store_true", help="extraction rows only")
    args = ap.parse_args()
    size = SIZES[args.size]
    size = dataclasses.replace(size, images=args.images or size.images,
                               steps=args.steps or size.steps)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(auto_threads())  # what pkd extract / pkd train use (cores - 1)
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    work = args.out or Path(tempfile.mkdtemp(prefix="pkd_gpu_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    bench = Bench(args, size, device, dtype, work)
    try:
        bench.phase("prepare (model, JPEGs, data sets)", bench.prepare)
        bench.phase("extraction", bench.extraction)
        if not args.no_train:
            bench.phase("training", bench.training)
    finally:
        bench.report()
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
