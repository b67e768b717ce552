"""Feed benchmark E3: the store's codecs on real float16 activations, and the store write
against a raw sequential write of the same bytes to the same disk.

Activations: the last hidden state of a CLIP vision tower (``vision_tokens``, float16, as
``pkd extract foundation`` stores it) from a forward pass of pkd's own foundation stage over
``--images`` synthetic images (``pkd.data.synth``): ``--size full`` = a random CLIP of
ViT-B/16 size (197 x 768 per image, 300 KB), ``--size cpu`` = ``common.SMALL`` (197 x 256).
``--store PATH`` takes ``vision_tokens`` of an existing foundation store instead (a trained
model's activations; its first rows). The images are cycled to ``--rows`` rows (default:
``--mb`` 48 MB of them, 160 rows at ViT-B/16 size), in chunks of 16 rows and shards of 512 as
the pipeline writes them. ``--cache DIR`` keeps model, images and
the activations.

Codec table (one row per codec; every codec is followed by the crc32c the store always adds):
``ratio`` = uncompressed bytes / bytes of the array's files on disk; ``store write`` /
``store read`` = uncompressed GB/s of ``StoreWriter.write_shard`` (no fsync; on tmpfs when
``/dev/shm`` exists, so no writeback of earlier variants slows later ones) and
``FeatureStore.read_range`` of a store created with that codec (``pkd.stores.writer.codec``
patched: sharded arrays, chunks of 16, exactly what the store pays, zarr's thread pool
included); ``compress`` / ``decompress`` = the codec alone (numcodecs, one thread, per chunk
of 16 rows, no crc32c); ``ratio regions`` = the codec alone on bottom-up-style region
features (36 x 2048 ReLU'd Gaussians, float16, about half zeros: ``bench_loader``), since one
``codec()`` serves every store.

Disk table: a raw sequential write of the same uncompressed bytes (``open(..., "wb").write``,
then ``os.fsync``) against ``StoreWriter.write_shard`` + an fsync of every file it wrote, in
the same folder (``--tmp``); ``x raw`` = writer GB/s / raw GB/s (both uncompressed bytes / s).
Target: store write with the default codec >= 0.8x raw, to disk. The writer queues each chunk
for writeback as soon as it is written (``pkd.stores.writeback``), so its CPU work overlaps the
disk; one more raw row gets the same help (chunk-sized writes, each queued): the ratio to it is
what the writer's own work (crc32c, the finite check, one core) still costs.

Variants are interleaved ``--repeat`` times and the fastest round of each is kept (the machine
may be shared); codecs compressing over 5x slower than the old default (lz4hc 3) are measured
in one round (column ``rounds``). Run through ``feed.py --only E3``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import SMALL, VIT_B16, build_clip, make_synth, timed
from feed_codecs import (
    CHUNK,
    OLD_DEFAULT,
    SHARD,
    Codec,
    codec_alone,
    codec_label,
    codecs,
    region_chunks,
    store_codec,
)
from feed_result import Result, Table, Target


def activations(args) -> tuple[np.ndarray, str]:
    """(``vision_tokens`` (n, P, d) float16, where they come from)."""
    from pkd.stores import FeatureStore

    if args.store:
        store = FeatureStore.open(args.store)
        item = store.spec.array("vision_tokens").item_shape
        n = min(store.n_items, n_rows(args, int(np.prod(item)) * 2))
        tokens = store.read_range(0, n, ["vision_tokens"])["vision_tokens"]
        model = store.spec.producer.get("model", "?")
        return tokens, f"{n} rows of {args.store} (model {model})"
    import torch

    from pkd.pipeline.extract import FoundationRecipe, build_foundation_stage
    from pkd.pipeline.sources import SourceConfig

    size = VIT_B16 if args.size == "full" else SMALL
    name = "ViT-B/16-sized" if args.size == "full" else "small"
    saved = Path(args.cache or ".") / f"vision_tokens_{args.size}_{args.images}.npy"
    if args.cache and saved.is_file():  # the forward of an earlier run with --cache
        return np.load(saved), (f"{args.images} synthetic images through a random CLIP {name} "
                                f"({saved})")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        cache = Path(args.cache or tmp)
        model_dir = build_clip(cache / f"clip_{args.size}", size)
        data = make_synth(cache / f"synth_{args.images}", args.images, size.image_size)
        recipe = FoundationRecipe(SourceConfig(data, splits=("train",)), str(model_dir),
                                  batch_size=32, attn="sdpa")
        stage = build_foundation_stage(recipe)
        seconds, out = timed(lambda: stage.run(stage.ids)[0])
    tokens = out["vision_tokens"]
    if args.cache:
        np.save(saved, tokens)
    return tokens, (f"{len(tokens)} synthetic images through a random CLIP {name} "
                    f"(forward {seconds:.0f} s, torch threads {torch.get_num_threads()})")


def n_rows(args, item_bytes: int) -> int:
    """``--rows``, or (0) the multiple of 16 rows closest to ``--mb`` megabytes."""
    return args.rows or max(CHUNK, round(args.mb * 1e6 / item_bytes / CHUNK) * CHUNK)


def cycled(tokens: np.ndarray, rows: int) -> np.ndarray:
    """``rows`` rows cycling through ``tokens`` (each chunk of 16 holds distinct images)."""
    return np.ascontiguousarray(tokens[np.arange(rows) % len(tokens)])


def foundation_spec(data: np.ndarray):
    from pkd.stores import ArraySpec, StoreSpec

    _, tokens, dim = data.shape
    return StoreSpec("foundation_image", "image_id",
                     (ArraySpec("vision_tokens", (tokens, dim), "float16"),),
                     {"model": "feed E3"}, {"vision_tokens": tokens, "vision_dim": dim},
                     CHUNK, SHARD)


def files_under(path: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(path) for f in names]


def fsync_files(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def store_write(path: Path, data: np.ndarray, make: Callable[[], list], fsync: bool
                ) -> tuple[float, float]:
    """(seconds of ``write_shard`` for every shard, seconds including an fsync of each file
    written) into a fresh store at ``path`` with codecs ``make()``; creation is not timed."""
    from pkd.stores import StoreWriter

    shutil.rmtree(path, ignore_errors=True)
    with store_codec(make):
        writer = StoreWriter(path, foundation_spec(data), np.arange(len(data)))
    if fsync:
        fsync_files(files_under(path))  # creation's files: not part of the timed write
    start_ns = time.time_ns()
    start = time.perf_counter()
    for k in writer.pending():
        rows = writer.shard_rows(k)
        writer.write_shard(k, {"vision_tokens": data[rows.start:rows.stop]})
    written = time.perf_counter() - start
    if fsync:
        fsync_files([p for p in files_under(path) if p.stat().st_mtime_ns >= start_ns])
    return written, time.perf_counter() - start


def raw_write(path: Path, data: np.ndarray, writeback: bool = False) -> tuple[float, float]:
    """(seconds of one sequential write of ``data``'s bytes, seconds including the fsync).
    ``writeback``: written a chunk at a time, each queued for writeback at once, as the store
    writer does (``pkd.stores.writeback``): the raw write equally improved."""
    from pkd.stores.writeback import start_writeback

    path.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(path, "wb") as f:
        if writeback:
            step = CHUNK * data[0].nbytes
            flat = memoryview(data).cast("B")
            for offset in range(0, len(flat), step):
                f.write(flat[offset:offset + step])
                f.flush()
                start_writeback(f.fileno(), offset, min(step, len(flat) - offset))
        else:
            f.write(memoryview(data).cast("B"))
        f.flush()
        written = time.perf_counter() - start
        os.fsync(f.fileno())
    return written, time.perf_counter() - start


def scratch(args) -> str | None:
    """Folder of the codec table's stores: tmpfs when there is one (no writeback of earlier
    variants' pages slowing later ones down; the disk table uses ``--tmp``)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else args.tmp


class Best(dict):
    """Fastest seconds per (variant, what) over the rounds."""

    def keep(self, label: str, what: str, seconds: float) -> None:
        self[label, what] = min(self.get((label, what), seconds), seconds)

    def rate(self, gb: float, label: str, what: str) -> float:
        """GB/s of the fastest round (NaN when not measured)."""
        return gb / self[label, what] if (label, what) in self else float("nan")


def codec_round(folder: Path, data: np.ndarray, v: Codec, best: Best, ratio: dict) -> None:
    """One round of codec ``v``: store write + read (page cache) and the codec alone."""
    from pkd.stores import FeatureStore

    path = folder / "codec.zarr"
    best.keep(v.label, "write", store_write(path, data, v.zarr, fsync=False)[0])
    stored = sum(p.stat().st_size for p in files_under(path / "vision_tokens" / "c"))
    ratio[v.label] = data.nbytes / stored
    store = FeatureStore.open(path)
    seconds, got = timed(lambda: store.read_range(0, len(data), ["vision_tokens"]))
    assert np.array_equal(got["vision_tokens"], data), v.label
    best.keep(v.label, "read", seconds)
    shutil.rmtree(path)
    if v.raw:
        chunks = [data[s:s + CHUNK] for s in range(0, len(data), CHUNK)]
        t_enc, t_dec, _ = codec_alone(v.raw(data.itemsize), chunks)
        best.keep(v.label, "compress", t_enc)
        best.keep(v.label, "decompress", t_dec)


def disk_round(folder: Path, data: np.ndarray, writes: dict, best: Best, r: int) -> None:
    """Round ``r`` of the raw write and of each store write in ``writes``, to disk (the order
    rotates with ``r``; each file is deleted before the next write starts)."""
    labels = list(writes)
    for label in labels[r % len(labels):] + labels[:r % len(labels)]:
        if label == "raw, writeback":
            written, total = raw_write(folder / "raw.bin", data, writeback=True)
        elif writes[label] is None:
            written, total = raw_write(folder / "raw.bin", data)
        else:
            written, total = store_write(folder / "disk.zarr", data, writes[label], fsync=True)
        best.keep(label, "disk page", written)
        best.keep(label, "disk fsync", total)
        shutil.rmtree(folder / "disk.zarr", ignore_errors=True)
        (folder / "raw.bin").unlink(missing_ok=True)


SLOW = 5.0  # codecs compressing (alone) this much slower than the old default in the first
# round are measured in that round only (lz4hc 3: ~0.03 GB/s, seconds per round)


def e3(args) -> Result:
    """The codec table and the disk table (module docstring)."""
    from pkd.stores.writer import codec as default_codec

    tokens, source = activations(args)
    data = cycled(tokens, n_rows(args, tokens[0].nbytes))
    gb = data.nbytes / 1e9
    default = codec_label(default_codec())
    variants = codecs()
    if default not in {v.label for v in variants}:
        variants.append(Codec(default, default_codec, None))
    by_label = {v.label: v for v in variants}
    writes = {"raw": None, "raw, writeback": None, default: default_codec,
              OLD_DEFAULT: by_label[OLD_DEFAULT].zarr, "none": by_label["none"].zarr}
    regions = region_chunks()
    ratio_regions = {v.label: sum(c.nbytes for c in regions)  # deterministic: measured once
                     / codec_alone(v.raw(2), regions)[2] if v.raw else 1.0 for v in variants}
    best, ratio, rounds = Best(), {}, dict.fromkeys(by_label, 0)
    with (tempfile.TemporaryDirectory(dir=scratch(args)) as fast,
          tempfile.TemporaryDirectory(dir=args.tmp) as tmp):
        for r in range(args.repeat):
            for v in variants:
                if r and best.get((v.label, "compress"), 0) > SLOW * best[OLD_DEFAULT,
                                                                           "compress"]:
                    continue
                codec_round(Path(fast), data, v, best, ratio)
                rounds[v.label] += 1
            disk_round(Path(tmp), data, writes, best, r)

    rows = []
    for v in variants:
        mark = {default: " (default)", OLD_DEFAULT: " (old default)"}.get(v.label, "")
        rows.append({"codec (+ crc32c)": v.label + mark, "ratio": ratio[v.label],
                     "store write GB/s": best.rate(gb, v.label, "write"),
                     "store read GB/s": best.rate(gb, v.label, "read"),
                     "compress GB/s": best.rate(gb, v.label, "compress"),
                     "decompress GB/s": best.rate(gb, v.label, "decompress"),
                     "ratio regions": ratio_regions[v.label], "rounds": rounds[v.label]})
    raw_fsync, raw_page = best.rate(gb, "raw", "disk fsync"), best.rate(gb, "raw", "disk page")
    names = {"raw": "raw write (open/write/fsync)",
             "raw, writeback": "raw write, writeback per chunk (as the store)",
             "none": "StoreWriter, none (crc32c only)",
             OLD_DEFAULT: f"StoreWriter, {OLD_DEFAULT} (old default)",
             default: f"StoreWriter, {default} (default)"}
    disk = [{"write": names[label], "GB/s to disk": best.rate(gb, label, "disk fsync"),
             "x raw": best.rate(gb, label, "disk fsync") / raw_fsync,
             "GB/s page cache": best.rate(gb, label, "disk page"),
             "x raw page cache": best.rate(gb, label, "disk page") / raw_page}
            for label in writes]
    P, d = data.shape[1:]
    header = (f"feed E3: {len(data)} rows of float16 vision tokens {P}x{d} "
              f"({data[0].nbytes / 1e3:.0f} KB each, {data.nbytes / 1e6:.0f} MB) cycled from "
              f"{source}; chunks of {CHUNK}, shards of {SHARD}; best of {args.repeat} rounds; "
              f"codec table in {scratch(args) or tempfile.gettempdir()}, disk table in "
              f"{args.tmp or tempfile.gettempdir()}; usable CPUs {len(os.sched_getaffinity(0))}")
    need = (f"need: extraction ~7,500 img/s x 300 KB = 2.3 GB/s written, training reads ~1-1.3 "
            f"GB/s; default {default}: store write {best.rate(gb, default, 'write'):.2f} GB/s, "
            f"read {best.rate(gb, default, 'read'):.2f} GB/s, ratio {ratio[default]:.3f} "
            f"(old default: {best.rate(gb, OLD_DEFAULT, 'write'):.2f} / "
            f"{best.rate(gb, OLD_DEFAULT, 'read'):.2f} GB/s, ratio {ratio[OLD_DEFAULT]:.3f})")
    return Result(header, [
        Table("codecs (GB/s = uncompressed bytes / s; store = through StoreWriter / FeatureStore, "
              "page cache; compress / decompress = the codec alone, one thread)",
              rows, "codec (+ crc32c)"),
        Table("store write vs raw write, same bytes, same folder", disk, "write"),
    ], [Target("E3", "store write / raw write, default codec, to disk",
               best.rate(gb, default, "disk fsync") / raw_fsync, ">=", 0.8)],
        [need, "the store queues each chunk for writeback as it writes it (pkd.stores.writeback):"
         " its checksums and finite check overlap the disk; the row 'raw write, writeback per "
         "chunk' is the raw write given the same help"])

