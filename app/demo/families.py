"""Per question family: where a method gains or loses (``results_families.md``).

The overall accuracy of a split averages question families that the prior shift hits very
differently (counting and the relational families shift, the direct colour / shape families
barely do), so a method's overall difference can hide opposite moves. For each (method, split,
question type) over the seeds of the rows that carry ``perQuestionType``::

    mean   = (1/n) Σ_s acc_s                     the family's accuracy, mean over seeds
    Δ      = (1/n) Σ_s (acc_s - ref_s)           paired to the reference row (pkd.demo.REFERENCE)
    95% CI = Δ ± t_{0.975, n-1} · sd_s(acc_s - ref_s) / √n     (pkd.stats.paired_difference)

on the seeds both rows have; a seed one of them lacks is a PkdError, as for the overall table.
With several data draws (``data_seed``) the same two-stage estimator as the overall table:
each draw's mean over its seeds, then the mean and t interval over the draws
(:mod:`pkd.demo.draws`).
"""

from __future__ import annotations

from pkd.demo.config import SPLITS
from pkd.demo.draws import mean_over_runs, paired_over_runs, run_key
from pkd.demo.summary import markdown_table, reference_of

FAMILIES_FILE = "results_families.md"


def _by_run(rows: list[dict]) -> dict[tuple[str, str, str], dict[tuple[int, int], float]]:
    """``{(method, split, question type): {(seed, data_seed): accuracy}}`` of the rows with
    per-type scores."""
    out: dict[tuple[str, str, str], dict[tuple[int, int], float]] = {}
    for r in rows:
        for qtype, acc in (r.get("perQuestionType") or {}).items():
            out.setdefault((r["method"], r["split"], qtype), {})[run_key(r)] = float(acc)
    return out


def family_summary(rows: list[dict]) -> list[dict]:
    """One dict per (method, split, question type): ``mean`` over seeds (or data draws), ``n``,
    ``draws``, ``reference`` and the paired ``diff_mean`` / ``diff_ci_low`` / ``diff_ci_high``
    (None without a reference row, the interval None for one seed)."""
    acc = _by_run(rows)
    out = []
    for (method, split, qtype), runs in acc.items():
        e = mean_over_runs(runs)
        ref = reference_of(method)
        item = {"method": method, "split": split, "question_type": qtype, "mean": e.mean,
                "n": e.n, "draws": len({d for _, d in runs}), "reference": ref,
                "diff_mean": None, "diff_ci_low": None, "diff_ci_high": None}
        if ref is not None and (ref, split, qtype) in acc:
            d = paired_over_runs(runs, acc[(ref, split, qtype)],
                                 names=(f"{method} ({split}, {qtype})", ref))
            item.update(diff_mean=d.mean, diff_ci_low=d.low, diff_ci_high=d.high)
        out.append(item)
    return out


def family_cell(s: dict) -> str:
    """``63.2 (+1.2 [-0.3, +2.7])``: the mean, then the paired Δ and its CI where there is one."""
    cell = f"{s['mean']:.1f}"
    if s["diff_mean"] is not None:
        cell += f" ({s['diff_mean']:+.1f}"
        if s["diff_ci_low"] is not None:
            cell += f" [{s['diff_ci_low']:+.1f}, {s['diff_ci_high']:+.1f}]"
        cell += ")"
    return cell


def families_markdown(results: dict) -> str:
    """``results_families.md``: per split, a table of methods x question families (empty when
    no row carries per-type scores, e.g. a ``results.json`` of an older pkd)."""
    summary = family_summary(results["rows"])
    if not summary:
        return ""
    draws = max(s["draws"] for s in summary)
    seeds = (max(s["n"] for s in summary) if draws == 1
             else len({run_key(r)[0] for r in results["rows"] if r.get("perQuestionType")}))
    drawn = draws > 1
    parts = [f"## pkd demo — accuracy (%) per question family, {seeds} seed"
             f"{'' if seeds == 1 else 's'}" + (f" x {draws} data draws" if drawn else ""),
             "Cell: mean over " + ("data draws of each draw's mean over seeds" if drawn
                                   else "seeds")
             + " (paired Δ to the reference row [95% t interval"
             + (" over draws" if drawn else "") + "]); the reference of each row is the same "
             "as in results.md."]
    for split in SPLITS:
        cells = {(s["method"], s["question_type"]): s for s in summary if s["split"] == split}
        if not cells:
            continue
        methods = list(dict.fromkeys(m for m, _ in cells))
        types = sorted({t for _, t in cells})
        table = [[m, *(family_cell(cells[(m, t)]) if (m, t) in cells else "" for t in types)]
                 for m in methods]
        parts += [f"### {split}", markdown_table(["method", *types], table)]
    return "\n\n".join(parts) + "\n"
