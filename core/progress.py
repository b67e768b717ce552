"""Progress reporting that is pleasant on a terminal and quiet in CI logs.

On a terminal a rich progress bar is shown. Otherwise (CI, pipes, ``PKD_QUIET=1``) a plain status
line is logged at most every ``every_s`` seconds, plus one final line, so logs stay short.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("PKD_QUIET")


def track(
    items: Iterable[T], total: int | None = None, description: str = "working",
    every_s: float = 30.0,
) -> Iterator[T]:
    """Yield ``items`` while showing progress (rich bar, or plain lines every ``every_s`` s)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if _interactive():
        from rich.progress import track as rich_track  # rich: loaded only when a progress bar shows

        yield from rich_track(items, total=total, description=description, transient=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            print(f"{description}: {done}{of} ({now - start:.0f}s)", file=sys.stderr, flush=True)
    if done and time.monotonic() - start >= every_s:
        print(f"{description}: done {done} in {time.monotonic() - start:.0f}s", file=sys.stderr,
              flush=True)


def quiet_transformers() -> None:
    """No transformers progress bars ("Loading weights", "Writing model shards") unless the
    output is interactive: tqdm's carriage returns flood CI logs and pipes."""
    if _interactive():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers loads
    if "transformers" in sys.modules:  # already loaded: switch its bars off directly
        from transformers.utils import logging as hf_logging  # transformers: only if already loaded

        hf_logging.disable_progress_bar()
