"""``pkd extract teacher CONFIG.yaml``: cache the adapted DistillVLM teacher's signals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def teacher(
    config: Annotated[Path, typer.Argument(help="the student's distillvlm config (YAML)")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="dotted key=value overrides")] = None,
    out: Annotated[str | None, typer.Option(help="store to write (default data.teacher)")] = None,
    overwrite: Annotated[bool, typer.Option(help="delete an existing store first")] = False,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    codec: Annotated[str, typer.Option(
        help="none (read as mmap views: fastest reads) | lz4 (smaller)")] = "none",
) -> None:
    """Run the frozen adapted teacher over the training split into a teacher store."""
    from pkd.train.config_load import load_config  # torch: loaded only when the command runs
    from pkd.train.teacher_extract import extract_teacher  # torch: only when the command runs

    path = extract_teacher(load_config(config, overrides or []), out, overwrite, device=device,
                           compression=codec)
    typer.echo(f"teacher store written: {path}")
