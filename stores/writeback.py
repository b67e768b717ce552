"""Start the kernel's writeback of a file range as soon as it is written (Linux).

A shard written with plain ``write`` calls sits in the page cache as dirty pages until the
kernel's writeback thresholds or an ``fsync``: the disk idles while the writer computes
checksums, then everything is flushed at once. ``sync_file_range(fd, offset, nbytes,
SYNC_FILE_RANGE_WRITE)`` queues the range for writeback and returns at once (it waits for
nothing and guarantees nothing about durability; ``fsync`` still does that), so the disk writes
chunk ``j`` while the writer prepares chunk ``j + 1`` (``benchmarks/feed.py`` E3: store write
vs raw write to disk, fsync included). The pages stay cached for the readers that follow.

Python's ``os`` has no ``sync_file_range``; it is called through ctypes from the C library.
Elsewhere (another OS, no such symbol) :func:`start_writeback` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages in the range, no wait
_NOT_LOADED = object()
_call = _NOT_LOADED


def _load():
    """The C library's ``sync_file_range`` (int fd, off64_t, off64_t, unsigned), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Queue bytes ``[offset, offset + nbytes)`` of open file ``fd`` for writeback (advice: a
    failure is ignored). Whether it was queued."""
    global _call
    if _call is _NOT_LOADED:
        _call = _load()
    if _call is None or nbytes <= 0:
        return False
    return _call(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) == 0
