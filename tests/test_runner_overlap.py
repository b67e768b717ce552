"""The in-process runner writes shard k while shard k+1 computes, keeps the shard order and the
bytes, and an error in a later shard still leaves the shard being written complete."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pkd.errors import PkdError
from pkd.pipeline.events import recording, span
from pkd.pipeline.runner import RunOptions, run_stage
from pkd.stores import ArraySpec, FeatureStore, StoreSpec
from pkd.stores.records import read_records

N, PER_SHARD = 24, 4


class SlowStage:
    """Rows ``id * [1, 2, 3]``; each shard's compute sleeps ``seconds``; ``fail_at`` raises."""

    kind = "regions"

    def __init__(self, seconds: float = 0.05, fail_at: int | None = None):
        self.ids = list(range(100, 100 + N))
        self.seconds, self.fail_at, self.batches = seconds, fail_at, 0

    def spec(self) -> StoreSpec:
        return StoreSpec(kind="regions", key="image_id", arrays=(ArraySpec("x", (3,), "float32"),),
                         producer={"stage": "toy"})

    def run(self, ids):
        with span("forward", self.batches):
            self.batches += 1
            if self.fail_at is not None and int(ids[0]) == self.fail_at:
                raise PkdError("toy: failed on purpose")
            time.sleep(self.seconds)
            return {"x": np.outer(np.asarray(ids, np.float32), [1, 2, 3]).astype(np.float32)}, []


def run(out, stage, recipe: str):
    opts = RunOptions(items_per_shard=PER_SHARD, items_per_chunk=2, threads=1)
    return run_stage(recipe, lambda _: stage, out, opts, "toy")


def test_writes_overlap_the_next_shards_compute_and_keep_the_bytes(tmp_path):
    with recording() as log:
        report = run(tmp_path / "a.zarr", SlowStage(), "overlap-a")
    assert report.shards_run == N // PER_SHARD
    store = FeatureStore.open(tmp_path / "a.zarr")
    assert store.complete
    np.testing.assert_array_equal(store.read(np.arange(N))["x"],
                                  np.outer(np.arange(100, 100 + N, dtype=np.float32), [1, 2, 3]))
    forward = sorted((e for e in log if e.kind == "forward"), key=lambda e: e.start)
    writes = {e.key: e for e in log if e.kind == "write"}
    assert sorted(writes) == list(range(N // PER_SHARD))
    assert all(e.thread.startswith("pkd-write") for e in writes.values())
    # the write of shard k starts before the compute of shard k+1 ends
    overlapping = [k for k in range(len(forward) - 1)
                   if writes[k].start < forward[k + 1].stop
                   and writes[k].stop > forward[k + 1].start]
    assert overlapping, [(e.kind, e.key, e.start, e.stop) for e in log]


def test_an_error_in_a_later_shard_leaves_the_earlier_ones_written(tmp_path):
    out = tmp_path / "b.zarr"
    with pytest.raises(PkdError, match="failed on purpose"):
        run(out, SlowStage(fail_at=100 + 3 * PER_SHARD), "overlap-b")
    assert sorted(read_records(out)) == [0, 1, 2]  # shard 2 was being written: finished
    report = run(out, SlowStage(), "overlap-c")  # resume: the rest
    assert report.shards_skipped == 3 and FeatureStore.open(out).complete
