"""A byte-bounded least-recently-used cache of decoded store chunks.

Chunk-shuffled training (:class:`pkd.stores.ChunkShuffleSampler`) draws each batch from a window
of ``window_chunks`` chunks, so one chunk is needed by about ``window positions / batch size``
consecutive batches of an epoch. Without a cache every one of those batches decodes the chunk
again; with a cache holding a window or two of decoded chunks each chunk is decoded about once per
epoch. Memory stays bounded by ``max_bytes`` whatever the data set size.

Thread-safe: the trainer's prefetch thread and its validation pass may read one store at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


class ChunkCache:
    """``key -> decoded chunk`` with least-recently-used eviction once ``max_bytes`` is exceeded."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        """Keep ``value`` (read-only from now on); a value larger than the whole cache is not
        kept."""
        if value.nbytes > self.max_bytes:
            return
        value.flags.writeable = False  # callers get views: nobody may change a cached chunk
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0
