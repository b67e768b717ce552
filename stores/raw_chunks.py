"""Zero-copy chunk views of uncompressed store arrays, through ``mmap`` of their shard files.

An array written with codec ``none`` (:func:`pkd.stores.writer.codec`) holds, inside each shard
file, every inner chunk as its raw little-endian bytes followed by a 4-byte crc32c, and at the
end of the file the shard index (Zarr v3 ``sharding_indexed``, ``index_location: end``)::

    index[j] = (offset, nbytes) uint64 little-endian   j = inner chunk of the shard
    then crc32c(index) (4 bytes)                       (2^64 - 1, 2^64 - 1): chunk never written

so chunk ``j`` *is* ``mmap[offset : offset + nbytes - 4]`` viewed as ``dtype (rows, *item)``:
the reader gathers batch rows straight from the page cache, one copy, as a numpy memmap does,
instead of Zarr's decode path (~0.2-0.3 GB/s even without a compressor,
``benchmarks/feed.py`` E3 / T1). Each chunk's crc32c (and each shard index's) is checked the
first time this process touches it (google_crc32c, ~4 GB/s); a mismatch is the same one-line
error as Zarr's. Any other layout (a compressor, another index location, chunks split along an
item axis) gets ``None`` from :meth:`RawChunks.of` and is read through Zarr as before.

:meth:`RawChunks.write_shard` writes a shard file of that layout directly (chunks, their crc32c,
the index and its crc32c; a temporary file renamed into place, as Zarr's local store does),
instead of Zarr's encode path (~0.3-0.45 GB/s without a compressor, E3); Zarr reads the files it
writes (``tests/test_raw_chunks.py``).
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import uuid
from pathlib import Path

import google_crc32c
import numpy as np

from pkd.stores.writeback import start_writeback

MISSING = np.uint64(2**64 - 1)  # an index entry of a chunk that was never written (fill value)


class ChecksumError(ValueError):
    """Raised like Zarr's crc32c codec: ``Stored and computed checksum do not match``."""


def _crc_ok(data: memoryview, stored: bytes) -> bool:
    """Whether crc32c(``data``) is ``stored`` (google_crc32c takes a numpy view, not a
    memoryview: no copy either way)."""
    return np.uint32(google_crc32c.value(np.frombuffer(data, np.uint8))).tobytes() == stored


