"""The output folder ``OUT/``: written complete into a staging folder, then moved into place.

``OUT/`` holds the ``save_pretrained`` files of model, tokenizer and image processor (loadable
as ``load_foundation(FoundationSpec(OUT))``) and ``pretrain_metrics.json``. The staging folder's
files are flushed to disk, then it replaces ``OUT/`` with renames
(:mod:`pkd.train.checkpoint`'s atomic move): a crash leaves the earlier output or the new one.
Only nothing, an empty folder or an earlier pretrain output (it has the metrics file) is
replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pkd.errors import PkdError
from pkd.train.checkpoint import _fsync_files, _move_into_place

METRICS_FILE = "pretrain_metrics.json"


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or an earlier pretrain output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PkdError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METRICS_FILE).exists():
        raise PkdError(f"{out_dir}: folder is not empty and holds no earlier pretrain output")


def save_model(model, init_dir: Path, staging: Path, out_dir: Path, metrics: dict) -> None:
    """Write model + the builder's tokenizer / processor files + metrics into ``staging``, then
    move it to ``out_dir`` (an earlier output is replaced only once all is written).
    The weights go into a fresh folder: ``init_dir``'s may still be memory-mapped."""
    shutil.copytree(init_dir, staging, ignore=shutil.ignore_patterns("*.safetensors",
                                                                      "config.json"))
    model.eval().save_pretrained(staging)
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _fsync_files(staging)
    check_out_dir(out_dir)
    _move_into_place(staging, out_dir)
