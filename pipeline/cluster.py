"""Scale-out of shard work units on dask.distributed.

``--workers N`` starts a ``LocalCluster`` of N single-threaded worker processes on this machine;
``--scheduler ADDR`` submits to an existing cluster (``dask scheduler`` + ``dask worker`` on the
nodes, all seeing the store's file system). Each task writes exactly one store shard, so tasks
never share a file; models are loaded once per worker process (see ``runner.cached``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def map_shards(fn, recipe, build, out: Path, opts, shards: list[int]) -> Iterator:
    """Run ``fn(recipe, build, out, opts, k)`` for each shard on dask; yield results as they finish."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if opts.scheduler:
        client = Client(opts.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=opts.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        futures = [client.submit(fn, recipe, build, out, opts, k, pure=False) for k in shards]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
