"""``pkd data``: data set utilities (the synthetic OOD benchmark)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Data sets: generate the synthetic VQA-CP-like benchmark.", no_args_is_help=True)
