"""The demo's rows: one YAML file each in ``configs/rows/`` (method plus settings), read here.

A row file extends ``_base.yaml`` (the settings every UpDn-sized run shares), ``_vlm.yaml``
(PKD's own setting: ``D`` = the demo's ``F0`` fine-tuned) or another row, and names the demo's
layout with variables (:mod:`pkd.train.config_files`): ``${draw}`` the data draw's folder,
``${seed}`` the training seed, ``${epochs}`` and the other budgets of the preset
(:func:`pkd.demo.config.row_vars`). ``pkd train configs/rows/lmh.yaml`` runs a row by itself after
``pkd demo --out demo_out`` (the defaults in ``_base.yaml``: quick size, draw 0, seed 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pkd.errors import PkdError
from pkd.train.config_files import read_config_file

if TYPE_CHECKING:
    from pkd.train.config import TrainConfig

ROWS_DIR = Path(__file__).resolve().parents[2] / "configs" / "rows"  # the repository's rows


def row_names(rows_dir: Path = ROWS_DIR) -> tuple[str, ...]:
    """Every row with a file (``_*.yaml`` are shared parents, not rows), sorted."""
    return tuple(sorted(p.stem for p in rows_dir.glob("*.yaml") if not p.stem.startswith("_")))


def row_file(name: str, rows_dir: Path = ROWS_DIR) -> Path:
    path = rows_dir / f"{name}.yaml"
    if not path.is_file():
        raise PkdError(f"{path}: no such row (rows: {', '.join(row_names(rows_dir))})")
    return path


def needs(name: str, rows_dir: Path = ROWS_DIR) -> tuple[str, ...]:
    """The rows whose runs ``name`` reads (its file's ``needs``, else its parent's)."""
    return tuple(read_config_file(row_file(name, rows_dir)).needs)


def row_config(name: str, variables: dict, extra: dict | None = None) -> TrainConfig:
    """The run config of row ``name`` with its file's variables set to ``variables``
    (:func:`pkd.demo.config.row_vars`; ``extra``: dotted keys set on top, e.g. ``run.threads``)."""
    from pkd.train.config_load import config_from_dict  # torch: only when a row's config is built

    path = row_file(name)
    data = read_config_file(path).resolved(variables)
    for key, value in (extra or {}).items():
        *head, last = key.split(".")
        section = data
        for part in head:
            section = section.setdefault(part, {})
        section[last] = str(value) if isinstance(value, Path) else value  # YAML has no Path
    return config_from_dict(data, source=str(path))


def row_settings(name: str, prefix: str) -> dict:
    """The dotted keys under ``prefix`` (e.g. ``model.``) that row ``name``'s file and its
    parents set, variables not substituted: a row's settings to reuse elsewhere (benchmarks)."""
    flat: dict = {}

    def walk(data: dict, at: str) -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                walk(value, f"{at}{key}.")
            else:
                flat[f"{at}{key}"] = value

    walk(read_config_file(row_file(name)).data, "")
    return {k: v for k, v in flat.items() if k.startswith(prefix)}
