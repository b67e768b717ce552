"""Scale-out: foundation image extraction in-process vs 1 and 2 dask workers, and via a scheduler.

Model: a small random CLIP (``common.SMALL``: 224 px, patch 16, vision width 256, 4 layers; the
work per image is a ViT forward, as with the real model, only ~20x cheaper) over ``--images``
synthetic 224 px PNGs, ``--per-shard`` images per work unit (= store shard, = dask task).

Configurations, each with pkd's own thread rule (``RunOptions(threads=0)``: in-process
cores - 1, LocalCluster workers cores // workers each, ``--scheduler`` workers their own
setting, which dask's nanny sets to OMP_NUM_THREADS=1):

* in-process (``workers=0``);
* ``--workers 1`` and ``--workers 2`` (``LocalCluster``, what ``pkd extract --workers`` starts);
* ``--workers 2`` again with dask's ``MALLOC_TRIM_THRESHOLD_=65536`` removed from the workers'
  environment (steady time only; see :func:`no_trim_row`);
* ``--scheduler``: a ``dask scheduler`` + ``dask worker --nworkers 2 --nthreads 1`` started here as
  subprocesses on 127.0.0.1 (stopped at the end; every wait is bounded), the workers with
  ``DASK_CONFIG=configs/dask`` (no ``MALLOC_TRIM_THRESHOLD_``), as the README tells users to.

Two times per configuration:

* *steady*: :func:`pkd.pipeline.runner.run_stage` on an already-connected pool whose workers
  already hold the model (the cluster start and the model load on the workers are measured
  before, as *start* and *warm*);
* *end-to-end*: a fresh ``extract_foundation(..., targets=("images",))`` call, what the command
  costs: cluster start, model load in the driver and on every worker, compute, write (the
  ``--scheduler`` row excludes starting the scheduler and worker processes, shown as *start*).

Speed-up = 1-worker time / 2-worker time. Run:
``python benchmarks/bench_scaleout.py [--images 1024 --per-shard 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common import SMALL, build_clip, machine, make_synth, print_table, timed

from pkd.pipeline.cluster import DaskPool
from pkd.pipeline.extract import FoundationRecipe, build_foundation_stage, extract_foundation
from pkd.pipeline.runner import (
    RunOptions,
    auto_threads,
    cached,
    join_session,
    new_session,
    run_stage,
)
from pkd.pipeline.sources import SourceConfig

START_TIMEOUT_S = 60  # bound on every wait for the external scheduler / workers


def warm(recipe: FoundationRecipe, session: str) -> None:
    """On a worker: join the driver's session and build the stage (load the model) once."""
    join_session(session)
    cached(recipe, build_foundation_stage)


def steady(recipe, out: Path, opts: RunOptions, session: str, pool) -> tuple[float, float]:
    """(warm-up seconds on the workers, seconds of run_stage on the warm pool)."""
    t_warm = 0.0
    if pool is not None:
        client = pool._connect()  # the client the runs below use
        t_warm, _ = timed(lambda: client.run(warm, recipe, session))
    report = run_stage(recipe, build_foundation_stage, out, opts, "images", pool, session)
    assert not report.failures and report.shards_skipped == 0
    return t_warm, report.seconds


def local_row(recipe, root: Path, workers: int, session: str, per_shard: int) -> dict:
    """Steady and end-to-end times of the in-process (0) or a LocalCluster configuration."""
    opts = RunOptions(workers=workers, overwrite=True, items_per_shard=per_shard)
    start = t_warm = 0.0
    if workers:
        with DaskPool(workers) as pool:
            start, _ = timed(pool._connect)
            t_warm, t_steady = steady(recipe, root / f"w{workers}.zarr", opts, session, pool)
    else:
        _, t_steady = steady(recipe, root / "w0.zarr", opts, session, None)
    t_e2e, _ = timed(lambda: extract_foundation(recipe, root / f"e2e{workers}", opts,
                                                targets=("images",)))
    join_session(session)  # extract_foundation started its own session in this process
    threads = auto_threads(workers) if workers else auto_threads()
    label = f"--workers {workers}" if workers else "in-process"
    return {"config": label, "threads/proc": threads, "start s": start, "warm s": t_warm,
            "steady s": t_steady, "end-to-end s": t_e2e}


