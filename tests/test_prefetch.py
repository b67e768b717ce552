"""``prefetch``: results in order, computed at most ``depth`` ahead, errors surface at their item,
and a consumer that stops early stops the worker thread."""

from __future__ import annotations

import threading
import time

import pytest

from pkd.prefetch import prefetch


def test_results_in_order():
    assert list(prefetch(lambda x: x * x, range(50), depth=3)) == [x * x for x in range(50)]
    assert list(prefetch(lambda x: x, [], depth=2)) == []


def test_runs_at_most_depth_ahead():
    started: list[int] = []

    def work(x):
        started.append(x)
        return x

    it = prefetch(work, range(100), depth=2)
    assert next(it) == 0
    time.sleep(0.05)  # let the worker run as far ahead as it may
    # item 0 consumed; 2 results queued; the worker may hold one more computed result waiting
    assert len(started) <= 1 + 2 + 1, started
    it.close()


def test_error_surfaces_at_its_item():
    def work(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetch(work, range(10)):
            got.append(value)
    assert got == [0, 1, 2]


def test_early_stop_ends_the_worker():
    before = {t for t in threading.enumerate() if t.name == "pkd-prefetch"}
    it = prefetch(lambda x: x, iter(range(10_000)), depth=1)
    assert next(it) == 0
    it.close()  # the consumer breaks out of its loop
    alive = [t for t in threading.enumerate() if t.name == "pkd-prefetch" and t not in before]
    assert not alive


def test_overlaps_work_with_the_consumer():
    """Two 20 ms steps per item (produce, consume) take ~20 ms per item when overlapped."""
    def slow(x):
        time.sleep(0.02)
        return x

    start = time.monotonic()
    for _ in prefetch(slow, range(10)):
        time.sleep(0.02)
    assert time.monotonic() - start < 0.35  # serial would take 0.4 s
