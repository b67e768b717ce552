"""``pkd results OUT``: every table and plot of a demo folder, made again from its results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.cli.report import print_table
from pkd.demo import extra_tables, results_table
from pkd.demo.results_file import rebuild


def results(
    out: Annotated[Path, typer.Argument(
        metavar="OUT", help="a pkd demo folder (its results.json is read)")],
    readme: Annotated[Path | None, typer.Option(
        help="also put results.md between this file's <!-- results:begin --> and "
             "<!-- results:end --> lines")] = None,
    add: Annotated[list[Path] | None, typer.Option(
        help="merge this folder's results.json into OUT's first (repeatable: data draws run "
             "in separate folders or on other machines)")] = None,
) -> None:
    """Rewrite results.md, results_families.md and results.png from OUT/results.json (nothing
    trained) and print the tables."""
    saved = rebuild(out, readme, tuple(add or ()))
    print_table(*results_table(saved))
    for table in extra_tables(saved):  # grounding checks, blind rules and targets
        print_table(*table)
    print(f"{len(saved['rows'])} rows from {out / 'results.json'}: rewrote {out / 'results.md'}"
          + (f" and the table in {readme}" if readme else ""))


def register(app: typer.Typer) -> None:
    app.command("results")(results)
