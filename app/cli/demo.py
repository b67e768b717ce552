"""``pkd demo --out DIR``: the main job, end to end on the built-in synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.demo import KNOWN


def demo(
    out: Annotated[Path, typer.Option(help="output folder (resumable: re-run to finish)")] = Path(
        "demo_out"),
    seeds: Annotated[int, typer.Option(help="training seeds per method")] = 1,
    ablations: Annotated[bool, typer.Option(help="also run the ablation rows")] = False,
    methods: Annotated[str, typer.Option(
        help="comma-separated rows instead of the main methods; known: " + ", ".join(KNOWN))] = "",
) -> None:
    """synth data -> pre-train foundation -> extract -> train -> evaluate; prints a table (also
    written to results.md)."""
    from pkd.cli.report import print_table
    from pkd.demo import ABLATIONS, MAIN_METHODS, DemoConfig, results_table, run_demo

    rows = tuple(m.strip() for m in methods.split(",") if m.strip()) or MAIN_METHODS
    rows += tuple(a for a in (ABLATIONS if ablations else ()) if a not in rows)
    results = run_demo(DemoConfig(out=out, seeds=seeds, methods=rows))
    print_table(*results_table(results))
    print(f"elapsed {results['elapsed_s']:.0f} s; results in {out / 'results.json'} "
          f"(table: {out / 'results.md'})")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
