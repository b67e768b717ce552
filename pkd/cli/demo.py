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
    """synth data -> pre-train foundation -> extract -> train -> evaluate; prints a table."""
    from rich.console import Console
    from rich.table import Table

    from pkd.demo import ABLATIONS, MAIN_METHODS, DemoConfig, run_demo, summarize

    rows = tuple(m.strip() for m in methods.split(",") if m.strip()) or MAIN_METHODS
    rows += tuple(a for a in (ABLATIONS if ablations else ()) if a not in rows)
    results = run_demo(DemoConfig(out=out, seeds=seeds, methods=rows))
    table = Table(title=f"pkd demo — VQA accuracy (%), {seeds} seed(s)")
    summary = summarize(results["rows"])
    types = sorted({t for s in summary for t in s["perAnswerType"]})
    for col in ("method", "split", "overall (mean ± std)", *types, "prior %", "params",
                "µs/question"):
        table.add_column(col)
    params = results.get("models", {})
    for s in summary:
        table.add_row(s["method"], s["split"], f"{s['mean']:.2f} ± {s['std']:.2f}",
                      *(f"{s['perAnswerType'].get(t, 0.0):.2f}" for t in types),
                      f"{s['prior']:.1f}",
                      f"{params[s['method']]:,}" if s["method"] in params else "",
                      f"{1000 * s['ms_per_question']:.0f}")
    console = Console()
    console.print(table)
    gold = {s["split"]: s["prior_gold"] for s in summary}
    console.print("prior %: answers that are the training favourite of their question type (gold "
                  + ", ".join(f"{k} {v:.1f}%" for k, v in gold.items()) + ")")
    console.print(f"elapsed {results['elapsed_s']:.0f} s; results in {out / 'results.json'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
