"""An event log of an extraction: when each batch was decoded, preprocessed, computed, copied
to the host, and when each shard was written — to see what overlaps what.

Off by default (a ``span`` then costs one ``None`` check); ``with recording() as log:`` turns it
on for the block and fills ``log`` with :class:`Event` s from every thread
(``benchmarks/feed.py`` E1 reads it: write(k) must overlap compute(k+1)).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    kind: str  # decode | preprocess | forward | to_host | write
    key: int  # batch number (per kind) or shard
    start: float  # time.perf_counter()
    stop: float
    thread: str


_LOG: list[Event] | None = None
_GUARD = threading.Lock()


@contextmanager
def span(kind: str, key: int = -1) -> Iterator[None]:
    """Record the block as one event of ``kind`` when a log is recording."""
    if _LOG is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        event = Event(kind, key, start, time.perf_counter(), threading.current_thread().name)
        with _GUARD:
            if _LOG is not None:
                _LOG.append(event)


@contextmanager
def recording() -> Iterator[list[Event]]:
    """Collect every span of the block into the yielded list (one recording at a time)."""
    global _LOG
    log: list[Event] = []
    with _GUARD:
        if _LOG is not None:
            raise RuntimeError("an event recording is already running")
        _LOG = log
    try:
        yield log
    finally:
        with _GUARD:
            _LOG = None
