"""Where a transformers checkpoint comes from, and one-line reasons when loading fails.

Shared by extraction (``pkd.pipeline``) and the trainer (``pkd.train``), which must not import
each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from pkd.errors import PkdError


def resolve_model(model: str) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, local_files_only) for a directory or a hub id.

    A local directory loads with ``local_files_only``; a hub id does too when ``HF_HUB_OFFLINE``
    is set (cluster nodes without internet read the local hub cache).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise PkdError(f"{model}: not a model directory (and not a Hugging Face hub id)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return model, offline


def first_line(err: Exception) -> str:
    """The first line of an exception message (for one-line PkdErrors)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def quiet_loading() -> None:
    """No transformers progress bars ("Loading weights ...") unless the output is interactive:
    tqdm's carriage returns flood CI logs and pipes (same rule as :mod:`pkd.progress`)."""
    from pkd.progress import quiet_transformers

    quiet_transformers()
