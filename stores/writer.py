"""Write a feature store shard by shard: create (atomically) or resume, one owner per shard.

Protocol (see docs/design.md, section Stores):

1. The store is created complete but empty — description, ``ids``, every array with its chunking —
   in a temporary folder next to ``path`` and renamed into place, so other processes see either
   no store or a whole one. If another process created it first, that store is opened instead.
2. An existing store is resumed only if its spec (kind, key, arrays, producer, dims, chunking)
   and its ids equal this run's; otherwise :class:`StoreMismatch` names the first differing field.
3. ``write_shard(k, ...)`` writes shard ``k`` of every array in one shard-aligned write each, then
   the ``ok`` column, then the completion record (temporary file + ``os.replace``). A crash before
   the record leaves the shard pending; the next run rewrites it whole.

Integrity: every chunk of every array carries a crc32c of its compressed bytes (``codec()``), so
a damaged chunk is a read error (:class:`pkd.stores.FeatureStore` names the array and rows)
rather than wrong numbers. A row whose floating-point values are not all finite in the store dtype
(NaN from the model or the source file, or a value beyond ±65504 that overflowed float16) is never
written as data: ``write_shard`` records it as a failed item (reason ``non-finite features: ...``),
zeroes it and leaves ``ok = 0`` — like an unreadable image, the shard goes on.

Two writers must never share a shard (a shard file is read-modified-written); give each process a
disjoint ``part=(i, n)`` of :meth:`StoreWriter.pending`.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pkd.errors import PkdError, StoreMismatch
from pkd.stores.raw_chunks import RawChunks
from pkd.stores.records import n_shards, read_records, shard_range, write_record
from pkd.stores.schema import ATTR, Failure, StoreSpec, done_path, read_attrs, spec_difference

IDS_CHUNK = 1 << 16  # ids per chunk of the `ids` array (unsharded, written once at creation)


FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger values become inf in float16
EXPONENT_BITS = {2: 0x7C00, 4: 0x7F800000, 8: 0x7FF0000000000000}  # IEEE all-ones = inf / nan
FINITE_CHECK_ROWS = 16  # rows checked at a time (bounds the temporary)


CODECS = ("none", "lz4")  # what a new store's feature arrays are written with (default first)


def codec(name: str = "none") -> list:
    """The bytes-to-bytes codecs of a chunk. ``none`` (the default): the raw bytes and a crc32c,
    written and read by pkd directly (:mod:`pkd.stores.raw_chunks`: zero-copy views through
    mmap). Model activations are incompressible (lz4 ratio 1.00, E3), and with uncompressed
    regions the store feeds a stub H200 step like RAM does (T3: data wait 4.9% vs 24% with lz4);
    ``lz4``: Blosc lz4 (level 3, no shuffle), then a crc32c — 1.1-2.0x smaller regions (zeros,
    padding) for a disk-bound user
    of the compressed bytes (checked on every read: a flipped or zeroed byte raises instead of
    decoding to wrong numbers). Stores written before pkd added the checksum have the compressor
    alone, stores written before issue 32's E3 have Blosc zstd 3 with byte shuffle: zarr reads
    the codecs from each array's metadata, so they stay readable (``pkd stores info`` says when
    they have no chunk checksums)."""
    # Chosen from issue 32's E3 (`OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/feed.py
    # --only E3 [--store PATH]`, one busy core, 2026-12-07; tables in benchmarks/README.md). On
    # float16 vision tokens (random ViT-B/16 197 x 768, trained tiny CLIP 65 x 128) Blosc zstd 3
    # saves 8% (ratio 1.09) at 0.54-0.67 GB/s compress / 0.64-0.70 decompress on one thread;
    # Blosc lz4 3 stores them at ratio 1.00 (incompressible blocks are copied) at 2.1-2.2 /
    # 2.0-3.0 GB/s, and the store writes 1.35x and reads 1.6-1.7x faster than with zstd. lz4
    # still compresses zeros: padded region features 2.0x (zstd 2.9x), half-zero ones 1.14x
    # (zstd 1.6x). Byte shuffle gains nothing for lz4 here and costs a pass.
    if name not in CODECS:
        raise PkdError(f"--codec {name!r}: expected one of {', '.join(CODECS)}")
    if name == "none":
        return [Crc32cCodec()]
    return [BloscCodec(cname="lz4", clevel=3, shuffle="noshuffle"), Crc32cCodec()]


def finite_rows(a: np.ndarray) -> np.ndarray:
    """(n,) bool: row ``i`` of ``a`` (n, ...) holds no inf / nan (True for non-float dtypes).

    On the bits, with ``E`` the exponent bits (all ones: inf / nan) and ``S`` the sign bit: a
    positive element is inf / nan iff its bits as a *signed* integer are ``>= E``, a negative one
    iff its bits as an *unsigned* integer are ``>= S | E``. So a row is finite iff
    ``max(signed) < E`` and ``max(unsigned) < S | E``: two integer max reductions, no copy
    (~3.5x faster than comparing every element to the mask, >10x isfinite on float16)."""
    if not np.issubdtype(a.dtype, np.floating):
        return np.ones(len(a), dtype=bool)
    exponent = EXPONENT_BITS.get(a.dtype.itemsize)
    out = np.empty(len(a), dtype=bool)
    for s in range(0, len(a), FINITE_CHECK_ROWS):  # blocks: no temporary the size of the shard
        block = np.ascontiguousarray(a[s:s + FINITE_CHECK_ROWS]).reshape(
            min(FINITE_CHECK_ROWS, len(a) - s), -1)
        if exponent is None:  # float128 and the like
            out[s:s + len(block)] = np.isfinite(block).all(axis=1)
            continue
        bits = 8 * a.dtype.itemsize
        signed = block.view(f"i{a.dtype.itemsize}").max(axis=1, initial=0) < exponent
        negative = (1 << (bits - 1)) | exponent
        unsigned = block.view(f"u{a.dtype.itemsize}").max(axis=1, initial=0) < negative
        out[s:s + len(block)] = signed & unsigned
    return out


def non_finite_reason(name: str, row: np.ndarray) -> str:
    """Why ``row`` (one item of array ``name``, holding an inf or nan) is refused: one line."""
    has_nan = bool(np.isnan(row).any())
    what = "nan" if has_nan else "inf"
    reason = f"non-finite features: {name} holds {what} as {row.dtype}"
    if not has_nan and row.dtype == np.float16:
        reason += f" (overflows float16: a value beyond ±{FLOAT16_MAX:.0f})"
    return reason


def sorted_ids(ids: Sequence[int], where: Path) -> np.ndarray:
    """``ids`` as a sorted int64 array; PkdError on duplicates or an empty list."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise PkdError(f"{where}: ids must be a non-empty 1-d list of integers, got {arr.dtype} "
                       f"{arr.shape}")
    arr = np.sort(arr.astype(np.int64))
    dup = np.flatnonzero(arr[1:] == arr[:-1])
    if dup.size:
        raise PkdError(f"{where}: duplicate id {arr[dup[0]]}")
    return arr


