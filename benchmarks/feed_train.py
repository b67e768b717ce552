"""Feed benchmark T1: the trainer's shuffled batch read from a store against a numpy memmap
gather of the same rows, for UpDn's regions and DistillVLM's cached teacher.

One epoch of :class:`pkd.stores.ChunkShuffleSampler` batches (the trainer's order: chunks
shuffled, items shuffled inside a window of ``window`` chunks) read with
``FeatureStore.read`` and the trainer's chunk cache (``data.chunk_cache_mib``), against
``memmap[rows]`` of the same arrays saved raw (``np.save``; page cache warm for both, one
thread each, no prefetch: the read path alone). Store variants: runs of consecutive chunks
fetched in one read (then split, a copy per chunk for the cache) or one read per chunk (both
the default lz4 codec, through Zarr), and an uncompressed store (``--codec none``) read as mmap
views of its shard files (:mod:`pkd.stores.raw_chunks`).

Both sides are also read into reused output buffers (``np.take(..., out=)`` for the memmap,
``FeatureStore.read(..., out=)`` for the store), as the GPU feed's ring of pinned slots does
(``train/host_buffers.py``): a fresh 20-40 MB array per batch costs page faults on both sides,
and how much depends on the allocator's state (glibc serves arrays above its mmap threshold
with fresh pages), so the reused-buffer ratio is the steadier one.

Figures per variant: GB/s delivered, ratio to the memmap gather (target >= 0.9), chunk decodes
per epoch (misses / chunks; target 1), bytes copied / delivered (target <= 1.2).

Shapes: regions 36 x 2048 float16 features + geometry (bottom-up's fixed 36); the teacher
``2 + 14 + 36 = 52`` tokens of 768 float16 hidden states and 12 x 52 x 52 float16 attention
(one layer), as ``train/teacher_cache.py`` lays them out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

PER_CHUNK, PER_SHARD = 16, 512  # the extraction defaults (RunOptions)


def region_like(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    from bench_loader import region_arrays

    return region_arrays(n, 36, 2048, seed)


def teacher_like(n: int, seed: int = 0, tokens: int = 52, hidden: int = 768,
                 heads: int = 12) -> dict[str, np.ndarray]:
    """Hidden states (layer-normed Gaussians) and softmax attention rows, float16."""
    rng = np.random.default_rng(seed)
    h = np.empty((n, tokens, hidden), np.float16)
    a = np.empty((n, heads, tokens, tokens), np.float16)
    for s in range(0, n, 128):
        m = min(128, n - s)
        h[s:s + m] = rng.standard_normal((m, tokens, hidden), dtype=np.float32)
        logits = 3 * rng.standard_normal((m, heads, tokens, tokens), dtype=np.float32)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        a[s:s + m] = e / e.sum(-1, keepdims=True)
    return {"teacher_hidden": h, "teacher_attentions": a,
            "num_tokens": np.full(n, tokens, np.int32)}


def write(path: Path, kind: str, arrays: dict[str, np.ndarray], compression: str = "lz4"):
    from pkd.stores import ArraySpec, FeatureStore, StoreSpec, StoreWriter

    n = len(next(iter(arrays.values())))
    key = "question_id" if kind == "teacher" else "image_id"
    spec = StoreSpec(kind, key, tuple(ArraySpec(k, v.shape[1:], str(v.dtype))
                                             for k, v in arrays.items()),
                     {"model": "synthetic"}, {}, PER_CHUNK, PER_SHARD)
    with StoreWriter(path, spec, np.arange(1, n + 1), compression=compression) as writer:
        for k in writer.pending():
            r = writer.shard_rows(k)
            writer.write_shard(k, {name: a[r.start:r.stop] for name, a in arrays.items()})
    return FeatureStore.open(path)


def epoch_batches(n: int, batch: int, window: int) -> list[np.ndarray]:
    from pkd.stores import ChunkShuffleSampler

    sampler = ChunkShuffleSampler(np.arange(n), batch, PER_CHUNK, window, shuffle=True, seed=0)
    return [np.asarray(b, dtype=np.int64) for b in sampler]


def store_epoch(path: Path, names: list[str], batches, cache_mib: int, coalesce: bool):
    from pkd.stores import FeatureStore

    store = FeatureStore.open(path, cache_bytes=cache_mib << 20)
    store.coalesce = coalesce
    for rows in batches:
        store.read(rows, names)
    return store


def memmap_epoch(maps: dict[str, np.ndarray], batches, bufs: dict | None = None) -> int:
    """Bytes of ``memmap[rows]`` for every batch (into ``bufs``, reused, when given)."""
    total = 0
    for rows in batches:
        if bufs is None:
            total += sum(m[rows].nbytes for m in maps.values())
        else:
            total += sum(np.take(m, rows, axis=0, out=bufs[k][:len(rows)], mode="clip").nbytes
                         for k, m in maps.items())
    return total


def buffers(maps: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """One reused output buffer per array (the GPU feed's ring slot; page faults paid once)."""
    return {k: np.ones((batch, *m.shape[1:]), m.dtype) for k, m in maps.items()}


def run_t1(images: int = 1024, batch: int = 256, window: int = 16, cache_mib: int = 256,
           repeat: int = 3, work: Path | None = None) -> tuple[list[dict], list[tuple]]:
    """T1 rows and ``(id, what, value, op, target)`` target tuples."""
    rows, targets = [], []
    with tempfile.TemporaryDirectory(prefix="pkd-feed-t1-", dir=work) as tmp:
        for kind, label, make in (("regions", "UpDn regions", region_like),
                                  ("teacher", "DistillVLM teacher", teacher_like)):
            arrays = make(images)
            names = list(arrays)
            path = Path(tmp) / f"{kind}.zarr"
            write(path, kind, arrays)
            write(Path(tmp) / f"{kind}-none.zarr", kind, arrays, "none")
            maps = {}
            for name, a in arrays.items():
                np.save(Path(tmp) / f"{kind}-{name}.npy", a)
                maps[name] = np.load(Path(tmp) / f"{kind}-{name}.npy", mmap_mode="r")
            del arrays
            batches = epoch_batches(images, batch, window)
            best, stores = measure(path, names, maps, batches, cache_mib, repeat, batch)
            delivered = memmap_epoch(maps, batches)
            rows.append({"what": f"{label}: memmap gather",
                         "GB/s": delivered / best["memmap"] / 1e9, "x memmap": 1.0,
                         "decodes/chunk": "", "copied/delivered": 1.0})
            for variant, what in (("runs", "store lz4, runs of chunks"),
                                  ("chunks", "store lz4, per chunk"),
                                  ("none", "store uncompressed (--codec none, mmap views)"),
                                  ("none, epoch 2", "  the same, a later epoch (crc32c checked)"),
                                  ("memmap, reused", "memmap gather into reused buffers"),
                                  ("none, reused", "store none, later epoch, reused buffers")):
                st = stores.get(variant)
                ref = best["memmap, reused" if "reused" in variant else "memmap"]
                rows.append({"what": f"{label}: {what}",
                             "GB/s": delivered / best[variant] / 1e9,
                             "x memmap": ref / best[variant],
                             "decodes/chunk": "" if st is None else
                             st.stats["decoded"] / _chunk_bytes(st, names),
                             "copied/delivered": 1.0 if st is None else
                             st.stats["copied"] / st.stats["delivered"]})
            chosen = min(("runs", "chunks", "none"), key=best.get)
            st = stores[chosen]
            targets += [("T1", f"{label} store / memmap ({chosen}, first epoch)",
                         best["memmap"] / best[chosen], ">=", 0.9),
                        ("T1", f"{label} store / memmap (none, a later epoch)",
                         best["memmap"] / best["none, epoch 2"], ">=", 0.9),
                        ("T1", f"{label} store / memmap, both into reused buffers (none, a "
                         "later epoch)", best["memmap, reused"] / best["none, reused"], ">=",
                         0.9),
                        ("T1", f"{label} chunk decodes per epoch ({chosen})",
                         st.stats["decoded"] / _chunk_bytes(st, names), "<=", 1.0),
                        ("T1", f"{label} bytes copied / delivered ({chosen})",
                         st.stats["copied"] / st.stats["delivered"], "<=", 1.2)]
    return rows, targets


def measure(path: Path, names: list[str], maps: dict, batches, cache_mib: int, repeat: int,
            batch: int) -> tuple[dict[str, float], dict]:
    """Fastest epoch of each variant over ``repeat`` interleaved rounds, and the last store
    opened per store variant (its counters). ``reused``: both sides read into the same reused
    buffers (as the GPU feed's ring of pinned slots does, ``train/host_buffers.py``)."""
    from common import timed

    best = {"memmap": np.inf, "runs": np.inf, "chunks": np.inf, "none": np.inf,
            "none, epoch 2": np.inf, "memmap, reused": np.inf, "none, reused": np.inf}
    bufs = buffers(maps, batch)
    stores = {}
    raw = path.with_name(path.name.replace(".zarr", "-none.zarr"))
    warm = store_epoch(raw, names, batches, cache_mib, False)  # its chunks' crc32c checked
    stores["none, epoch 2"] = warm
    for _ in range(repeat):
        best["none, epoch 2"] = min(best["none, epoch 2"],
                                    timed(lambda: [warm.read(r, names) for r in batches])[0])
        best["memmap"] = min(best["memmap"], timed(lambda: memmap_epoch(maps, batches))[0])
        best["memmap, reused"] = min(best["memmap, reused"],
                                     timed(lambda: memmap_epoch(maps, batches, bufs))[0])
        best["none, reused"] = min(best["none, reused"], timed(
            lambda: [warm.read(r, names, out=bufs) for r in batches])[0])
        for variant in ("runs", "chunks", "none"):
            seconds, stores[variant] = timed(lambda v=variant: store_epoch(
                raw if v == "none" else path, names, batches, cache_mib, v == "runs"))
            best[variant] = min(best[variant], seconds)
    return best, stores


def _chunk_bytes(store, names: list[str]) -> int:
    """Bytes of every chunk of ``names`` decoded once (the whole arrays)."""
    return sum(store.n_items * int(np.prod(store.spec.array(n).item_shape, dtype=np.int64))
               * np.dtype(store.spec.array(n).dtype).itemsize for n in names)
