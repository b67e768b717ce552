"""Readable summaries printed by the CLI."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def print_extract_report(report) -> None:
    """One row per store written: shards run / skipped, failures, seconds; then the failures."""
    table = Table(title="extraction")
    for col in ("store", "shards run", "skipped (done)", "failed items", "seconds"):
        table.add_column(col)
    for r in report.reports:
        table.add_row(str(r.store), str(r.shards_run), str(r.shards_skipped),
                      str(len(r.failures)), f"{r.seconds:.1f}")
    Console().print(table)
    for r in report.reports:
        for f in r.failures[:20]:
            print(f"skipped image {f.id} ({f.path or 'no file'}): {f.reason}", file=sys.stderr)
        if len(r.failures) > 20:
            print(f"... and {len(r.failures) - 20} more (see `pkd stores info {r.store}`)",
                  file=sys.stderr)
