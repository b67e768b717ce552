"""Run a stage over the pending shards of its store: in-process, one slice, or on dask.

A *recipe* is a small picklable description of a stage (its config); ``build`` turns it into a
live stage (model loaded). Each process keeps the stages it built in a cache, so a dask worker
loads the model once and then runs many shards. The store's writer decides what is pending: a
re-run skips shards with a done record, so an interrupted run resumes where it stopped and gives
the same bytes as an uninterrupted one (shard boundaries and batches inside a shard are fixed).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from pkd.progress import track
from pkd.stores import Failure, StoreWriter

_CACHE: dict[Hashable, object] = {}


@dataclass
class RunOptions:
    part: tuple[int, int] | None = None  # (i, n): only shards k with k % n == i (cluster slice)
    workers: int = 0  # >0: a dask.distributed LocalCluster with this many worker processes
    scheduler: str | None = None  # address of an existing dask scheduler (tcp://host:8786)
    overwrite: bool = False  # delete an existing store and start over
    items_per_shard: int = 512  # rows per work unit (= Zarr shard)
    items_per_chunk: int = 16  # rows per compressed chunk inside a shard


@dataclass
class RunReport:
    store: Path
    shards_run: int = 0
    shards_skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


def cached(recipe: Hashable, build: Callable[[Hashable], object]):
    """The live stage for ``recipe`` in this process, built once."""
    if recipe not in _CACHE:
        _CACHE[recipe] = build(recipe)
    return _CACHE[recipe]


def _spec_of(stage, opts: RunOptions):
    return dataclasses.replace(
        stage.spec(), items_per_shard=opts.items_per_shard, items_per_chunk=opts.items_per_chunk
    )


def run_shard(recipe: Hashable, build: Callable, out: Path, opts: RunOptions, k: int) -> list[Failure]:
    """Compute shard ``k`` of the store at ``out`` and write it (done record last)."""
    stage = cached(recipe, build)
    with StoreWriter(out, _spec_of(stage, opts), stage.ids) as writer:
        arrays, failures = stage.run(writer.shard_ids(k))
        writer.write_shard(k, arrays, failures)
    return list(failures)


def run_stage(recipe: Hashable, build: Callable, out: Path, opts: RunOptions, label: str) -> RunReport:
    """Create/open the store at ``out`` and run every pending shard of it."""
    start = time.monotonic()
    stage = cached(recipe, build)
    with StoreWriter(out, _spec_of(stage, opts), stage.ids, overwrite=opts.overwrite) as writer:
        pending = writer.pending(opts.part)
        i, n = opts.part or (0, 1)
        in_slice = len(range(i, writer.n_shards, n))
        report = RunReport(Path(out), shards_skipped=in_slice - len(pending))
    if opts.workers or opts.scheduler:
        from pkd.pipeline.cluster import map_shards

        results = map_shards(run_shard, recipe, build, Path(out), opts, pending)
    else:
        results = (run_shard(recipe, build, Path(out), opts, k) for k in pending)
    for failures in track(results, total=len(pending), description=label):
        report.failures += failures
        report.shards_run += 1
    report.seconds = time.monotonic() - start
    return report
