"""Read a feature store by rows or by ids, never loading a whole per-item array.

Reads are chunk-aware: the requested rows are sorted and deduplicated, grouped into runs of
consecutive chunks, each run is read as one slice (whole chunks are what Zarr decompresses
anyway) and all runs of all requested arrays are fetched concurrently. Measured on zarr 3.1.6
(``benchmarks/bench_store_layout.py``, 5k items, batch 256) this is ~7x faster than
``array.oindex[rows]`` for chunk-shuffled batches and as fast for fully random ones. Rows come
back in the requested order, duplicates included.

Random rows are still slow in any compressed layout (one chunk decoded per row): sample batches
with :class:`pkd.stores.ChunkShuffleSampler` so a batch touches few chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync  # zarr's own event loop (the sync API runs on it too)

from pkd.errors import PkdError, StoreMismatch
from pkd.stores.records import failures_of, n_shards, read_records, shard_range
from pkd.stores.schema import Failure, StoreSpec, canonical, read_attrs


def chunk_runs(rows: np.ndarray, items_per_chunk: int, n_items: int) -> list[tuple[int, int]]:
    """Row slices ``[start, stop)`` covering the chunks of sorted unique ``rows``; consecutive
    chunks are merged into one slice."""
    chunks = np.unique(rows // items_per_chunk)
    if chunks.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    firsts = chunks[np.r_[0, breaks]]
    lasts = chunks[np.r_[breaks - 1, len(chunks) - 1]]
    return [(int(a) * items_per_chunk, min((int(b) + 1) * items_per_chunk, n_items))
            for a, b in zip(firsts, lasts, strict=True)]


async def _read_runs(arrays: list[zarr.Array], runs: list[tuple[int, int]]) -> list[np.ndarray]:
    """Every run of every array, fetched concurrently; result is array-major."""
    jobs = [a.async_array.getitem(slice(start, stop)) for a in arrays for start, stop in runs]
    return list(await asyncio.gather(*jobs))


class FeatureStore:
    """A read-only view of one store; cheap to pickle (DataLoader workers reopen the arrays)."""

    def __init__(self, path: Path, spec: StoreSpec, attrs: dict):
        self.path = path
        self.spec = spec
        self.attrs = attrs  # the raw `pkd_store` attribute (pkd_version, created, n_items...)
        self.ids = np.asarray(zarr.open_array(path / "ids", mode="r")[:], dtype=np.int64)
        self.n_items = len(self.ids)
        records = read_records(path)
        self.pending = [k for k in range(n_shards(self.n_items, spec.items_per_shard)) if k not in records]
        self.complete = not self.pending
        self.failures: list[Failure] = failures_of(records)
        done = np.ones(self.n_items, dtype=bool)
        for k in self.pending:  # a crashed shard may hold written rows: they do not count
            r = shard_range(k, self.n_items, spec.items_per_shard)
            done[r.start:r.stop] = False
        self.ok = zarr.open_array(path / "ok", mode="r")[:].astype(bool) & done
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, path: str | Path, *, kind: str | None = None, expect: dict | None = None) -> FeatureStore:
        """Open the store at ``path``; refuse it (StoreMismatch) if it is not of ``kind`` or its
        provenance differs from ``expect = {"producer": {...}, "dims": {...}}`` (subsets)."""
        path = Path(path)
        attrs = read_attrs(path)
        spec = StoreSpec.from_attrs(attrs, path)
        if kind is not None and spec.kind != kind:
            raise StoreMismatch(f"{path}: a {spec.kind!r} store, expected a {kind!r} store")
        for part, want in (expect or {}).items():
            if part not in ("producer", "dims"):
                raise PkdError(f"{path}: expect may hold 'producer' and 'dims', not {part!r}")
            have = canonical(getattr(spec, part))
            for key, value in canonical(want).items():
                if have.get(key) != value:
                    raise StoreMismatch(f"{path}: {part}.{key} is {have.get(key)!r}, expected "
                                        f"{value!r} (store built by {describe(spec.producer)})")
        return cls(path, spec, attrs)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self.spec.array(name)  # PkdError for an unknown name
            self._arrays[name] = zarr.open_array(self.path / name, mode="r")
        return self._arrays[name]

    def rows_of(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Row (int64) of each id; PkdError naming the store and the first id it lacks."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids).clip(max=max(self.n_items - 1, 0))
        missing = self.ids[rows] != ids
        if missing.any():
            raise PkdError(f"{self.path}: no {self.spec.key} {ids[missing][0]} in this store "
                           f"({int(missing.sum())} of {len(ids)} requested ids missing)")
        return rows.astype(np.int64)

    def read(self, rows: Sequence[int] | np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{name: array [len(rows), *item_shape]}`` for ``rows`` in the given order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_items):
            bad = rows[(rows < 0) | (rows >= self.n_items)][0]
            raise PkdError(f"{self.path}: row {bad} out of range (store has {self.n_items} rows)")
        names = list(names or self.spec.names)
        arrays = [self._array(name) for name in names]
        unique, inverse = np.unique(rows, return_inverse=True)
        runs = chunk_runs(unique, self.spec.items_per_chunk, self.n_items)
        parts = sync(_read_runs(arrays, runs)) if runs else []
        # position of each unique row inside the concatenation of the runs
        starts = np.array([s for s, _ in runs], dtype=np.int64)
        lengths = np.array([e - s for s, e in runs], dtype=np.int64)
        run_of = np.searchsorted(starts, unique, side="right") - 1
        offset = (np.cumsum(lengths) - lengths)[run_of] + unique - starts[run_of]
        out = {}
        for i, (name, array) in enumerate(zip(names, arrays, strict=True)):
            mine = parts[i * len(runs):(i + 1) * len(runs)]
            flat = np.concatenate(mine) if mine else np.zeros((0, *array.shape[1:]), array.dtype)
            out[name] = flat[offset[inverse]]
        return out

    def read_range(self, start: int, stop: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{name: array [stop - start, *item_shape]}`` for the contiguous rows ``[start, stop)``."""
        if not 0 <= start <= stop <= self.n_items:
            raise PkdError(f"{self.path}: rows [{start}, {stop}) out of range (store has {self.n_items} rows)")
        return {name: self._array(name)[start:stop] for name in (names or self.spec.names)}


def describe(producer: dict) -> str:
    """``model X (config abc123)`` — how errors name who built a store."""
    model = producer.get("model", producer.get("model_id", "an unnamed producer"))
    conf = producer.get("config_hash")
    return f"{model}" + (f" (config {conf})" if conf else "")
