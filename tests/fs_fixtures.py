"""Real broken file systems for the tests: a full or a read-only tmpfs, mounted where the tests
run as root (as in CI); elsewhere the tests that need one are skipped with the reason."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(where: Path, size_kib: int = 64, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` mounted at ``where`` (created) for the block, read-only if asked;
    skips the test when mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full (unbuffered: nothing left to flush)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` (with its files) made read-only for the block by a read-only bind mount of
    itself; skips the test when mounting is not permitted."""
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.strip() or 'not root'})")
    try:
        again = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)],
                               capture_output=True, text=True, check=False)
        if again.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({again.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
