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

The parts: ``gpu_sizes`` (``--size``), ``gpu_inputs`` (JPEG and VQA v2 files), ``gpu_readers``
(the image readers and the bare forward), ``gpu_table`` (table, GPU utilisation),
``gpu_extract_rows`` and ``gpu_train_rows`` (the two halves of :class:`Bench`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_loader import ID_BASE
from common import build_clip, machine
from gpu_extract_rows import DTYPES, ExtractionRows
from gpu_inputs import jpeg_contents, write_images, write_vqa2
from gpu_sizes import SIZES, Size
from gpu_table import Table, utilization_reader
from gpu_train_rows import TrainingRows

from pkd.pipeline.extract import FoundationRecipe
from pkd.pipeline.runner import auto_threads, usable_cores
from pkd.pipeline.sources import SourceConfig

LEGEND = ("ratio: what 'ratio is' says (x forward: seconds per image / the bare forward's at that "
          "dtype and attention); wait ms: mean time a training step waited for its batch; GPU "
          "busy %: mean NVML utilisation sampled every 50 ms during the row")


class Bench(ExtractionRows, TrainingRows):
    """One benchmark run: the prepared files, the table, and the rows of both halves
    (:class:`gpu_extract_rows.ExtractionRows`, :class:`gpu_train_rows.TrainingRows`)."""

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

    def _recipe(self, root: Path) -> FoundationRecipe:
        return FoundationRecipe(self.source(root), str(self.clip_dir), device=self.device,
                                dtype=self.dtype, batch_size=self.size.batch)

    def _free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

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
              f"{self.threads}; training {s.train_images} images x {s.regions} x "
              f"{s.region_dim} regions, {s.questions_per_image} questions/image, batch "
              f"{s.train_batch}, AMP, "
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


def _f(v, unit: str = "") -> str:
    return "-" if v is None else (f"{v:.3g}{unit}" if abs(v) < 1000 else f"{v:.0f}{unit}")


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
