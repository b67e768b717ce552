"""Where a transformers checkpoint comes from, and one-line reasons when loading fails.

Shared by extraction (``pkd.pipeline``) and the trainer (``pkd.train``), which must not import
each other.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from safetensors import SafetensorError

from pkd.errors import PkdError
from pkd.progress import quiet_transformers


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


def model_identity(model: str) -> str:
    """How provenance records a model: a local directory as its absolute, resolved path (so
    ``./clip``, ``clip/`` and ``/data/clip`` are one model), a hub id as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def load_errors() -> tuple[type[BaseException], ...]:
    """What ``from_pretrained`` raises for a broken checkpoint folder (a truncated or corrupt
    weights file, a malformed JSON file...): callers turn these into one-line PkdErrors."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError,
                                               TypeError, EOFError, pickle.UnpicklingError)
    try:
        errors += (SafetensorError,)
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        pass
    return errors


def first_line(err: BaseException) -> str:
    """The first line of an exception message (for one-line PkdErrors); a KeyError's key without
    the quotes ``str(KeyError)`` adds."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return (text.strip().splitlines() or [type(err).__name__])[0]


def quiet_loading() -> None:
    """No transformers progress bars ("Loading weights ...") unless the output is interactive:
    tqdm's carriage returns flood CI logs and pipes (same rule as :mod:`pkd.progress`)."""
    quiet_transformers()