def no_trim_row(recipe, root: Path, workers: int, session: str, per_shard: int) -> dict:
    """Steady time of a LocalCluster whose workers run without ``MALLOC_TRIM_THRESHOLD_``.

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (and writes it into the
    driver's own ``os.environ``, so every later worker gets it even if the config drops it).
    glibc then stops adapting its mmap threshold and every large tensor is a fresh mmap:
    page faults and zero-filling. Here the variable is unset in the config (None) and in
    ``os.environ`` while the workers start, and restored afterwards.
    """
    import dask.distributed  # registers the distributed.* config defaults

    key = "MALLOC_TRIM_THRESHOLD_"
    before = os.environ.pop(key, None)
    opts = RunOptions(workers=workers, overwrite=True, items_per_shard=per_shard)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{key}": None}), \
                DaskPool(workers) as pool:
            start, _ = timed(pool._connect)
            client = pool._connect()
            assert all(v is None for v in client.run(os.environ.get, key).values())
            t_warm, t_steady = steady(recipe, root / f"w{workers}_notrim.zarr", opts, session,
                                      pool)
    finally:
        os.environ.pop(key, None)
        if before is not None:
            os.environ[key] = before
    return {"config": f"--workers {workers}, no {key}", "threads/proc": auto_threads(workers),
            "start s": start, "warm s": t_warm, "steady s": t_steady, "end-to-end s": float("nan")}


NO_TRIM_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dask"


@contextmanager
def external_cluster(root: Path, workers: int):
    """A ``dask scheduler`` + ``dask worker`` on 127.0.0.1 as subprocesses; yields the address."""
    dask = str(Path(sys.executable).with_name("dask"))
    info = root / "scheduler.json"
    logs = [open(root / name, "w") for name in ("scheduler.log", "worker.log")]  # noqa: SIM115
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)],
                              stdout=logs[0], stderr=subprocess.STDOUT, cwd=root)]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not info.is_file() or not info.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"dask scheduler did not start (see {root}/scheduler.log)")
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen(
            [dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
             "--no-dashboard", "--local-directory", str(root / "dask-worker")],
            stdout=logs[1], stderr=subprocess.STDOUT, cwd=root,
            env={**os.environ, "DASK_CONFIG": str(NO_TRIM_CONFIG)}))
        from dask.distributed import Client

        with Client(address, timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(workers, timeout=START_TIMEOUT_S)
        yield address
    finally:
        for proc in reversed(procs):  # only the processes started here, by their handle
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in logs:
            log.close()


def scheduler_row(recipe, root: Path, workers: int, session: str, per_shard: int) -> dict:
    """Steady and end-to-end times through ``--scheduler`` (external processes)."""
    start = time.perf_counter()
    with external_cluster(root, workers) as address:
        start = time.perf_counter() - start
        opts = RunOptions(scheduler=address, overwrite=True, items_per_shard=per_shard)
        with DaskPool(scheduler=address) as pool:
            t_warm, t_steady = steady(recipe, root / "sched.zarr", opts, session, pool)
        t_e2e, _ = timed(lambda: extract_foundation(recipe, root / "e2e_sched", opts,
                                                    targets=("images",)))
    join_session(session)
    return {"config": f"--scheduler ({workers} workers)", "threads/proc": 1, "start s": start,
            "warm s": t_warm, "steady s": t_steady, "end-to-end s": t_e2e}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="synthetic 224 px images")
    parser.add_argument("--per-shard", type=int, default=32, help="images per shard / task")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--cache", type=Path, help="keep model + data here between runs")
    parser.add_argument("--no-scheduler", action="store_true", help="skip the external cluster")
    parser.add_argument("--no-trim-row", action="store_true",
                        help="skip the --workers 2 row without MALLOC_TRIM_THRESHOLD_")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = args.cache or root
        model = build_clip(cache / "clip_small", SMALL)
        data = make_synth(cache / f"synth_{args.images}", args.images, SMALL.image_size)
        recipe = FoundationRecipe(SourceConfig(data, splits=("train",)), str(model),
                                  batch_size=args.batch)
        session = new_session()
        rows = [local_row(recipe, root, w, session, args.per_shard) for w in (0, 1, 2)]
        if not args.no_trim_row:
            rows.append(no_trim_row(recipe, root, 2, session, args.per_shard))
        if not args.no_scheduler:
            work = root / "external"
            work.mkdir()
            rows.append(scheduler_row(recipe, work, 2, session, args.per_shard))
            shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


def report(rows: list[dict], args) -> None:
    base = {k: rows[1][k] for k in ("steady s", "end-to-end s")}  # --workers 1
    for row in rows:
        row["images/s steady"] = args.images / row["steady s"]
        row["speed-up steady"] = base["steady s"] / row["steady s"]
        row["speed-up e2e"] = base["end-to-end s"] / row["end-to-end s"]
    shards = -(-args.images // args.per_shard)
    print(f"bench_scaleout: {args.images} images 224 px, small CLIP (vision 256 wide, 4 layers, "
          f"random weights), {shards} shards of {args.per_shard}, batch {args.batch}; "
          "speed-up relative to --workers 1")
    print(machine())
    print_table(rows, "config")


if __name__ == "__main__":
    main()
