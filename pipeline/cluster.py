"""Scale-out of shard work units on dask.distributed.

``--workers N`` starts a ``LocalCluster`` of N single-threaded worker processes on this machine;
``--scheduler ADDR`` submits to an existing cluster (``dask scheduler`` + ``dask worker`` on the
nodes, all seeing the store's file system). Each task writes exactly one store shard, so tasks
never share a file; models are loaded once per worker process (see ``runner.cached``).

One :class:`DaskPool` serves a whole ``pkd extract`` call (every target of it), and starts its
cluster only when a stage has pending shards: starting workers and importing torch and
transformers on them costs seconds, a resumed run with nothing left to do costs none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from pkd.errors import PkdError

CONNECT_TIMEOUT_S = 10  # seconds to reach a --scheduler before giving up


NO_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"  # unset for workers

class DaskPool:
    """A dask client for one extraction: connected on first use, closed on exit."""

    def __init__(self, workers: int = 0, scheduler: str | None = None):
        self.workers, self.scheduler = workers, scheduler
        self._client = self._cluster = None

    def __enter__(self) -> DaskPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self):
        from dask.distributed import Client, LocalCluster  # dask: loaded only when a cluster starts

        if self._client is not None:
            return self._client
        if self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as err:
                raise PkdError(f"--scheduler {self.scheduler}: cannot connect ({err})") from None
        else:
            import dask  # dask: loaded only when a cluster starts

            # dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc
            # map and zero-fill every large tensor afresh (measured: ~1.5x slower model work)
            with dask.config.set({NO_TRIM: None}):
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                             processes=True, dashboard_address=None,
                                             silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        return self._client

    def map(self, fn: Callable, calls: Sequence[tuple]) -> Iterator:
        """``fn(*args)`` for each ``args`` in ``calls`` on the workers; results as they finish."""
        from dask.distributed import as_completed  # dask: loaded only when a cluster runs

        if not calls:
            return
        client = self._connect()
        futures = [client.submit(fn, *args, pure=False) for args in calls]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)  # a failed shard stops the others (no-op when all are done)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
