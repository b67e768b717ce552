"""``pkd demo --out DIR``: the main job, end to end on the built-in synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.cli.report import print_table
from pkd.demo import ABLATIONS, KNOWN, DemoConfig, extra_tables, results_table
from pkd.errors import PkdError
from pkd.fsio import check_writable


def demo(
    out: Annotated[Path, typer.Option(help="output folder (resumable: re-run to finish)")] = Path(
        "demo_out"),
    preset: Annotated[str, typer.Option(
        help="quick (1 seed, main rows, ≤ 10 min on 2 cores) | full (the README's table: "
             "full-size benchmark, 3 seeds x data draws 10,11,12, the headline rows)")] = "quick",
    seeds: Annotated[int, typer.Option(help="training seeds per method (0: the preset's)")] = 0,
    ablations: Annotated[bool, typer.Option(help="also run the ablation rows")] = False,
    methods: Annotated[str, typer.Option(
        help="comma-separated rows instead of the main methods; known: " + ", ".join(KNOWN))] = "",
    data_seeds: Annotated[str, typer.Option(
        help="comma-separated benchmark draws, each generated with its own seed in OUT/draw{d} "
             "(default: the preset's; quick 0, full 10,11,12 — tune on draw 0, report "
             "others)")] = "",
    jobs: Annotated[int, typer.Option(
        min=1, help="runs trained side by side, one process each (file locks keep two "
                    "processes off one run)")] = 1,
) -> None:
    """synth data -> pre-train foundation -> extract -> train -> evaluate; prints a table (also
    written to results.md)."""
    from pkd.demo import run_demo  # late-bound: tests patch pkd.demo.run_demo

    cfg = DemoConfig.of(preset, out)
    rows = tuple(m.strip() for m in methods.split(",") if m.strip()) or cfg.methods
    rows += tuple(a for a in (ABLATIONS if ablations else ()) if a not in rows)
    cfg.methods, cfg.seeds, cfg.jobs = rows, seeds or cfg.seeds, jobs
    cfg.data_seeds = parse_seeds(data_seeds) if data_seeds.strip() else cfg.data_seeds
    check_writable(out, "--out")  # a file, read-only or full: refused now, not after an hour
    results = run_demo(cfg)
    print_table(*results_table(results))  # every row of the folder (pkd.demo.save_results)
    for table in extra_tables(results):  # grounding checks, blind rules and targets
        print_table(*table)
    where = results.get("machine", {})
    print(f"elapsed {results['elapsed_s']:.0f} s on {where.get('cpu', '?')} "
          f"({where.get('cores', '?')} cores); results in {out / 'results.json'} "
          f"(table: {out / 'results.md'})")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``; anything but non-negative integers is a one-line error."""
    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0:
        raise PkdError(f"--data-seeds {text!r}: expected comma-separated integers >= 0")
    return seeds


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
