"""``prefetch``: results in order, computed at most ``depth`` ahead, errors surface at their item,
and a consumer that stops early stops the worker thread."""

from __future__ import annotations

import threading

import pytest

from pkd.prefetch import prefetch


def test_results_in_order():
    assert list(prefetch(lambda x: x * x, range(50), depth=3)) == [x * x for x in range(50)]
    assert list(prefetch(lambda x: x, [], depth=2)) == []


def test_runs_at_most_depth_ahead():
    """At most ``depth`` results queued plus one being computed: no read starts further ahead
    of the consumer. The consumer waits (an event, not a clock) until the worker has started
    the furthest read it may, so a worker that ran further would show it."""
    depth, n = 2, 30
    started = [threading.Event() for _ in range(n)]
    received, ahead = [0], []

    def work(x):
        ahead.append(x - received[0])  # how far ahead of the consumer this read starts
        started[x].set()
        return x

    for value in prefetch(work, range(n), depth=depth):
        assert value == received[0]
        received[0] += 1
        furthest = min(n - 1, value + depth + 1)
        assert started[furthest].wait(timeout=60), "the worker stopped reading ahead"
    assert max(ahead) <= depth + 1, ahead


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
    """The worker has read item k + 1 before the consumer finishes its step on item k.

    Checked by order of events, not by a clock: during step k the consumer waits for the
    worker's "read k + 1" event; a reader that only read on request (no overlap) would never
    set it while the consumer waits, and the wait would fail.
    """
    n = 8
    read = [threading.Event() for _ in range(n)]
    log: list[tuple[str, int]] = []

    def produce(x):
        log.append(("read", x))
        read[x].set()
        return x

    for x in prefetch(produce, range(n)):
        if x + 1 < n:
            assert read[x + 1].wait(timeout=60), f"item {x + 1} was not read during step {x}"
        log.append(("step done", x))
    for k in range(n - 1):
        assert log.index(("read", k + 1)) < log.index(("step done", k)), log
