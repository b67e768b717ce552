"""Readable summaries printed by the CLI (plain lines or uncut tables: never truncated in narrow
CI logs)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pkd.demo import TEXT_COLUMNS, markdown_table

if TYPE_CHECKING:
    from rich.console import Console

MAX_LISTED = 20  # failures printed per store; `pkd stores info` lists the rest


def extract_line(r) -> str:
    """One line per store: shards run / skipped, items and items/s, setup time, failures."""
    rate = f"{r.items_run / r.seconds:.0f} items/s" if r.seconds > 0 and r.items_run else "-"
    failed = len(r.failures) + len(r.earlier_failures)
    return (f"{r.store}: {r.shards_run} shards run, {r.shards_skipped} skipped (done); "
            f"{r.items_run} items in {r.seconds:.1f}s ({rate}; setup {r.setup_seconds:.1f}s); "
            f"{failed} failed")


def print_extract_report(report) -> None:
    """:func:`extract_line` per store on stdout, then this run's failures on stderr (those of
    skipped shards are counted, not listed)."""
    for r in report.reports:
        print(extract_line(r))
    for r in report.reports:
        for f in r.failures[:MAX_LISTED]:
            print(f"skipped image {f.id} ({f.path or 'no file'}): {f.reason}", file=sys.stderr)
        more = len(r.failures) - MAX_LISTED
        if more > 0 or r.earlier_failures:
            earlier = f"{len(r.earlier_failures)} recorded earlier; " if r.earlier_failures else ""
            print(f"{r.store}: {max(more, 0)} more failed items, {earlier}see "
                  f"`pkd stores info {r.store}`", file=sys.stderr)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]],
                notes: Sequence[str] = (), console: Console | None = None) -> None:
    """A table whose cells are never cut. On a terminal wide enough for every cell: a rich
    table; otherwise (CI, a pipe, ``| tee``, a narrow terminal): the padded Markdown table of
    :func:`pkd.demo.markdown_table`, plain text that a narrow window wraps instead of cutting."""
    from rich.console import Console  # rich: loaded only when a table prints
    from rich.measure import Measurement  # rich: loaded only when a table prints
    from rich.table import Table  # rich: loaded only when a table prints
    from rich.text import Text  # rich: loaded only when a table prints

    console = console or Console()
    if console.is_terminal:
        table = Table(title=title)
        for i, col in enumerate(header):
            table.add_column(col, no_wrap=True, justify="left" if i < TEXT_COLUMNS else "right")
        for r in rows:
            table.add_row(*(Text(c) for c in r))
        needed = Measurement.get(console, console.options.update_width(10**6), table).minimum
        if needed <= console.width:
            console.print(table)
            for note in notes:
                console.print(note, markup=False, highlight=False)
            return
    print("\n".join([title, markdown_table(header, rows), *notes]), file=console.file,
          flush=True)