class RawChunks:
    """Chunk views of one uncompressed sharded array (see the module doc)."""

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: np.dtype, shard_rows: int,
                 chunk_rows: int, separator: str, fill_value):
        self.folder, self.shape, self.dtype = folder, shape, dtype
        self.shard_rows, self.chunk_rows, self.separator = shard_rows, chunk_rows, separator
        self.fill_value = fill_value
        self.per_shard = shard_rows // chunk_rows
        self.item = shape[1:]
        self._maps: dict[int, tuple[mmap.mmap | None, np.ndarray | None]] = {}
        self._views: dict[int, np.ndarray] = {}  # checked chunks' views (a batch: dict hits)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, folder: str | Path) -> RawChunks | None:
        """The chunk views of the array at ``folder``, or None when it is not uncompressed
        little-endian shards of whole items with a crc32c per chunk and the index at the end."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "zarr.json").read_text())
            (shard,) = meta["codecs"]
            conf = shard["configuration"]
            inner = [c["name"] for c in conf["codecs"]]
            endian = conf["codecs"][0].get("configuration", {}).get("endian", "little")
            shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
            chunk_shape = conf["chunk_shape"]
            separator = meta["chunk_key_encoding"]["configuration"]["separator"]
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        shape = tuple(meta["shape"])
        whole_items = list(shard_shape[1:]) == list(shape[1:]) == list(chunk_shape[1:])
        index = [c["name"] for c in conf.get("index_codecs", [])]
        if (shard["name"] != "sharding_indexed" or inner != ["bytes", "crc32c"]
                or endian != "little" or not whole_items or index != ["bytes", "crc32c"]
                or conf.get("index_location", "end") != "end"
                or meta["chunk_key_encoding"]["name"] != "default"
                or shard_shape[0] % chunk_shape[0]):
            return None
        return cls(folder, shape, dtype, int(shard_shape[0]), int(chunk_shape[0]), separator,
                   meta.get("fill_value", 0))

    def _shard(self, s: int) -> tuple[mmap.mmap | None, np.ndarray | None]:
        """The shard file's map and its checked index ((None, None): never written)."""
        with self._lock:
            if s in self._maps:
                return self._maps[s]
            key = self.separator.join(["c", str(s), *("0" for _ in self.item)])
            path = self.folder / key
            if not path.is_file():
                self._maps[s] = (None, None)
                return self._maps[s]
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            size = self.per_shard * 16
            raw = memoryview(mm)[len(mm) - size - 4:]
            if not _crc_ok(raw[:size], bytes(raw[size:])):
                raise ChecksumError(f"{path}: shard index: Stored and computed checksum do not "
                                    "match")
            index = np.frombuffer(raw[:size], dtype="<u8").reshape(self.per_shard, 2)
            self._maps[s] = (mm, index)
            return self._maps[s]

    def chunk(self, c: int) -> np.ndarray:
        """Rows of inner chunk ``c`` (a read-only view into the page cache; fill values for a
        chunk never written)."""
        view = self._views.get(c)
        if view is not None:
            return view
        s, j = divmod(c, self.per_shard)
        first = c * self.chunk_rows
        rows = min(self.chunk_rows, self.shape[0] - first)
        mm, index = self._shard(s)
        if mm is None or index[j, 0] == MISSING:
            return np.full((rows, *self.item), self.fill_value, dtype=self.dtype)
        offset, nbytes = int(index[j, 0]), int(index[j, 1])
        data = memoryview(mm)[offset:offset + nbytes]
        if not _crc_ok(data[:-4], bytes(data[-4:])):
            raise ChecksumError("Stored and computed checksum do not match")
        view = np.frombuffer(data[:-4], dtype=self.dtype)
        view = view.reshape(self.chunk_rows, *self.item)[:rows]
        self._views[c] = view
        return view

    def write_shard(self, s: int, data: np.ndarray) -> None:
        """Write shard ``s`` (rows ``[s * shard_rows, ...)``, all of them) as one file: each
        inner chunk's bytes (padded with the fill value to whole chunks) + its crc32c, then the
        index + its crc32c. Chunks past the array's end are left out (index: never written)."""
        first = s * self.shard_rows
        rows = min(self.shard_rows, self.shape[0] - first)
        data = np.ascontiguousarray(data, dtype=self.dtype)
        if data.shape != (rows, *self.item):
            raise ValueError(f"shard {s}: rows of shape {data.shape}, "
                             f"expected {(rows, *self.item)}")
        index = np.full((self.per_shard, 2), MISSING, dtype="<u8")
        key = self.separator.join(["c", str(s), *("0" for _ in self.item)])
        path = self.folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        chunk_bytes = (self.chunk_rows * int(np.prod(self.item, dtype=np.int64))
                       * self.dtype.itemsize)
        try:
            with open(tmp, "wb") as f:
                offset = 0
                for j in range(self.per_shard):
                    lo = j * self.chunk_rows
                    if lo >= rows:
                        break
                    part = data[lo:lo + self.chunk_rows]
                    if len(part) < self.chunk_rows:  # the array's last chunk: pad to a whole one
                        pad = np.full((self.chunk_rows - len(part), *self.item), self.fill_value,
                                      dtype=self.dtype)
                        part = np.concatenate([part, pad])
                    raw = part.view(np.uint8).reshape(-1)
                    f.write(raw.data)
                    f.write(np.uint32(google_crc32c.value(raw)).tobytes())
                    f.flush()  # the disk writes this chunk while the next one is checked
                    start_writeback(f.fileno(), offset, chunk_bytes + 4)
                    index[j] = (offset, chunk_bytes + 4)
                    offset += chunk_bytes + 4
                table = index.tobytes()
                f.write(table)
                f.write(np.uint32(google_crc32c.value(np.frombuffer(table, np.uint8))).tobytes())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:  # a map of the old file must not be served
            self._maps.pop(s, None)
            for c in range(s * self.per_shard, (s + 1) * self.per_shard):
                self._views.pop(c, None)
