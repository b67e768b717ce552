"""Extraction overhead: ``pkd extract foundation`` (images) vs the bare model forward passes.

Model: a random CLIP the size of ViT-B/16 (``common.VIT_B16``: 224 px, patch 16, width 768, 12
layers, 12 heads) loaded the way the pipeline loads it (``load_foundation``: fp32, eager
attention). Data: ``--images`` synthetic PNGs of 224 px (``pkd.data.synth``, one split).

Measured in one run, with the same number of torch threads everywhere (``--threads``, default:
what ``pkd extract`` picks itself, ``auto_threads()`` = cores - 1):

* each phase alone, serially, on all images in batches of ``--batch``: decode (``load_images``:
  PNG -> RGB PIL), preprocess (the checkpoint's ``CLIPImageProcessorPil``), forward
  (``get_image_features`` under ``inference_mode`` on the already-preprocessed pixels: **the
  limit**), convert (f16 tokens / unit-norm f32 embeddings as numpy) and write (one
  ``StoreWriter`` shard write per 512 images, the default codec, Blosc lz4);
* ``extract_foundation(..., targets=("images",))`` in-process: its compute + write time
  (``RunReport.seconds``) and its wall time including setup (model load, image scan, store
  creation); the ratio to the forward time is the overhead (target <= 1.15x);
* the full command as a subprocess (``python -m pkd extract foundation``: Python start,
  imports, model load, images *and* questions) and the bare CLI start (``--help``);
* the forward pass with SDPA attention instead of eager (what the pipeline could gain).

Forward and in-process extraction are interleaved ``--repeat`` times and the fastest of each is
kept (the machine may be shared). Run:
``python benchmarks/bench_extract.py [--images 128 --threads 2 --cache /tmp/pkd-bench]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import VIT_B16, build_clip, machine, make_synth, print_table, timed

from pkd.pipeline.extract import FoundationRecipe, build_foundation_stage, extract_foundation
from pkd.pipeline.runner import RunOptions, auto_threads, new_session
from pkd.pipeline.sources import SourceConfig
from pkd.pipeline.stages import batches, load_images
from pkd.stores import StoreWriter


def phase_times(stage, batch: int, store: Path) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Seconds of each phase run alone over every image of ``stage``; the pixel batches."""
    model, ids = stage.model, stage.ids
    t = {}
    t["decode"], decoded = timed(lambda: [load_images(stage.source, ids, r)
                                          for r in batches(len(ids), batch)])
    t["preprocess"], pixels = timed(lambda: [
        model.image_processor(images=images, return_tensors="pt")["pixel_values"]
        for _, images, _ in decoded])  # each (B, 3, 224, 224)
    t["forward"], outs = timed(lambda: forward(model.model, pixels))
    t["convert"], arrays = timed(lambda: convert(outs))
    spec = dataclasses.replace(stage.spec(), items_per_shard=512, items_per_chunk=16)

    def write() -> None:
        with StoreWriter(store, spec, ids, overwrite=True) as writer:
            for k in writer.pending():
                r = writer.shard_rows(k)
                writer.write_shard(k, {n: a[r.start:r.stop] for n, a in arrays.items()})

    t["write"], _ = timed(write)
    return t, pixels


@torch.inference_mode()
def forward(clip, pixels: list[torch.Tensor]) -> list:
    """``get_image_features`` of every pixel batch: (tokens (B, P, d_v), embeds (B, d_e))."""
    outs = []
    for x in pixels:
        out = clip.get_image_features(pixel_values=x)
        outs.append((out.last_hidden_state, out.pooler_output))
    return outs


def convert(outs: list) -> dict[str, np.ndarray]:
    """What ``encode_images`` returns: f16 tokens, unit-norm f32 embeddings, all batches."""
    tokens = np.concatenate([t.float().numpy().astype(np.float16) for t, _ in outs])
    embeds = np.concatenate([F.normalize(e.float(), dim=-1).numpy() for _, e in outs])
    return {"vision_tokens": tokens, "image_embeds": embeds}


