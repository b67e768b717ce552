"""Loader: training steps fed from a regions store vs from RAM, batch reads, bytes per image.

Synthetic bottom-up-style features: ``--images`` images x ``--regions`` regions (36) x ``--dim``
(2048), ReLU'd Gaussians (about half zeros) stored as float16, written with
:class:`pkd.stores.StoreWriter` in the pipeline's layout (chunks of 16 images, shards of 512,
the store default codec, Blosc lz4 since issue 32), plus ``--questions-per-image`` questions
per image (random words and answers, 3129 answer classes like bottom-up's vocabulary). Files
are in the page cache (warm reads).

(a) Training-step throughput of the UpDn baseline (``model.hidden_size`` 512, AdamW, gradient
    clipping as in ``pkd train``) on the same chunk-shuffled batches
    (:class:`pkd.stores.ChunkShuffleSampler`, ``--batch`` questions) assembled by
    :class:`pkd.train.data.VQABatches` from the store (without and with the decoded-chunk cache
    ``pkd train`` opens stores with, emptied before each pass so each pass decodes every chunk
    once, as an epoch over data larger than the cache does), or by the same ``VQABatches`` code
    from the same float16 arrays held in RAM (numpy fancy indexing). Target: store >= 0.9x of RAM.
    Each feed runs twice: batches assembled in the training thread, and assembled two steps
    ahead in a background thread (``pkd.prefetch``, what ``pkd train``'s ``fit`` does).
(b) Batch reads of ``--read-batch`` images of ``region_features``: fully random and
    chunk-shuffled rows from the store (``FeatureStore.read``), from a numpy memmap of the
    same padded float16 array (the limit: no decompression), and from an HDF5 file in the layout
    the bottom-up converters write (``image_features`` [N, 36, 2048] float32 created without
    ``chunks=``: contiguous, uncompressed), read with sorted fancy indexing (one call per batch)
    and one row per call (what the UpDn / BAN loaders' ``__getitem__`` does). A second HDF5 file
    chunked per image (one chunk = one image, uncompressed) is read with fancy indexing too, as
    the layout a user re-chunking for random access would pick.
(c) Bytes on disk per image of each layout vs raw float32.

Torch runs ``--threads`` threads (default: cores - 1, the rule of ``pkd extract`` and
``pkd train``: one thread per core collapses as soon as anything else runs on the machine,
measured 0.4 s -> 3.3 s per UpDn forward on 2 busy cores). Variants are interleaved
``--repeat`` times and the fastest round is kept (the machine may be shared). ``--window-chunks``
sets the sampler window of (a) (pkd train uses 16). Run:
``python benchmarks/bench_loader.py [--images 5000 --steps 20 --window-chunks 4]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from common import machine, print_table, timed

from pkd.pipeline.runner import auto_threads
from pkd.prefetch import prefetch
from pkd.stores import ArraySpec, ChunkShuffleSampler, FeatureStore, StoreSpec, StoreWriter
from pkd.train.config import DataConfig, ModelConfig
from pkd.train.data import SplitData, Stores, VQABatches, attach
from pkd.train.models import build_model
from pkd.train.tasks import BaselineTask

PER_CHUNK, PER_SHARD = 16, 512  # the pipeline's defaults (RunOptions)
NUM_ANSWERS, NUM_WORDS, QUESTION_LEN = 3129, 1000, 14
ID_BASE = 1_000_000


def region_arrays(n: int, regions: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every array of a regions store for ``n`` images, all ``regions`` boxes valid."""
    rng = np.random.default_rng(seed)
    feats = np.empty((n, regions, dim), dtype=np.float16)  # (n, N, d)
    for s in range(0, n, 256):  # in slices: no (n, N, d) float32 temporary
        block = rng.standard_normal((min(256, n - s), regions, dim), dtype=np.float32)
        feats[s:s + 256] = np.maximum(block, 0)
    xy = rng.uniform(0, 400, (n, regions, 2)).astype(np.float32)
    wh = rng.uniform(10, 200, (n, regions, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], -1)  # (n, N, 4)
    size = np.array([640, 480], np.float32)
    geometry = np.concatenate([boxes / np.tile(size, 2), wh / size], -1)  # (n, N, 6)
    return {"boxes": boxes, "region_features": feats, "region_geometry": geometry,
            "num_regions": np.full(n, regions, np.int32),
            "image_size": np.tile(np.array([640, 480], np.int32), (n, 1))}