def create_store(path: Path, spec: StoreSpec, ids: np.ndarray, compression: str = "none") -> None:
    """Build the empty store in a temporary sibling folder and rename it to ``path``; its feature
    arrays are written with :func:`codec` ``(compression)`` (``ok`` and ``ids``: the default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        ipc, ips = spec.items_per_chunk, spec.items_per_shard
        for a in spec.arrays:
            group.create_array(a.name, shape=(len(ids), *a.item_shape), dtype=a.dtype,
                               chunks=(ipc, *a.item_shape), shards=(ips, *a.item_shape),
                               compressors=codec(compression), fill_value=0)
        group.create_array("ok", shape=(len(ids),), dtype="uint8", chunks=(ipc,), shards=(ips,),
                           compressors=codec(), fill_value=0)
        id_array = group.create_array("ids", shape=(len(ids),), dtype="int64",
                                      chunks=(min(len(ids), IDS_CHUNK),), compressors=codec(),
                                      fill_value=0)
        id_array[:] = ids
        group.attrs[ATTR] = spec.to_attrs(len(ids))
        os.rename(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        # another process created the store first: use theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class StoreWriter:
    """Create or resume the store at ``path`` for ``ids`` (sorted, unique) under ``spec``.

    ``overwrite=True`` deletes an existing pkd store at ``path`` first (never a foreign folder).
    ``compression`` (``none`` | ``lz4``, :func:`codec`) applies to a store it creates.
    """

    def __init__(self, path: str | Path, spec: StoreSpec, ids: Sequence[int], *,
                 overwrite: bool = False, compression: str = "none"):
        self.path = Path(path)
        codec(compression)  # an unknown name is refused before anything is written
        self.spec = spec
        self.ids = sorted_ids(ids, self.path)
        if overwrite and self.path.exists():
            read_attrs(self.path)  # refuse to delete something that is not a pkd store
            shutil.rmtree(self.path)
        if not self.path.exists():
            create_store(self.path, spec, self.ids, compression)  # a resume keeps the store's
        self._check_same()
        self._group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self._arrays = {name: self._group[name] for name in [*spec.names, "ok"]}
        self._raw = {name: RawChunks.of(self.path / name) for name in [*spec.names, "ok"]}
        self.n_shards = n_shards(len(self.ids), spec.items_per_shard)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _check_same(self) -> None:
        """Refuse an existing store that another spec or other ids produced."""
        have = StoreSpec.from_attrs(read_attrs(self.path), self.path)
        diff = spec_difference(have, self.spec)
        if diff:
            raise StoreMismatch(f"{self.path}: existing store differs: {diff} (use overwrite to "
                                "rebuild)")
        stored = zarr.open_array(self.path / "ids", mode="r")[:]
        if len(stored) != len(self.ids):
            raise StoreMismatch(f"{self.path}: existing store differs: ids has {len(stored)} "
                                f"items, expected {len(self.ids)} (use overwrite to rebuild)")
        differ = np.flatnonzero(stored != self.ids)
        if differ.size:
            r = differ[0]
            raise StoreMismatch(f"{self.path}: existing store differs: ids[{r}] is {stored[r]}, "
                                f"expected {self.ids[r]} (use overwrite to rebuild)")

    def shard_rows(self, k: int) -> range:
        """Rows of shard ``k``."""
        return shard_range(k, len(self.ids), self.spec.items_per_shard)

    def shard_ids(self, k: int) -> np.ndarray:
        """Ids (int64) of the rows of shard ``k``, in row order."""
        rows = self.shard_rows(k)
        return self.ids[rows.start:rows.stop].copy()

    def pending(self, part: tuple[int, int] | None = None, *,
                retry_failed: bool = False) -> list[int]:
        """Shards without a completion record; ``part=(i, n)`` keeps shards with ``k % n == i``.
        ``retry_failed``: also the done shards whose record lists failed items."""
        i, n = part or (0, 1)
        if not 0 <= i < n:
            raise PkdError(f"{self.path}: part must be (i, n) with 0 <= i < n, got {part}")
        done = read_records(self.path)
        return [k for k in range(i, self.n_shards, n)
                if k not in done or (retry_failed and done[k]["failures"])]

    def read_shard(self, k: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(every array, the ``ok`` column) of shard ``k`` as stored (to patch a few rows)."""
        rows = self.shard_rows(k)
        arrays = {name: self._arrays[name][rows.start:rows.stop] for name in self.spec.names}
        return arrays, self._arrays["ok"][rows.start:rows.stop].astype(bool)

    def write_shard(self, k: int, arrays: dict[str, np.ndarray], failures: Sequence[Failure] = (),
                    ok: np.ndarray | None = None,
                    inputs: Callable[[set[int]], dict[str, str] | None] | None = None
                    ) -> list[Failure]:
        """Write every array of shard ``k`` (shape ``(len(shard_rows(k)), *item_shape)``), then
        ``ok`` (default: 1 except the failed ids), then the completion record (with
        ``inputs(failed ids)``: the digests of what the shard was made from, failures excluded).
        Rows holding inf / nan become failures too (zeroed, ``ok = 0``); returns every failure
        recorded."""
        rows = self.shard_rows(k)
        self._validate(k, rows, arrays)
        arrays, failures = self._refuse_non_finite(k, arrays, list(failures))
        ok_column = self._ok_column(k, failures, ok)
        done_path(self.path, k).unlink(missing_ok=True)  # a rewrite is pending until it finishes
        for name, values in (*((n, arrays[n]) for n in self.spec.names), ("ok", ok_column)):
            raw = self._raw.get(name)
            if raw is not None:  # uncompressed: the shard file written directly (raw_chunks)
                raw.write_shard(k, values)
            else:
                self._arrays[name][rows.start:rows.stop] = values
        digests = inputs({int(f.id) for f in failures}) if inputs is not None else None
        write_record(self.path, k, rows, failures, digests)
        return failures

    def _refuse_non_finite(self, k: int, arrays: dict[str, np.ndarray], failures: list[Failure]
                           ) -> tuple[dict[str, np.ndarray], list[Failure]]:
        """Rows with inf / nan in any float array: zeroed (in copies) and added to ``failures``
        (rows already failed are zeroed without a second failure)."""
        ids = self.shard_ids(k)
        bad = np.zeros(len(ids), dtype=bool)
        reasons: dict[int, str] = {}
        for a in self.spec.arrays:
            finite = finite_rows(arrays[a.name])
            for p in np.flatnonzero(~finite & ~bad):
                reasons[int(p)] = non_finite_reason(a.name, arrays[a.name][p])
            bad |= ~finite
        if not bad.any():
            return arrays, failures
        arrays = dict(arrays)
        for a in self.spec.arrays:  # the whole row goes, as for any failed item
            arrays[a.name] = arrays[a.name].copy()
            arrays[a.name][bad] = 0
        failed = {f.id for f in failures}
        new = [Failure(int(ids[p]), "", reasons[p]) for p in sorted(reasons)
               if int(ids[p]) not in failed]
        return arrays, failures + new

    def _validate(self, k: int, rows: range, arrays: dict[str, np.ndarray]) -> None:
        if set(arrays) != set(self.spec.names):
            missing = sorted(set(self.spec.names) - set(arrays))
            extra = sorted(set(arrays) - set(self.spec.names))
            raise PkdError(f"{self.path}: shard {k}: missing arrays {missing}, unexpected {extra}")
        for a in self.spec.arrays:
            got = arrays[a.name]
            want = (len(rows), *a.item_shape)
            if tuple(got.shape) != want or got.dtype != np.dtype(a.dtype):
                raise PkdError(f"{self.path}: shard {k}: array {a.name!r} is {got.dtype} "
                               f"{tuple(got.shape)}, expected {a.dtype} {want}")

    def _ok_column(self, k: int, failures: Sequence[Failure], ok: np.ndarray | None) -> np.ndarray:
        ids = self.shard_ids(k)
        column = np.ones(len(ids), dtype=np.uint8) if ok is None else np.asarray(ok).astype(bool)
        if column.shape != ids.shape:
            raise PkdError(f"{self.path}: shard {k}: ok has shape {column.shape}, "
                           f"expected {ids.shape}")
        failed = np.array([f.id for f in failures], dtype=np.int64)
        outside = failed[~np.isin(failed, ids)]
        if outside.size:
            raise PkdError(f"{self.path}: shard {k}: failure for id {outside[0]}, not in this "
                           "shard")
        return (column.astype(bool) & ~np.isin(ids, failed)).astype(np.uint8)
