"""Readable summaries printed by the CLI (plain lines: never truncated in narrow CI logs)."""

from __future__ import annotations

import sys

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