def write_store(path: Path, arrays: dict[str, np.ndarray], compression: str = "none"
                ) -> FeatureStore:
    n, regions, dim = arrays["region_features"].shape
    spec = StoreSpec("regions", "image_id", (
        ArraySpec("boxes", (regions, 4), "float32"),
        ArraySpec("region_features", (regions, dim), "float16"),
        ArraySpec("region_geometry", (regions, 6), "float32"),
        ArraySpec("num_regions", (), "int32"),
        ArraySpec("image_size", (2,), "int32"),
    ), {"model": "synthetic"}, {"feature_dim": dim, "max_regions": regions}, PER_CHUNK, PER_SHARD)
    with StoreWriter(path, spec, ID_BASE + np.arange(n), compression=compression) as writer:
        for k in writer.pending():
            r = writer.shard_rows(k)
            writer.write_shard(k, {name: a[r.start:r.stop] for name, a in arrays.items()})
    return FeatureStore.open(path, kind="regions")


def synthetic_split(n_images: int, per_image: int, seed: int = 0) -> SplitData:
    """``per_image`` questions per image, ordered by (image_id, question_id) as in training."""
    rng = np.random.default_rng(seed)
    q = n_images * per_image
    image_ids = np.repeat(ID_BASE + np.arange(n_images), per_image).astype(np.int64)
    lengths = rng.integers(4, QUESTION_LEN + 1, q)
    tokens = rng.integers(1, NUM_WORDS, (q, QUESTION_LEN))
    tokens[np.arange(QUESTION_LEN)[None] >= lengths[:, None]] = 0  # right padding
    answer_index = np.full((q, 10), -1, np.int64)
    answer_index[:, :3] = rng.integers(0, NUM_ANSWERS, (q, 3))
    answer_score = np.where(answer_index >= 0, rng.choice([0.3, 0.6, 1.0], (q, 10)), 0)
    return SplitData("train", image_ids * 10 + np.tile(np.arange(per_image), n_images), image_ids,
                     tokens.astype(np.int64), answer_index, answer_score.astype(np.float32),
                     ["other"] * q, ["what"] * q)


