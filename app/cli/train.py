"""``pkd train CONFIG.yaml [key=value ...]``: one training run (baseline, PKD, DistillVLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.train.method_lines import methods_help


def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (defaults if omitted)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="dotted key=value overrides")] = None,
    resume: Annotated[bool, typer.Option(help="continue RUN/ckpt exactly")] = False,
) -> None:
    """Train from feature stores; checkpoints, metrics and curves go to run.out_dir."""
    from pkd.train.config_load import load_config  # torch: loaded only when the command runs
    from pkd.train.loop import fit  # torch: loaded only when the command runs

    if config is not None and "=" in str(config) and not config.exists():
        overrides, config = [str(config), *(overrides or [])], None
    result = fit(load_config(config, overrides or []), resume=resume)
    typer.echo(f"{result.run_dir}: {result.steps} steps, best val score {result.best_val:.2f}")


def register(app: typer.Typer) -> None:
    app.command("train", epilog="Methods (method.name):\n\n" + methods_help()
                + "\n\nThe demo's rows are these methods with settings: configs/rows/*.yaml "
                  "(pkd train configs/rows/lmh.yaml runs one after pkd demo).")(train)