def in_process(recipe: FoundationRecipe, out: Path, threads: int) -> tuple[float, float, float]:
    """(wall, setup, compute + write) seconds of one in-process images-only extraction."""
    opts = RunOptions(threads=threads, overwrite=True)
    wall, report = timed(lambda: extract_foundation(recipe, out, opts, targets=("images",)))
    r = report.reports[0]
    return wall, r.setup_seconds, r.seconds


def cli_seconds(args: list[str]) -> float:
    """Wall seconds of ``python -m pkd ARGS`` (output discarded, failure raised)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pkd", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def sdpa_forward(model_dir: Path, pixels: list[torch.Tensor]) -> float:
    """Seconds of the same forward passes with SDPA attention (one warm-up batch first)."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32,
                                     attn_implementation="sdpa").eval()
    forward(clip, pixels[:1])
    return timed(lambda: forward(clip, pixels))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic 224 px images")
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = pkd's auto)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the fastest is kept")
    parser.add_argument("--cache", type=Path, help="keep model + data here between runs")
    parser.add_argument("--no-sdpa", action="store_true", help="skip the SDPA forward")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI subprocess")
    args = parser.parse_args()
    threads = args.threads or auto_threads()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        model_dir = build_clip(cache / "clip_vit_b16", VIT_B16)
        data = make_synth(cache / f"synth_{args.images}", args.images, VIT_B16.image_size)
        recipe = FoundationRecipe(SourceConfig(data, splits=("train",)), str(model_dir),
                                  batch_size=args.batch)
        torch.set_num_threads(threads)
        new_session()
        stage = build_foundation_stage(recipe)
        forward(stage.model.model, [torch.zeros(1, 3, 224, 224)])  # warm-up
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            phases, pixels = phase_times(stage, args.batch, Path(tmp) / "phases.zarr")
            wall, setup, run = in_process(recipe, Path(tmp) / "out", threads)
            torch.set_num_threads(threads)  # extract restores the caller's count; keep it fixed
            for key, value in {**phases, "wall": wall, "setup": setup, "run": run}.items():
                best[key] = min(best.get(key, value), value)
        if not args.no_cli:
            cli = ["extract", "foundation", "--data", str(data), "--model", str(model_dir),
                   "--out", str(Path(tmp) / "cli"), "--splits", "train", "--overwrite",
                   "--threads", str(threads), "--batch-size", str(args.batch)]
            best["cli"] = cli_seconds(cli)
            best["cli_help"] = cli_seconds(["extract", "foundation", "--help"])
        if not args.no_sdpa:
            best["sdpa"] = sdpa_forward(model_dir, pixels)
        n_questions = len(build_foundation_stage(
            dataclasses.replace(recipe, target="questions")).ids)
    report(best, args, threads, n_questions)


def report(t: dict[str, float], args, threads: int, n_questions: int) -> None:
    n, fwd = args.images, t["forward"]
    labels = {
        "decode": "decode (load_images, PNG -> RGB)",
        "preprocess": "preprocess (CLIPImageProcessorPil)",
        "forward": "forward, eager (the limit)",
        "convert": "convert (f16 tokens, normalize)",
        "write": "write (StoreWriter, default codec)",
        "serial": "sum of the phases (serial)",
        "run": "extract_foundation: compute + write",
        "wall": "extract_foundation: wall incl. setup",
        "setup": "  of which setup (load, scan, create)",
        "cli": f"CLI subprocess (images + {n_questions} questions)",
        "cli_help": "CLI start only (extract foundation --help)",
        "sdpa": "forward, sdpa attention (not used by pkd)",
    }
    t = {**t, "serial": sum(t[k] for k in ("decode", "preprocess", "forward", "convert", "write"))}
    rows = [{"what": label, "seconds": t[k], "images/s": n / t[k] if k != "cli_help" else "",
             "x forward": t[k] / fwd} for k, label in labels.items() if k in t]
    print(f"bench_extract: {n} images 224 px, CLIP ViT-B/16-sized (random weights), batch "
          f"{args.batch}, torch threads {threads}, best of {args.repeat} rounds")
    print(machine())
    print_table(rows, "what")
    print(f"overhead: extract (compute + write) / forward = {t['run'] / fwd:.3f}x "
          f"(target <= 1.15x); with setup {t['wall'] / fwd:.3f}x")


if __name__ == "__main__":
    main()
