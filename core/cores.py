"""CPU cores this process may use, and torch's intra-op threads for one block of work.

``usable_cores()`` counts the cores of the process's affinity mask (what a batch scheduler,
``taskset`` or a container's cpuset leaves it), not the machine's: ``os.cpu_count()`` is only the
fallback where the platform has no affinity (macOS, Windows). Each caller derives its own thread
count from it (extraction and training leave one core for the data thread; caption pre-training
keeps its data in RAM and uses them all).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (n <= 0: unchanged), then restore."""
    import torch  # torch: loaded only when torch threads are set

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
