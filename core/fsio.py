"""File-system writes that never leave half a file, and one line for every file-system error.

- :func:`write_atomic` / :func:`write_json` write through a temporary file in the target's
  folder, ``fsync`` and ``os.replace``: a reader (or a crash, or a full disk) sees the old file
  or the new one, never a truncated one beside complete ones.
- :func:`check_writable` tries a folder before long work starts (``evaluate``, ``demo``,
  ``resplit``), so a read-only or full output is refused in the first second, not after an hour.
- :func:`os_error_line` turns an ``OSError`` a user can fix (no space, read-only, permission,
  is a directory, not a directory, exists) into ``<path>: <problem> (<what to do>)``; the CLI
  prints it as one ``error:`` line.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

from pkd.errors import PkdError

# errno -> (problem, what to do). Only errors a user fixes on their side; others stay tracebacks.
_FIXABLE = {
    errno.ENOSPC: ("no space left on the device", "free space or choose another output"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another output"),
    errno.EROFS: ("read-only file system", "choose a writable output"),
    errno.EACCES: ("permission denied", "check the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check the permissions or choose another path"),
    errno.EISDIR: ("is a folder, a file was expected", "give a file path"),
    errno.ENOTDIR: ("a part of the path is a file, a folder was expected", "give a folder path"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
}


_OUTPUT: list[Path] = []  # the output folder the command checked last (check_writable)


def os_error_line(err: OSError, fallback: str | Path | None = None) -> str | None:
    """``<path>: <problem> (<what to do>)`` for an ``OSError`` a user can fix, else None.
    ``fallback``: the path to name when the error has none (a write to an open file that hit a
    full disk names no file); default: the output folder last given to :func:`check_writable`."""
    if err.errno not in _FIXABLE:
        return None
    problem, todo = _FIXABLE[err.errno]
    if fallback is None and _OUTPUT:
        fallback = _OUTPUT[-1]
    path = err.filename if err.filename is not None else fallback
    return f"{path if path is not None else '(unknown path)'}: {problem} ({todo})"


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in its folder and ``os.replace``.

    A failure (full disk, read-only folder) removes the temporary file and leaves any previous
    ``path`` as it was; the ``OSError`` names ``path``.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise type(err)(err.errno, err.strerror, str(path)) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise type(err)(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj, indent: int | None = None, **dumps) -> Path:
    """``json.dumps(obj)`` (plus a newline when indented) written atomically to ``path``."""
    text = json.dumps(obj, indent=indent, **dumps)
    return write_atomic(path, text + "\n" if indent is not None else text)


def check_writable(folder: Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and write + remove a probe file in it; PkdError (one line
    naming the folder) when it is a file, read-only, not permitted or full. The folder is then
    the path a later nameless ``OSError`` (a full disk mid-write) is reported against."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PkdError(f"{folder}: {what} is a file, a folder was expected (give a folder path)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".pkd-write-probe.")
        try:
            os.write(fd, b"0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        problem = line.split(": ", 1)[1]
        raise PkdError(f"{folder}: {what} is not writable: {problem}") from err
    _OUTPUT[:] = [folder]
    return folder
