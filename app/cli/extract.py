"""``pkd extract``: run the frozen foundation model / detectors once into Zarr stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.cli.report import print_extract_report
from pkd.errors import PkdError
from pkd.fsio import check_writable

app = typer.Typer(help="Extract features into Zarr stores (resumable, shardable, dask).",
                  no_args_is_help=True)

Data = Annotated[Path, typer.Option("--data", help="data set folder (`pkd data synth` output...)")]
Dataset = Annotated[str, typer.Option(help="synth | vqa2 | vqacp2")]
Splits = Annotated[str, typer.Option(help="comma-separated question splits")]
Images = Annotated[Path | None, typer.Option(help="image folder (default DATA/images)")]
Shard = Annotated[str | None, typer.Option("--shard", help="run one slice i/n of the shards")]
Workers = Annotated[int, typer.Option(help="dask LocalCluster worker processes (0 = in-process)")]
Scheduler = Annotated[str | None, typer.Option(help="address of a running dask scheduler")]
Overwrite = Annotated[bool, typer.Option(help="delete an existing store and start over")]
Strict = Annotated[bool, typer.Option(help="exit non-zero when any image failed")]
RetryFailed = Annotated[bool, typer.Option(
    help="re-run only the items recorded as failed (the rest of the store is kept)")]
PerShard = Annotated[int, typer.Option(help="items per shard (work unit)")]
Threads = Annotated[int, typer.Option(help="torch CPU threads per process (0 = auto)")]
Device = Annotated[str, typer.Option(help="torch device")]
BatchSize = Annotated[int, typer.Option(help="items per forward pass")]
Codec = Annotated[str, typer.Option(
    help="a new store's chunks: none (read as mmap views: fastest training reads) | lz4 "
         "(1.1-2x smaller regions)")]


def _part(shard: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` -> ``(i, n)``."""
    if not shard:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        i, n = 0, 0
    if not 0 <= i < n:
        raise PkdError(f"--shard {shard}: expected i/n with 0 <= i < n")
    return i, n


def _options(shard, workers, scheduler, overwrite, items_per_shard, threads, retry_failed=False,
             codec: str = "none"):
    from pkd.pipeline.runner import RunOptions  # zarr: loaded only when the command runs

    chunk = RunOptions.items_per_chunk
    if items_per_shard < 1 or (items_per_shard > chunk and items_per_shard % chunk):
        raise PkdError(f"--items-per-shard {items_per_shard}: must be 1..{chunk} or a multiple "
                       f"of {chunk} (the rows of a compressed chunk)")
    if shard and overwrite:  # slices run side by side: each would delete the others' work
        raise PkdError(f"--shard {shard} --overwrite: delete the store once, then run the slices")
    if retry_failed and overwrite:
        raise PkdError("--retry-failed --overwrite: --overwrite starts over (every item is run "
                       "again); give one of them")
    if workers < 0 or threads < 0:
        raise PkdError(f"--workers {workers} / --threads {threads}: must be >= 0")
    return RunOptions(part=_part(shard), workers=workers, scheduler=scheduler,
                      overwrite=overwrite, retry_failed=retry_failed,
                      items_per_shard=items_per_shard, threads=threads, codec=codec)


def _source(data, dataset, splits, images, captions=False):
    from pkd.pipeline.sources import SourceConfig  # PIL: loaded only when the command runs

    return SourceConfig(root=data, dataset=dataset, splits=tuple(s for s in splits.split(",") if s),
                        images=images, captions=captions)


def _finish(report, strict: bool) -> None:
    print_extract_report(report)
    if strict and report.failures:
        raise typer.Exit(1)


