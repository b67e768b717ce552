"""The demo's runs in parallel processes (``pkd demo --jobs N``), safe beside other invocations.

A demo is a list of tasks ``(method, seed)``; a task trains its run (and the runs it builds on,
:func:`pkd.demo.needs`) and scores it. Small models leave cores idle (a training process uses
one compute thread on 2 cores, measured: two runs side by side take about the time of one), so
``jobs`` worker processes take tasks in the table's order, each with ``threads_per_job``
torch threads.

Two processes never work on the same run or cache store: each holds an exclusive
``fcntl.flock`` on ``OUT/locks/<name>.lock`` while it trains and scores a run or fills a cache
store, and whoever comes second waits, then finds the work done and skips it. The locks also
cover separate ``pkd demo`` invocations on one folder (e.g. two with disjoint ``--methods``).
Locks are per machine: on a shared file system across nodes use one invocation per node and
folder. A process that dies releases its locks (the kernel drops them with the file).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

from pkd.cores import usable_cores
from pkd.errors import PkdError


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads of each of ``jobs`` processes: ``cores / jobs - 1`` (a core for each
    process's data thread), at least 1."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, jobs) - 1)


@contextmanager
def locked(out: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock ``OUT/locks/<name>.lock`` for the block (wait while another
    process holds it)."""
    import fcntl  # fcntl: POSIX only, so pkd.demo imports everywhere

    folder = Path(out) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def run_tasks(tasks: list, jobs: int, work: Callable, *args) -> list:
    """``[work(*args, *task) for task in tasks]`` in ``jobs`` spawned processes (in this one
    when ``jobs`` is 1), results in the order of ``tasks``; the first error is raised after
    the tasks already started have finished. A worker that dies (killed, out of memory) stops
    the pool: one-line :class:`PkdError`; each run resumes from its last checkpoint when the
    same command is run again (the dead worker's locks went with it)."""
    if jobs <= 1:
        return [work(*args, *task) for task in tasks]
    context = multiprocessing.get_context("spawn")  # no forked torch / OpenMP state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(work, *args, *task) for task in tasks]
        try:
            return [f.result() for f in futures]
        except BrokenProcessPool as err:
            raise PkdError(f"a demo worker process died ({err}); run the same command again "
                           "to resume from the last checkpoints") from err
        except BaseException:
            for f in futures:
                f.cancel()
            raise