class RamRegions:
    """The regions store's arrays held in RAM, read like :meth:`FeatureStore.read`."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def read(self, rows: np.ndarray, names: list[str], out: dict | None = None,
             crop: dict | None = None) -> dict[str, np.ndarray]:
        """As the store: rows cut to ``crop`` (then copied once), into ``out`` when given."""
        got = {}
        for name in names:
            a = self.arrays[name][(slice(None), *(crop or {}).get(name, ()))]
            if out is not None and name in out:
                got[name] = np.take(a, rows, axis=0, out=out[name][:len(rows)], mode="clip")
            else:
                got[name] = a[rows]
        return got


def timed_steps(feed, batches: list, step, ahead: bool) -> tuple[float, float]:
    """(seconds waiting for batches, total seconds) of one pass; ``ahead``: batches are
    assembled two ahead in a background thread (:func:`pkd.prefetch.prefetch`, as ``fit``)."""
    load = total = 0.0
    source = prefetch(feed.__getitem__, batches, depth=2) if ahead else None
    for positions in batches:
        t_load, batch = timed(lambda p=positions: next(source) if ahead else feed[p])
        t_step, _ = timed(lambda batch=batch: step(batch))
        load, total = load + t_load, total + t_load + t_step
    return load, total


def train_throughput(args, store: FeatureStore, arrays: dict[str, np.ndarray]) -> list[dict]:
    """(a): seconds per step of batch assembly and of the whole step, store vs RAM."""
    split = synthetic_split(store.n_items, args.questions_per_image)
    split, rows = attach(split, Stores(regions=store))
    ram = VQABatches(split, Stores(regions=RamRegions(arrays)), rows, NUM_ANSWERS)
    on_disk = VQABatches(split, Stores(regions=store), rows, NUM_ANSWERS)
    cached_store = FeatureStore.open(store.path, kind="regions",
                                     cache_bytes=DataConfig().chunk_cache_mib << 20)
    cached = VQABatches(split, Stores(regions=cached_store), rows, NUM_ANSWERS)
    feeds = {"RAM (numpy arrays)": (ram, False), "store, no chunk cache": (on_disk, False),
             "store + chunk cache": (cached, False), "RAM, prefetched": (ram, True),
             "store, no cache, prefetched": (on_disk, True),
             "store + cache, prefetched (pkd train)": (cached, True)}
    sampler = ChunkShuffleSampler(rows["regions"], args.batch, PER_CHUNK,
                                  window_chunks=args.window_chunks, drop_last=True)
    batches = list(sampler)[:args.steps]
    torch.manual_seed(0)
    task = BaselineTask(build_model(ModelConfig(arch="updn"), NUM_WORDS, NUM_ANSWERS,
                                    arrays["region_features"].shape[-1]))
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        loss = task(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 0.25)
        opt.step()

    step(ram[batches[0]])  # warm-up (allocator, AdamW state)
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for name, (feed, ahead) in feeds.items():
            if feed is cached:  # every pass decodes each chunk once, like an epoch over data
                cached_store._cache.clear()  # larger than the cache (nothing left from before)
            load, total = timed_steps(feed, batches, step, ahead)
            for key, value in (("load", load), ("total", total)):
                best[name, key] = min(best.get((name, key), value), value)
    base = best["RAM (numpy arrays)", "total"]
    return [{"feed": name, "batch ms": 1000 * best[name, "load"] / len(batches),
             "step ms": 1000 * best[name, "total"] / len(batches),
             "steps/s": len(batches) / best[name, "total"],
             "questions/s": args.batch * len(batches) / best[name, "total"],
             "x RAM": base / best[name, "total"]} for name in feeds]


def read_throughput(args, store: FeatureStore, root: Path, feats: np.ndarray) -> list[dict]:
    """(b): ms per batch of ``region_features`` rows, random and chunk-shuffled, per layout."""
    n = len(feats)
    np.save(root / "features.npy", feats)
    mm = np.load(root / "features.npy", mmap_mode="r")
    for name, chunks in (("bottom_up.h5", None), ("per_image.h5", (1, *feats.shape[1:]))):
        with h5py.File(root / name, "w") as f:  # chunks=None: contiguous, as the converters
            ds = f.create_dataset("image_features", shape=feats.shape, dtype="float32",
                                  chunks=chunks)
            for s in range(0, n, 256):
                ds[s:s + 256] = feats[s:s + 256].astype(np.float32)
    h5 = h5py.File(root / "bottom_up.h5", "r")["image_features"]
    h5_chunked = h5py.File(root / "per_image.h5", "r")["image_features"]
    assert h5.chunks is None and h5_chunked.chunks is not None
    rng = np.random.default_rng(1)
    sampler = ChunkShuffleSampler(np.arange(n), args.read_batch, PER_CHUNK, drop_last=True)
    patterns = {"random": [rng.choice(n, args.read_batch, replace=False)
                           for _ in range(args.read_batches)],
                "chunk-shuffled": [np.array(b) for b in list(sampler)[:args.read_batches]]}
    readers = {"memmap f16 (limit)": lambda r: mm[np.sort(r)],
               "store (FeatureStore.read)": lambda r: store.read(r, ["region_features"]),
               "HDF5 f32 contiguous (bottom-up), fancy": lambda r: h5[np.sort(r)],
               "HDF5 f32 contiguous, row per call": lambda r: np.stack([h5[i] for i in r]),
               "HDF5 f32 chunk per image, fancy": lambda r: h5_chunked[np.sort(r)]}
    r = patterns["random"][0]  # every layout holds the same numbers
    assert (store.read(r, ["region_features"])["region_features"] == feats[r]).all()
    assert (readers["HDF5 f32 contiguous, row per call"](r) == feats[r]).all()
    for name in ("memmap f16 (limit)", "HDF5 f32 contiguous (bottom-up), fancy",
                 "HDF5 f32 chunk per image, fancy"):
        assert (readers[name](r) == feats[np.sort(r)]).all(), name
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for name, read in readers.items():
            for kind, rows in patterns.items():
                t, _ = timed(lambda read=read, rows=rows: [read(r) for r in rows])
                best[name, kind] = min(best.get((name, kind), t), t)
    out = []
    for name in readers:
        row = {"layout": name}
        for kind, rows in patterns.items():
            sec = best[name, kind] / len(rows)
            row[f"{kind} ms"] = 1000 * sec
            row[f"{kind} img/s"] = args.read_batch / sec
            row[f"{kind} x memmap"] = best["memmap f16 (limit)", kind] / best[name, kind]
        out.append(row)
    return out


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


def sizes(root: Path, store: Path, n: int, item_shape: tuple[int, int]) -> list[dict]:
    """(c): bytes per image on disk vs raw float32 of one image's features."""
    raw = 4 * item_shape[0] * item_shape[1]
    layouts = {"store, region_features only": disk_bytes(store / "region_features"),
               "store, all arrays": disk_bytes(store),
               "memmap f16 (.npy)": disk_bytes(root / "features.npy"),
               "HDF5 f32 contiguous (bottom-up)": disk_bytes(root / "bottom_up.h5"),
               "HDF5 f32 chunk per image": disk_bytes(root / "per_image.h5")}
    return [{"layout": name, "KB/image": b / n / 1024, "x raw f32": b / n / raw}
            for name, b in layouts.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--questions-per-image", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="questions per training step")
    parser.add_argument("--window-chunks", type=int, default=16,
                        help="sampler window for (a) (16 = what pkd train uses)")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per feed")
    parser.add_argument("--read-batch", type=int, default=256, help="images per read batch")
    parser.add_argument("--read-batches", type=int, default=4, help="batches per read pattern")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the fastest is kept")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = cores - 1, as pkd extract picks)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or auto_threads())
    arrays = region_arrays(args.images, args.regions, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t_write, store = timed(lambda: write_store(root / "regions.zarr", arrays))
        train = train_throughput(args, store, arrays)
        reads = read_throughput(args, store, root, arrays["region_features"])
        size = sizes(root, root / "regions.zarr", args.images, (args.regions, args.dim))
    print(f"bench_loader: {args.images} images x {args.regions} regions x {args.dim} "
          f"(float16 in the store), {args.questions_per_image} questions/image; store written "
          f"at {args.images / t_write:.0f} images/s; torch threads {torch.get_num_threads()}; "
          f"best of {args.repeat} rounds")
    print(machine())
    print(f"\n(a) UpDn training steps, batch {args.batch} questions, {args.steps} chunk-shuffled "
          f"steps per feed, window {args.window_chunks} chunks (batch ms = assembling the batch; "
          "step ms = batch + train step)")
    print_table(train, "feed")
    print("prefetched: batches assembled 2 ahead in a thread (pkd.prefetch, as pkd train "
          "does); batch ms = time the step waited for its batch; x RAM: vs the first row")
    print(f"\n(b) reads of region_features, {args.read_batch} images per batch, "
          f"{args.read_batches} batches per pattern")
    print_table(reads, "layout")
    print("\n(c) bytes on disk per image")
    print_table(size, "layout")


if __name__ == "__main__":
    main()