@app.command()
def foundation(
    data: Data,
    model: Annotated[str, typer.Option(help="HF id or local dir of a CLIP / BLIP-ITM model")],
    out: Annotated[Path, typer.Option(help="folder for foundation_<target>.zarr stores")],
    dataset: Dataset = "synth", splits: Splits = "train,val,test,test_iid", images: Images = None,
    captions: Annotated[bool, typer.Option(help="also encode DATA/captions.json")] = False,
    dtype: Annotated[str | None, typer.Option(
        help="float32 | float16 | bfloat16 (default: bfloat16 on CUDA, float32 on CPU)")] = None,
    max_text_len: Annotated[int, typer.Option(help="text tokens per item")] = 32,
    attn: Annotated[str | None, typer.Option(
        help="eager | sdpa (fused; features only) (default: sdpa on CUDA, eager on CPU)")] = None,
    decode: Annotated[str, typer.Option(
        help="JPEG decoding: draft (scaled down to the model's input) | full")] = "draft",
    decode_workers: Annotated[int, typer.Option(
        help="threads decoding + preprocessing images (0: cores - 1 on CUDA, 1 on CPU)")] = 0,
    device: Device = "cpu",
    batch_size: Annotated[int | None, typer.Option(
        help="items per forward pass (default: 256 on CUDA, 32 on CPU)")] = None,
    shard: Shard = None, workers: Workers = 0,
    scheduler: Scheduler = None, overwrite: Overwrite = False, strict: Strict = False,
    items_per_shard: PerShard = 512, threads: Threads = 0, retry_failed: RetryFailed = False,
    codec: Codec = "none",
) -> None:
    """Frozen foundation model features: images, questions (and captions)."""
    from pkd.pipeline.extract import (  # zarr: loaded only when the command runs
        FoundationRecipe,
        extract_foundation,
    )

    fast = device.startswith("cuda")  # the GPU's fast path; the CPU keeps exact float32
    recipe = FoundationRecipe(_source(data, dataset, splits, images, captions), model,
                              device=device, dtype=dtype or ("bfloat16" if fast else "float32"),
                              max_text_len=max_text_len,
                              batch_size=batch_size or (256 if fast else 32),
                              attn=attn or ("sdpa" if fast else "eager"), decode=decode,
                              decode_workers=decode_workers)
    targets = ("images", "questions", "captions") if captions else ("images", "questions")
    opts = _options(shard, workers, scheduler, overwrite, items_per_shard, threads, retry_failed,
                    codec)
    check_writable(out, "--out")  # read-only or full: refused before the model loads
    _finish(extract_foundation(recipe, out, opts, targets), strict)


@app.command()
def regions(
    data: Data,
    out: Annotated[Path, typer.Option(help="the regions store to write (NAME.zarr)")],
    detector: Annotated[str | None, typer.Option(
        help="given:PATH|hf:MODEL|detectron2:CFG|grid:K|whole")] = None,
    boxes_from: Annotated[str | None, typer.Option(help="reuse the boxes of this store")] = None,
    backbone: Annotated[str | None, typer.Option(help="HF backbone to pool box features")] = None,
    pooling: Annotated[str, typer.Option(
        help="backbone pooling per box: mean | grid:K (K x K cells, C*K*K dims)")] = "mean",
    dataset: Dataset = "synth", splits: Splits = "train,val,test,test_iid", images: Images = None,
    captions: Annotated[bool, typer.Option(help="also cover caption images")] = False,
    conf: Annotated[float | None, typer.Option(
        help="score threshold of a model detector (default 0.2)")] = None,
    iou: Annotated[float | None, typer.Option(
        help="NMS IoU threshold of a model detector (default 0.5)")] = None,
    min_boxes: Annotated[int | None, typer.Option(
        help="a model detector keeps at least this many boxes (default 10)")] = None,
    max_boxes: Annotated[int | None, typer.Option(
        help="at most this many boxes per image (default 100); grid:K gives exactly K*K")] = None,
    device: Device = "cpu", batch_size: BatchSize = 16, shard: Shard = None, workers: Workers = 0,
    scheduler: Scheduler = None, overwrite: Overwrite = False, strict: Strict = False,
    items_per_shard: PerShard = 512, threads: Threads = 0, retry_failed: RetryFailed = False,
    codec: Codec = "none",
) -> None:
    """Boxes and per-box features (a detector, or the boxes of another store)."""
    from pkd.pipeline.extract import (  # zarr: loaded only when the command runs
        RegionRecipe,
        extract_regions,
    )

    recipe = RegionRecipe(_source(data, dataset, splits, images, captions), detector, boxes_from,
                          backbone, pooling, conf, iou, min_boxes, max_boxes, device, batch_size)
    opts = _options(shard, workers, scheduler, overwrite, items_per_shard, threads, retry_failed,
                    codec)
    check_writable(out.parent, "--out's folder")
    _finish(extract_regions(recipe, out, opts), strict)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="extract")
