"""``pkd stores``: inspect feature stores and import existing HDF5 features."""

from __future__ import annotations

import typer

app = typer.Typer(help="Feature stores: info, import-h5.", no_args_is_help=True)
