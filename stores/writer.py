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

Two writers must never share a shard (a shard file is read-modified-written); give each process a
disjoint ``part=(i, n)`` of :meth:`StoreWriter.pending`.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pkd.errors import PkdError, StoreMismatch
from pkd.stores.records import n_shards, read_records, shard_range, write_record
from pkd.stores.schema import ATTR, Failure, StoreSpec, done_path, read_attrs, spec_difference

IDS_CHUNK = 1 << 16  # ids per chunk of the `ids` array (unsharded, written once at creation)


def codec() -> BloscCodec:
    """The compressor of every per-item array."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def sorted_ids(ids: Sequence[int], where: Path) -> np.ndarray:
    """``ids`` as a sorted int64 array; PkdError on duplicates or an empty list."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise PkdError(f"{where}: ids must be a non-empty 1-d list of integers, got {arr.dtype} {arr.shape}")
    arr = np.sort(arr.astype(np.int64))
    dup = np.flatnonzero(arr[1:] == arr[:-1])
    if dup.size:
        raise PkdError(f"{where}: duplicate id {arr[dup[0]]}")
    return arr


def create_store(path: Path, spec: StoreSpec, ids: np.ndarray) -> None:
    """Build the empty store in a temporary sibling folder and rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        ipc, ips = spec.items_per_chunk, spec.items_per_shard
        for a in spec.arrays:
            group.create_array(a.name, shape=(len(ids), *a.item_shape), dtype=a.dtype,
                               chunks=(ipc, *a.item_shape), shards=(ips, *a.item_shape),
                               compressors=codec(), fill_value=0)
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
    """

    def __init__(self, path: str | Path, spec: StoreSpec, ids: Sequence[int], *, overwrite: bool = False):
        self.path = Path(path)
        self.spec = spec
        self.ids = sorted_ids(ids, self.path)
        if overwrite and self.path.exists():
            read_attrs(self.path)  # refuse to delete something that is not a pkd store
            shutil.rmtree(self.path)
        if not self.path.exists():
            create_store(self.path, spec, self.ids)
        self._check_same()
        self._group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self._arrays = {name: self._group[name] for name in [*spec.names, "ok"]}
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
            raise StoreMismatch(f"{self.path}: existing store differs: {diff} (use overwrite to rebuild)")
        stored = zarr.open_array(self.path / "ids", mode="r")[:]
        if len(stored) != len(self.ids):
            raise StoreMismatch(f"{self.path}: existing store differs: ids has {len(stored)} items, "
                                f"expected {len(self.ids)} (use overwrite to rebuild)")
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

    def pending(self, part: tuple[int, int] | None = None) -> list[int]:
        """Shards without a completion record; ``part=(i, n)`` keeps shards with ``k % n == i``."""
        i, n = part or (0, 1)
        if not 0 <= i < n:
            raise PkdError(f"{self.path}: part must be (i, n) with 0 <= i < n, got {part}")
        done = read_records(self.path)
        return [k for k in range(i, self.n_shards, n) if k not in done]

    def write_shard(self, k: int, arrays: dict[str, np.ndarray], failures: Sequence[Failure] = (),
                    ok: np.ndarray | None = None) -> None:
        """Write every array of shard ``k`` (shape ``(len(shard_rows(k)), *item_shape)``), then
        ``ok`` (default: 1 except the failed ids), then the completion record."""
        rows = self.shard_rows(k)
        self._validate(k, rows, arrays)
        ok_column = self._ok_column(k, failures, ok)
        done_path(self.path, k).unlink(missing_ok=True)  # a rewrite is pending until it finishes
        for name in self.spec.names:
            self._arrays[name][rows.start:rows.stop] = arrays[name]
        self._arrays["ok"][rows.start:rows.stop] = ok_column
        write_record(self.path, k, rows, failures)

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
            raise PkdError(f"{self.path}: shard {k}: ok has shape {column.shape}, expected {ids.shape}")
        failed = np.array([f.id for f in failures], dtype=np.int64)
        outside = failed[~np.isin(failed, ids)]
        if outside.size:
            raise PkdError(f"{self.path}: shard {k}: failure for id {outside[0]}, not in this shard")
        return (column.astype(bool) & ~np.isin(ids, failed)).astype(np.uint8)
