"""The demo's blind-rule table: what answering without the image scores on each split.

Each data draw's benchmark records, in ``synth_meta.json``, the accuracy of every blind rule
computed from its training split (and ``val``) on every evaluation split
(:mod:`pkd.data.blind_rules`); ``pkd demo`` copies it into ``results.json``
(``draws[d]["blind_rules"]``). The table gives each rule's mean over the draws and, for
``test``, its worst (highest) draw, and checks the benchmark's targets on ``test`` (benchmark
v6):

    every blind rule <= BLIND_MAX                         on every draw
    baseline(test) - best blind(test) >= MARGIN_MIN       on every draw (baseline: seed mean)
    baseline(test_iid) - baseline(test) >= GAP_MIN        on every draw
"""

from __future__ import annotations

BLIND_MAX = 35.0  # no blind rule may score more on test, on any draw
MARGIN_MIN = 20.0  # the baseline's lead over the best blind rule on test
GAP_MIN = 20.0  # the baseline's in-distribution minus shifted accuracy
SPLITS = ("test", "test_comp", "test_iid")
ORACLE, BEST = "oracle constant", "best blind"  # pkd.data.blind_rules' two summary rows


def _tables(results: dict) -> dict[int, dict[str, dict[str, float]]]:
    """``{draw: rule -> split -> accuracy}`` of every draw that recorded its blind rules."""
    return {int(d): f["blind_rules"] for d, f in results.get("draws", {}).items()
            if f.get("blind_rules")}


def _baseline(results: dict, split: str) -> dict[int, float]:
    """The baseline's mean over seeds on ``split``, per draw."""
    runs: dict[int, list[float]] = {}
    for r in results.get("rows", []):
        if r["method"] == "baseline" and r["split"] == split:
            runs.setdefault(int(r.get("data_seed", 0)), []).append(r["overall"])
    return {d: sum(v) / len(v) for d, v in runs.items()}


def target_lines(results: dict) -> list[str]:
    """The three targets of the module docstring, one line each: the worst draw's value and
    ``met`` / ``MISSED`` (the baseline's lines only where it was run)."""
    tables = _tables(results)
    if not tables:
        return []
    best = {d: t[BEST]["test"] for d, t in tables.items()}
    lines = [_line("every blind rule on test", max(best.values()), "<=", BLIND_MAX)]
    test, iid = _baseline(results, "test"), _baseline(results, "test_iid")
    shared = sorted(set(test) & set(best))
    if shared:
        margin = min(test[d] - best[d] for d in shared)
        lines.append(_line("baseline - best blind rule on test", margin, ">=", MARGIN_MIN))
    both = sorted(set(test) & set(iid))
    if both:
        lines.append(_line("baseline test_iid - test", min(iid[d] - test[d] for d in both), ">=",
                           GAP_MIN))
    return lines


def _line(what: str, value: float, op: str, bound: float) -> str:
    ok = value <= bound if op == "<=" else value >= bound
    return (f"target: {what} = {value:.2f} (worst draw; target {op} {bound:g}: "
            f"{'met' if ok else 'MISSED'})")


def blind_table(results: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """(title, header, rows, notes): each blind rule's accuracy (%) from the training split
    alone, mean over the draws per split and the worst draw on ``test``; no rows when no draw
    recorded blind rules (an older results file)."""
    tables = _tables(results)
    draws = sorted(tables)
    title = f"blind rules: no image, answers from the training split ({len(draws)} draw" \
            f"{'' if len(draws) == 1 else 's'})"
    header = ["rule", "kind", *(f"{s} mean" for s in SPLITS), "test max"]
    rules = list(dict.fromkeys(r for d in draws for r in tables[d]))
    rows = []
    for rule in rules:
        values = {s: [tables[d][rule][s] for d in draws if rule in tables[d]] for s in SPLITS}
        rows.append([rule, "oracle" if rule == ORACLE else "blind",
                     *(f"{sum(v) / len(v):.2f}" for v in values.values()),
                     f"{max(values['test']):.2f}"])
    notes = ["oracle constant: each type's best constant chosen with the split's own answers "
             "(not blind); best blind: the highest blind rule per draw"] if rows else []
    return title, header, rows, notes + target_lines(results)
