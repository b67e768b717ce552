"""Run a stage over the pending shards of its store: in-process, one slice, or on dask.

A *recipe* is a small picklable description of a stage (its config); ``build`` turns it into a
live stage (model loaded). Each process keeps the stages it built for the current *session* (one
``pkd extract`` call, every target of it), so a dask worker loads the model once per call and
then runs many shards; a new session drops them, so a checkpoint changed in place between two
calls is never served stale from memory. The store's writer decides what is pending: a re-run
skips shards with a done record, so an interrupted run resumes where it stopped and gives the
same bytes as an uninterrupted one (shard boundaries and batches inside a shard are fixed; keep
the number of torch threads fixed too, e.g. ``--threads 1``, where bit-identical floats matter).

``retry_failed`` re-runs only the items recorded as failed (an image fixed or added since): each
done shard whose record lists failures is read back, its failed ids are computed again (in their
own batches) and the whole shard is rewritten with the same owner rule as any write (one writer
per shard), the other rows unchanged. Items that fail again are recorded again.

CPU threads: torch's default (one intra-op thread per core) oversubscribes the cores as soon as
the image-decoding thread or another process runs beside it, and its OpenMP workers then spin
instead of computing (measured 10-20x slower on 2 cores). A run therefore uses ``usable cores -
1`` threads in-process and ``cores // workers`` per LocalCluster worker, unless ``threads`` says;
the workers of a ``--scheduler`` cluster keep their own setting (dask's nanny starts them with
``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pkd.cores import torch_threads, usable_cores
from pkd.errors import PkdError
from pkd.pipeline.cluster import DaskPool
from pkd.pipeline.events import span
from pkd.pipeline.stages import kept_ids, shard_inputs
from pkd.progress import track
from pkd.stores import Failure, StoreWriter
from pkd.stores.records import failures_of, read_records

_LOCK = threading.RLock()  # guards the session (build_foundation_stage nests cached calls)
_SESSION: dict = {"id": None, "stages": {}, "writers": {}}  # this process's live objects


@dataclass(frozen=True)
class RunOptions:
    part: tuple[int, int] | None = None  # (i, n): only shards k with k % n == i (cluster slice)
    workers: int = 0  # >0: a dask.distributed LocalCluster with this many worker processes
    scheduler: str | None = None  # address of an existing dask scheduler (tcp://host:8786)
    overwrite: bool = False  # delete an existing store and start over
    retry_failed: bool = False  # also re-run the failed items of done shards (the rest is kept)
    items_per_shard: int = 512  # rows per work unit (= Zarr shard)
    items_per_chunk: int = 16  # rows per compressed chunk inside a shard (capped at the shard)
    threads: int = 0  # torch CPU threads per process; 0 = auto (see the module doc)
    codec: str = "none"  # a new store's chunk codec: none | lz4 (pkd.stores.writer.codec)


@dataclass
class RunReport:
    store: Path  # the store written
    shards_run: int = 0  # shards computed by this run
    shards_skipped: int = 0  # shards of the slice already done (resume)
    items_run: int = 0  # rows computed by this run
    failures: list[Failure] = field(default_factory=list)  # failed items of the shards run
    earlier_failures: list[Failure] = field(default_factory=list)  # of the skipped shards
    setup_seconds: float = 0.0  # building the stage (imports, model loading) and the store
    seconds: float = 0.0  # computing and writing the shards


def new_session() -> str:
    """Start a session in this process (dropping the stages of the last one); its id."""
    session = uuid.uuid4().hex
    join_session(session)
    return session


def join_session(session: str) -> None:
    """Make ``session`` current in this process (a dask worker joins the driver's)."""
    with _LOCK:
        if _SESSION["id"] != session:
            _SESSION.update(id=session, stages={}, writers={})


def cached(key: Hashable, build: Callable[[Hashable], object]):
    """``build(key)``, built once per process and session."""
    with _LOCK:  # a dask worker with several threads builds each stage once
        stages = _SESSION["stages"]
        if key not in stages:
            stages[key] = build(key)
        return stages[key]


def auto_threads(workers: int = 0) -> int:
    """Torch threads per process: cores - 1 (one left for image decoding and the store writes),
    split evenly between ``workers`` processes (each has its own decode thread too)."""
    return max(1, (usable_cores() - 1) // max(1, workers))


def _spec_of(stage, opts: RunOptions):
    return dataclasses.replace(stage.spec(), items_per_shard=opts.items_per_shard,
                               items_per_chunk=min(opts.items_per_chunk, opts.items_per_shard))


def shard_job(stage, writer: StoreWriter, k: int, retry: Sequence[int] = (),
              computed: tuple[dict, list[Failure]] | None = None) -> Callable[[], list[Failure]]:
    """Compute shard ``k`` with ``stage`` now (or take its ``computed`` arrays and failures);
    return the write of it (done record last) as a call that gives the failures recorded.
    ``retry``: ids of a done shard to compute again, keeping its other rows as stored."""
    inputs = functools.partial(shard_inputs, stage, writer.shard_ids(k))
    if not len(retry):
        arrays, failures = computed or stage.run(writer.shard_ids(k))
        return functools.partial(_write, writer, k, arrays, failures, None, inputs)
    arrays, ok = writer.read_shard(k)
    pos = np.searchsorted(writer.shard_ids(k), np.asarray(retry, dtype=np.int64))
    fresh, failures = stage.run(writer.shard_ids(k)[pos])
    for name, a in arrays.items():
        a[pos] = fresh[name]
    ok[pos] = True  # write_shard clears the rows that failed again
    return functools.partial(_write, writer, k, arrays, failures, ok, inputs)


def _write(writer: StoreWriter, k: int, arrays, failures, ok, inputs) -> list[Failure]:
    with span("write", k):
        return writer.write_shard(k, arrays, failures, ok=ok, inputs=inputs)


def compute_shard(stage, writer: StoreWriter, k: int, retry: Sequence[int] = ()) -> list[Failure]:
    """Compute shard ``k`` and write it; the failures recorded."""
    return shard_job(stage, writer, k, retry)()


def compute_overlapped(stage, writer: StoreWriter, shards: Sequence[int],
                       retry: dict[int, Sequence[int]]) -> Iterator[list[Failure]]:
    """The failures of each shard in ``shards``, in order; shard k is written by a writer
    thread while shard k+1 computes (one write in flight: at most two shards in memory). A
    kill at any moment leaves shards without a done record, recomputed on resume."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkd-write") as pool:
        writing = None
        for k, computed in zip(shards, _streamed(stage, writer, shards, retry), strict=True):
            write = shard_job(stage, writer, k, retry.get(k, ()), computed)
            if writing is not None:
                yield writing.result()
            writing = pool.submit(write)
        if writing is not None:
            yield writing.result()


def _streamed(stage, writer: StoreWriter, shards: Sequence[int], retry: dict
              ) -> Iterator[tuple[dict, list[Failure]] | None]:
    """Per shard: its arrays and failures from the stage's one stream over every shard
    (``run_many``: images decoded across shard boundaries), or None to compute it alone
    (a stage without ``run_many``, or a run that retries failed ids)."""
    run_many = getattr(stage, "run_many", None)
    if run_many is None or retry:
        yield from (None for _ in shards)
        return
    yield from run_many([writer.shard_ids(k) for k in shards])


def check_inputs(stage, writer: StoreWriter, records: dict[int, dict]) -> None:
    """Refuse to resume when a done shard's inputs changed since it was written: its recorded
    listing digest (file names, sizes, modification times of the items that did not fail)
    differs from the files now."""
    for k in sorted(records):
        saved = records[k].get("inputs", {}).get("stat")
        if saved is None or getattr(stage, "inputs", None) is None:
            continue
        failed = [f["id"] for f in records[k]["failures"]]
        now = stage.inputs(kept_ids(writer.shard_ids(k), failed), False)
        if now != saved:
            raise PkdError(f"{writer.path}: shard {k} was extracted from other inputs (listing "
                           f"digest {saved[:12]}… recorded, {now[:12]}… now: images or texts "
                           "changed since); re-extract with --overwrite")


def retry_ids(records: dict[int, dict], shards: Sequence[int]) -> dict[int, list[int]]:
    """``{shard: its recorded failed ids}`` for the done ``shards`` that have failures."""
    return {k: sorted(int(f["id"]) for f in records[k]["failures"])
            for k in shards if k in records and records[k]["failures"]}


def run_shard(recipe: Hashable, build: Callable, out: Path, opts: RunOptions, k: int,
              session: str, retry: Sequence[int] = ()) -> list[Failure]:
    """Shard ``k`` of the store at ``out`` in a worker process (stage and writer kept for the
    session)."""
    join_session(session)
    stage = cached(recipe, build)
    with _LOCK:
        writers = _SESSION["writers"]
        if (str(out), recipe) not in writers:
            writers[str(out), recipe] = StoreWriter(out, _spec_of(stage, opts), stage.ids,
                                                    compression=opts.codec)
        writer = writers[str(out), recipe]
    if opts.threads > 0:
        import torch  # torch: loaded only when a shard runs

        torch.set_num_threads(opts.threads)
    return compute_shard(stage, writer, k, retry)


def shard_pool(opts: RunOptions):
    """The dask pool of a run (``workers`` / ``scheduler``), else a no-op context (None)."""
    if opts.workers or opts.scheduler:
        return DaskPool(opts.workers, opts.scheduler)
    return nullcontext()


def run_stage(recipe: Hashable, build: Callable, out: Path, opts: RunOptions, label: str,
              pool=None, session: str | None = None) -> RunReport:
    """Create/open the store at ``out`` and run every pending shard of its slice, in this
    process or on ``pool`` (a :class:`~pkd.pipeline.cluster.DaskPool`, see :func:`shard_pool`).
    ``session``: of the calling :func:`new_session` (default: a new one)."""
    session = session or new_session()
    start = time.monotonic()
    out = Path(out)
    stage = cached(recipe, build)
    writer = StoreWriter(out, _spec_of(stage, opts), stage.ids, overwrite=opts.overwrite,
                         compression=opts.codec)
    records = read_records(out)
    check_inputs(stage, writer, records)
    pending = writer.pending(opts.part, retry_failed=opts.retry_failed)
    retry = retry_ids(records, pending)  # empty unless retry_failed
    i, n = opts.part or (0, 1)
    skipped = [k for k in range(i, writer.n_shards, n) if k not in pending]
    setup_done = time.monotonic()
    report = RunReport(out, shards_skipped=len(skipped), setup_seconds=setup_done - start,
                       items_run=sum(len(retry[k]) if k in retry else len(writer.shard_rows(k))
                                     for k in pending),
                       earlier_failures=failures_of({k: records[k] for k in skipped}))
    if pool is not None:
        threads = opts.threads or (auto_threads(opts.workers) if not opts.scheduler else 0)
        remote = dataclasses.replace(opts, threads=threads, overwrite=False)
        results = pool.map(run_shard, [(recipe, build, out, remote, k, session, retry.get(k, ()))
                                       for k in pending])
        for failures in track(results, total=len(pending), description=label):
            report.failures += failures
            report.shards_run += 1
    else:
        with torch_threads(opts.threads or auto_threads()):
            done = compute_overlapped(stage, writer, pending, retry)
            for failures in track(done, total=len(pending), description=label):
                report.failures += failures
                report.shards_run += 1
    report.seconds = time.monotonic() - setup_done
    return report
