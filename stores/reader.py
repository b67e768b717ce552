"""Read a feature store by rows or by ids, never loading a whole per-item array.

Reads are chunk-aware: the requested rows are sorted and deduplicated, grouped into runs of
consecutive chunks, each run is read as one slice (whole chunks are what Zarr decompresses
anyway) and all runs of all requested arrays are fetched concurrently. Measured on zarr 3.1.6
(``benchmarks/bench_store_layout.py``, 5k items, batch 256) this is ~7x faster than
``array.oindex[rows]`` for chunk-shuffled batches and as fast for fully random ones. Rows come
back in the requested order, duplicates included.

Random rows are still slow in any compressed layout (one chunk decoded per row): sample batches
with :class:`pkd.stores.ChunkShuffleSampler` so a batch touches few chunks, and open the store with
``cache_bytes`` so the chunks a window of batches shares are decoded once
(:class:`pkd.stores.chunk_cache.ChunkCache`).

Integrity: chunks carry a crc32c (:func:`pkd.stores.writer.codec`); a chunk whose bytes changed
on disk raises :class:`~pkd.errors.PkdError` naming the store, the array, the chunk and its rows,
and nothing of it reaches the cache. Stores written before the checksum (``checksums`` says which
arrays lack it) are read as before: there a damaged chunk is caught only when the compressor
cannot decode it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync  # zarr's own event loop (the sync API runs on it too)

from pkd.errors import PkdError, StoreMismatch
from pkd.stores.chunk_cache import ChunkCache
from pkd.stores.raw_chunks import RawChunks
from pkd.stores.records import failures_of, inputs_sha256, n_shards, read_records, shard_range
from pkd.stores.schema import Failure, StoreSpec, canonical, done_path, read_attrs

ROW_LOOP_BYTES = 4096  # rows at least this large are gathered as row views (no temporary)
DAMAGED = (ValueError, RuntimeError)  # zarr: "checksum do not match"; blosc: undecodable bytes


def has_checksums(array_dir: Path) -> bool:
    """Whether each chunk of the Zarr array at ``array_dir`` carries a crc32c (from its
    zarr.json: the codecs of a sharded array's inner chunks, else the array's own)."""
    try:
        codecs = json.loads((array_dir / "zarr.json").read_text()).get("codecs", [])
    except (OSError, json.JSONDecodeError) as err:
        raise PkdError(f"{array_dir}: unreadable zarr.json ({err})") from None
    for c in codecs:
        if c.get("name") == "sharding_indexed":
            codecs = c.get("configuration", {}).get("codecs", [])
    return any(c.get("name") == "crc32c" for c in codecs)


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


async def _read_runs(jobs: list[tuple[zarr.Array, tuple[int, int]]]
                     ) -> list[np.ndarray | BaseException]:
    """``array[start:stop]`` of every job, fetched concurrently, in the given order (a job that
    raised gives its exception)."""
    reads = [a.async_array.getitem(slice(start, stop)) for a, (start, stop) in jobs]
    return list(await asyncio.gather(*reads, return_exceptions=True))


class FeatureStore:
    """A read-only view of one store; cheap to pickle (DataLoader workers reopen the arrays)."""

    def __init__(self, path: Path, spec: StoreSpec, attrs: dict, cache_bytes: int = 0):
        self.path = path
        self.spec = spec
        self.attrs = attrs  # the raw `pkd_store` attribute (pkd_version, created, n_items...)
        self.ids = np.asarray(self._checked_read("ids", zarr.open_array(path / "ids", mode="r")),
                              dtype=np.int64)
        self.n_items = len(self.ids)
        records = read_records(path)
        self.pending = [k for k in range(n_shards(self.n_items, spec.items_per_shard))
                        if k not in records]
        self.complete = not self.pending
        self.failures: list[Failure] = failures_of(records)
        # content digest of the images / texts the store was made from (None: not recorded)
        self.inputs_sha256: str | None = inputs_sha256(records)
        done = np.ones(self.n_items, dtype=bool)
        for k in self.pending:  # a crashed shard may hold written rows: they do not count
            r = shard_range(k, self.n_items, spec.items_per_shard)
            done[r.start:r.stop] = False
        ok = self._checked_read("ok", zarr.open_array(path / "ok", mode="r"))
        self.ok = ok.astype(bool) & done
        self._arrays: dict[str, zarr.Array] = {}
        self._raw: dict[str, RawChunks | None] = {}  # uncompressed arrays: mmap chunk views
        self.cache_bytes = cache_bytes  # decoded chunks kept for later reads (0 = none)
        self._cache = ChunkCache(cache_bytes) if cache_bytes > 0 else None
        # bytes decoded from disk, copied after decoding, and handed out by read() (benchmarks)
        self.stats = {"decoded": 0, "copied": 0, "delivered": 0}
        # one read per chunk: no copy to split a run for the cache (benchmarks/feed_train.py T1:
        # 1.0 vs 1.45 bytes copied per byte delivered, and faster); True: runs of chunks
        self.coalesce = False

    @classmethod
    def open(cls, path: str | Path, *, kind: str | None = None, expect: dict | None = None,
             cache_bytes: int = 0) -> FeatureStore:
        """Open the store at ``path``; refuse it (StoreMismatch) if it is not of ``kind`` or its
        provenance differs from ``expect = {"producer": {...}, "dims": {...}}`` (subsets).
        ``cache_bytes`` > 0 keeps up to that many bytes of decoded chunks (:class:`ChunkCache`)."""
        path = Path(path)
        if not path.exists():
            raise PkdError(f"{path}: no such path")
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
        return cls(path, spec, attrs, cache_bytes)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}, "_cache": None, "_raw": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = ChunkCache(self.cache_bytes) if self.cache_bytes > 0 else None

    @property
    def checksums(self) -> dict[str, bool]:
        """``{array: whether its chunks carry a crc32c}`` for every array, ``ok`` and ``ids``."""
        return {name: has_checksums(self.path / name) for name in [*self.spec.names, "ok", "ids"]}

    def _checked_read(self, name: str, array: zarr.Array, start: int = 0,
                      stop: int | None = None) -> np.ndarray:
        """``array[start:stop]``; a damaged chunk is a PkdError naming it (:meth:`_damaged`)."""
        stop = array.shape[0] if stop is None else stop
        try:
            return array[start:stop]
        except DAMAGED as err:
            raise self._damaged(name, array, start, stop, err) from None

    def _damaged(self, name: str, array: zarr.Array, start: int, stop: int,
                 err: BaseException) -> PkdError:
        """The one-line error for a failed read of rows ``[start, stop)`` of ``array``: the first
        chunk in that range that fails alone is named, with its rows and how to rewrite it."""
        step = array.chunks[0]
        first = start - start % step
        for lo in range(first, stop, step):
            hi = min(lo + step, array.shape[0])
            try:
                array[lo:hi]
            except DAMAGED as chunk_err:
                start, stop, err = lo, hi, chunk_err
                break
        what = "checksum mismatch" if "checksum" in str(err) else f"{type(err).__name__}: {err}"
        where = f"chunk {start // step}, rows [{start}, {stop})" if stop - start <= step \
            else f"rows [{start}, {stop})"
        if name == "ids":
            fix = "rebuild the store (--overwrite)"
        else:
            k = start // self.spec.items_per_shard
            record = done_path(self.path, k).relative_to(self.path)
            fix = (f"to rewrite shard {k}, delete {record} and re-run the command that wrote "
                   "the store")
        return PkdError(f"{self.path}: array {name!r}, {where}: damaged data "
                        f"({' '.join(what.split())}); {fix}")

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

    def read(self, rows: Sequence[int] | np.ndarray, names: Sequence[str] | None = None,
             out: dict[str, np.ndarray] | None = None,
             crop: dict[str, tuple[slice, ...]] | None = None) -> dict[str, np.ndarray]:
        """``{name: array [len(rows), *item_shape]}`` for ``rows`` in the given order.

        Chunks held by the cache are not read again; the others are fetched concurrently as runs
        of consecutive chunks and (with a cache) kept for the next batches. Each requested row
        is copied once, straight from its decoded chunk into the output (no concatenation of
        the chunks first): bytes copied = bytes delivered. Rows of ``ROW_LOOP_BYTES`` or more
        are gathered in one ``np.concatenate`` of row views (one C loop of copies; a fancy index
        per chunk would copy through a temporary).

        ``out``: ``{name: buffer}`` to write into instead of new arrays (each of shape
        ``(>= len(rows), *item_shape)`` and the array's dtype; the result is
        ``buffer[:len(rows)]``): reused (or pinned) buffers skip the page faults of a fresh
        allocation (``benchmarks/feed_train.py`` T1).

        ``crop``: ``{name: slices of the item axes}``: each row of ``name`` is cut to
        ``item[slices]`` as it is copied (a batch's first tokens: only those bytes are copied).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_items):
            bad = rows[(rows < 0) | (rows >= self.n_items)][0]
            raise PkdError(f"{self.path}: row {bad} out of range (store has {self.n_items} rows)")
        names = list(names or self.spec.names)
        arrays = {name: self._array(name) for name in names}
        ipc = self.spec.items_per_chunk
        chunk_of = rows // ipc
        chunks, inverse = np.unique(chunk_of, return_inverse=True)
        have = self._fetch_chunks(arrays, chunks.tolist())
        local = rows - chunk_of * ipc
        row_chunks, row_local = inverse.tolist(), local.tolist()
        sizes = np.minimum(ipc, self.n_items - chunks * ipc)  # rows of each chunk (last: fewer)
        stacked = np.cumsum(sizes) - sizes  # first row of each chunk in the chunks stacked
        at = stacked[inverse] + local  # each row's position in the chunks stacked
        chunk_list, got = chunks.tolist(), {}
        for name, array in arrays.items():
            cut = tuple((crop or {}).get(name, ()))
            item = cropped_shape(array.shape[1:], cut)
            dest = _destination(out, name, len(rows), item, array.dtype)
            parts = [have[name, c] for c in chunk_list]
            if not parts:
                pass
            elif dest[0].nbytes >= ROW_LOOP_BYTES:  # each row copied once, in one C loop
                np.concatenate([parts[i][(slice(r, r + 1), *cut)]
                                for i, r in zip(row_chunks, row_local, strict=True)], out=dest)
            else:  # small rows: the batch's chunks stacked (few bytes), one gather
                stack = parts[0] if len(parts) == 1 else np.concatenate(parts)
                if len(parts) > 1:
                    self.stats["copied"] += stack.nbytes
                np.take(stack[(slice(None), *cut)], at, axis=0, out=dest, mode="clip")
            got[name] = dest
            self.stats["delivered"] += dest.nbytes
            self.stats["copied"] += dest.nbytes
        return got

    def _raw_chunks(self, name: str) -> RawChunks | None:
        if name not in self._raw:
            self._raw[name] = RawChunks.of(self.path / name)
        return self._raw[name]

    def _fetch_chunks(self, arrays: dict[str, zarr.Array], chunks: list[int]) -> dict:
        """``{(name, chunk): rows of that chunk}``: views into the page cache for an
        uncompressed array (:class:`RawChunks`), else from the chunk cache, else read through
        Zarr (concurrently)."""
        ipc, have, jobs = self.spec.items_per_chunk, {}, []
        for name, array in arrays.items():
            raw = self._raw_chunks(name)
            if raw is not None:
                for c in chunks:
                    try:
                        have[name, c] = raw.chunk(c)
                    except DAMAGED as err:
                        raise self._damaged(name, array, c * ipc,
                                            min((c + 1) * ipc, self.n_items), err) from None
                continue
            missing = []
            for c in chunks:
                hit = self._cache.get((name, c)) if self._cache is not None else None
                if hit is None:
                    missing.append(c)
                else:
                    have[name, c] = hit
            rows = np.asarray(missing, dtype=np.int64) * ipc
            if self.coalesce:
                jobs += [(name, array, run) for run in chunk_runs(rows, ipc, self.n_items)]
            else:
                jobs += [(name, array, (int(r), min(int(r) + ipc, self.n_items))) for r in rows]
        parts = sync(_read_runs([(a, run) for _, a, run in jobs])) if jobs else []
        for (name, array, (start, stop)), part in zip(jobs, parts, strict=True):
            if isinstance(part, DAMAGED):
                raise self._damaged(name, array, start, stop, part)
            if isinstance(part, BaseException):
                raise part
        for (name, _, (start, stop)), part in zip(jobs, parts, strict=True):
            self.stats["decoded"] += part.nbytes
            for first in range(start, stop, ipc):
                chunk = part[first - start:first - start + ipc]
                if self._cache is not None:
                    if chunk.shape[0] < part.shape[0]:
                        chunk = chunk.copy()  # a view would keep the whole run alive
                        self.stats["copied"] += chunk.nbytes
                    self._cache.put((name, first // ipc), chunk)
                have[name, first // ipc] = chunk
        return have

    def read_range(self, start: int, stop: int,
                   names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{name: array [stop - start, *item_shape]}`` for the contiguous rows
        ``[start, stop)``."""
        if not 0 <= start <= stop <= self.n_items:
            raise PkdError(f"{self.path}: rows [{start}, {stop}) out of range (store has "
                           f"{self.n_items} rows)")
        return {name: self._checked_read(name, self._array(name), start, stop)
                for name in (names or self.spec.names)}


def cropped_shape(item_shape: Sequence[int], cut: Sequence) -> tuple[int, ...]:
    """The shape of one item of ``item_shape`` cut to ``item[cut]`` (``read``'s crop)."""
    return np.empty((0, *item_shape), np.uint8)[(slice(None), *cut)].shape[1:]


def _destination(out: dict[str, np.ndarray] | None, name: str, n: int, item: tuple,
                 dtype: np.dtype) -> np.ndarray:
    """``out[name][:n]`` after checking its shape and dtype, else a new array."""
    if out is None or name not in out:
        return np.empty((n, *item), dtype=dtype)
    buf = out[name]
    if buf.shape[1:] != item or len(buf) < n or buf.dtype != dtype \
            or not buf.flags.c_contiguous:
        raise PkdError(f"read into {name!r}: a buffer of shape {buf.shape} {buf.dtype}, "
                       f"expected contiguous ({n}+, {', '.join(map(str, item))}) {dtype}")
    return buf[:n]


def describe(producer: dict) -> str:
    """``model X (config abc123)`` — how errors name who built a store."""
    model = producer.get("model", producer.get("model_id", "an unnamed producer"))
    conf = producer.get("config_hash")
    return f"{model}" + (f" (config {conf})" if conf else "")
