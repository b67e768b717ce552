"""The demo's evaluated rows of one finished run, kept beside it (``RUN/demo_rows.json``).

Evaluating a run (predicting three splits and scoring them officially) costs ~14 s at the full
size, and every resumed ``pkd demo --preset full`` evaluated all 80 runs again (~19 min) before
printing its table. A run's rows are a function of its checkpoint and of the split files only,
so they are reused while this key is unchanged::

    key = sha256(ROWS_VERSION, RUN/done (mtime_ns), RUN/best/latest.json (text),
                 for each split file: (name, size, mtime_ns))

A retrained run (a new ``done`` marker, another best checkpoint), a regenerated split or a
new ``ROWS_VERSION`` (bump it when what a row holds or how it is scored changes) recomputes the
rows; the file is replaced atomically, so an interrupted write leaves the old rows or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

ROWS_VERSION = "2"  # 2: rows carry perQuestionType
ROWS_FILE = "demo_rows.json"


def rows_key(run: Path, inputs: Sequence[Path]) -> str:
    """The key above for ``run`` scored on the files ``inputs`` (module doc)."""
    h = hashlib.sha256(ROWS_VERSION.encode())
    done, best = run / "done", run / "best" / "latest.json"
    h.update(str(done.stat().st_mtime_ns if done.is_file() else -1).encode())
    h.update(best.read_bytes() if best.is_file() else b"-")
    for path in inputs:
        st = Path(path).stat()
        h.update(f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cached_rows(run: Path, inputs: Sequence[Path], compute: Callable[[], list[dict]]
                ) -> list[dict]:
    """``RUN/demo_rows.json``'s rows if their key matches, else ``compute()`` saved there."""
    path = run / ROWS_FILE
    key = rows_key(run, inputs)
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["rows"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no rows yet, or a damaged file: evaluate again
    rows = compute()
    tmp = path.with_name(f".{ROWS_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "rows": rows}))
    os.replace(tmp, path)
    return rows
