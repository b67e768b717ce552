"""``pkd extract predicted CONFIG.yaml``: cache PKD's frozen stage-1 predictions for stage 2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def predicted(
    config: Annotated[Path, typer.Argument(help="the stage-2 pkd config (YAML)")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="dotted key=value overrides")] = None,
    out: Annotated[str | None, typer.Option(
        help="store to write (default data.predicted; with --split S: <stem>-S.zarr beside "
             "it)")] = None,
    overwrite: Annotated[bool, typer.Option(help="delete an existing store first")] = False,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    split: Annotated[str | None, typer.Option(
        help="split to predict (default: the training split, what stage 2 reads; another "
             "split for the probes and model.foundation_inputs=predicted)")] = None,
) -> None:
    """Run the frozen predictors and foundation head over the training split into a predicted
    store (stage 2 then reads it instead of running them every step)."""
    from pkd.train.config_load import load_config  # torch: loaded only when the command runs
    from pkd.train.predicted_extract import extract_predicted  # torch: only when the command runs

    path = extract_predicted(load_config(config, overrides or []), out, overwrite, device=device,
                             split=split)
    typer.echo(f"predicted store written: {path}")
