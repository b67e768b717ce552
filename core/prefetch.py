"""Background prefetching so the model never waits on image decoding.

``prefetch(fn, items, depth)`` applies ``fn`` to each item in a worker thread, keeping up to
``depth`` results ready ahead of the consumer, and yields them in order. PIL decoding and PNG/JPEG
inflation release the GIL, so one decode thread overlaps well with a torch forward pass.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int = 2) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, computed ``depth`` items ahead in a daemon thread.

    An exception raised by ``fn`` is re-raised in the consumer at the item that caused it.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((True, fn(item)))
        except BaseException as err:  # forwarded to the consumer
            slots.put((False, err))
            return
        slots.put((True, _DONE))

    thread = threading.Thread(target=work, name="pkd-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = slots.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def prefetch_pool(fn: Callable[[T], R], items: Iterable[T], workers: int,
                  depth: int | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for each item in order, computed by ``workers`` threads, up to
    ``depth`` (default ``2 * workers``) results ahead. ``workers <= 1``: :func:`prefetch`.

    For work that releases the GIL (image decoding, PIL resizes, numpy): decoding and
    preprocessing on several cores while the consumer drives the model. An exception is
    re-raised at the item that caused it.
    """
    if workers <= 1:
        yield from prefetch(fn, items, depth or 2)
        return
    depth = max(1, depth or 2 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pkd-decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
