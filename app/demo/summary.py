"""The demo's tables: per-row means with CIs, paired differences to each row's reference,
the grounding checks, Markdown and the plot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pkd.demo.blind import blind_table
from pkd.demo.config import SPLITS
from pkd.demo.draws import mean_over_runs, paired_over_runs, run_key
from pkd.demo.vlm import VLM_ROWS, forgetting_table
from pkd.fsio import write_atomic

# The row each method's paired difference is taken to (same seeds, same stores): the model it
# changes. DistillVLM rows compress the teacher into the student; every other row (PKD, its
# ablations and sweeps, the debiasing methods, the teacher) is compared with the baseline.
# The references themselves (None) have no difference.
REFERENCE: dict[str, str | None] = {
    "baseline": None, "student": None, "student-best": None,
    "distillvlm": "student", "distillvlm-att": "student", "distillvlm-nce": "student",
    "distillvlm-kd": "student", "distillvlm-queue256": "student",
    "distillvlm-queue16384": "student",
    "teacher-own": "teacher", "distillvlm-unaligned": "distillvlm",  # the alignment ablation
    # PKD's setting (pkd.demo.vlm): every row against plain fine-tuning, which is compared
    # with the zero-shot foundation model
    "finetune": "zero-shot", "zero-shot": None,
    **{row: "finetune" for row in VLM_ROWS if row not in ("finetune", "zero-shot")},
    "pkd-lmh": "lmh",  # PKD on a debiasing base: its gain over that base
}


# Further rows a method must beat, paired like its reference (grounding checks,
# :func:`checks_table`): the controls scored on the baseline run itself (its training favourite
# masked, its answers corrected by the training prior) for the debiasing methods and PKD; the
# student at equal steps and at its plateau budget (student-best) for DistillVLM.
CONTROLS_BEATEN = ("baseline-masked", "baseline-prior-corrected")
CHECKS: dict[str, tuple[str, ...]] = {
    "lmh": CONTROLS_BEATEN, "rubi": CONTROLS_BEATEN, "pkd": CONTROLS_BEATEN,
    "distillvlm": ("student", "student-best"),
}


def reference_of(method: str) -> str | None:
    """The reference row of ``method`` (:data:`REFERENCE`, default ``"baseline"``)."""
    return REFERENCE.get(method, "baseline")


RunsOf = dict[tuple[str, str], dict[tuple[int, int], float]]  # (method, split) -> runs


def _overall_runs(rows: list[dict]) -> RunsOf:
    """``{(method, split): {(seed, data_seed): overall}}`` (:func:`pkd.demo.draws.run_key`)."""
    out: RunsOf = {}
    for r in rows:
        out.setdefault((r["method"], r["split"]), {})[run_key(r)] = r["overall"]
    return out


def _over_seeds(runs: dict[tuple[int, int], float]) -> dict:
    """``mean``, ``ci_low``, ``ci_high`` (95% t interval over seeds, or over the data draws'
    means with several draws; None for one seed: :mod:`pkd.demo.draws`), ``n`` (seeds, or
    draws), ``seeds``, ``data_seeds`` (sorted distinct) and ``runs`` (seed, draw pairs)."""
    e = mean_over_runs(runs)
    return {"mean": e.mean, "ci_low": e.low, "ci_high": e.high, "n": e.n,
            "seeds": sorted({s for s, _ in runs}), "data_seeds": sorted({d for _, d in runs}),
            "runs": len(runs)}


def _paired(method: str, split: str, overall: RunsOf) -> dict:
    """``reference`` (:func:`reference_of`) and the paired difference of overall accuracy to it
    on the same runs: ``diff_mean``, ``diff_ci_low``, ``diff_ci_high``
    (None without a reference row; the interval None for one seed), over seeds or data draws
    (:func:`pkd.demo.draws.paired_over_runs`). Unpaired runs are a PkdError."""
    ref = reference_of(method)
    none = {"reference": ref, "diff_mean": None, "diff_ci_low": None, "diff_ci_high": None}
    if ref is None or (ref, split) not in overall:
        return none
    d = paired_over_runs(overall[(method, split)], overall[(ref, split)],
                         names=(f"{method} ({split})", ref))
    return {**none, "diff_mean": d.mean, "diff_ci_low": d.low, "diff_ci_high": d.high}


def summarize(rows: list[dict]) -> list[dict]:
    """Per (method, split), over its runs ``x_{d,s}`` (data draw ``d`` = ``data_seed``, 0 when
    absent; seed ``s``): overall accuracy's mean with its 95% Student-t CI, ``n``, ``seeds``,
    ``data_seeds`` and ``runs``; the paired difference to the reference row (:func:`_paired`);
    and the plain means over runs of the answer types, prior shares and timing.

    One draw: over seeds, ``mean ± t_{0.975, n-1} s / sqrt(n)`` (:func:`pkd.stats.mean_ci`;
    ``ci_low``/``ci_high`` None with one seed), ``n`` = seeds. D > 1 draws: the two-stage
    (cluster) estimator, ``m_d = mean_s x_{d,s}``, ``mean = (1/D) Σ_d m_d``, ``mean ±
    t_{0.975, D-1} s_m / sqrt(D)`` with ``s_m`` the sd of the draw means, ``n`` = D: the
    variance of the grand mean is ``s²_m / D``, which holds the seed noise too (``Var(m_d) =
    σ²_draw + σ²_seed / |S_d|``). The paired difference is the same estimator on
    ``x_{d,s} - ref_{d,s}`` over the runs both rows hold (:mod:`pkd.demo.draws`)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["split"]), []).append(r)
    overall = _overall_runs(rows)
    out = []
    for (m, s), rs in groups.items():
        types = sorted({t for r in rs for t in r["perAnswerType"]})
        out.append({"method": m, "split": s, **_over_seeds(overall[(m, s)]),
                    **_paired(m, s, overall),
                    **{k: float(np.mean([r.get(k, np.nan) for r in rs]))
                       for k in ("ms_per_question", "prior", "prior_gold")},
                    "perAnswerType": {t: float(np.mean([r["perAnswerType"].get(t, 0.0)
                                                        for r in rs])) for t in types}})
    return out


def overall_cell(s: dict) -> str:
    """``mean ± half-width`` of the 95% CI over seeds; the bare mean for one seed."""
    if s["ci_low"] is None:
        return f"{s['mean']:.2f}"
    return f"{s['mean']:.2f} ± {(s['ci_high'] - s['ci_low']) / 2:.2f}"


def delta_cell(s: dict) -> str:
    """``vs baseline +1.70 [+0.30, +3.10]`` (paired Δ and its 95% CI); no interval for one
    seed; empty for a reference row or when the reference row was not run."""
    if s["diff_mean"] is None:
        return ""
    cell = f"vs {s['reference']} {s['diff_mean']:+.2f}"
    if s["diff_ci_low"] is not None:
        cell += f" [{s['diff_ci_low']:+.2f}, {s['diff_ci_high']:+.2f}]"
    return cell


def results_table(results: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The results table of ``pkd demo`` and ``results.md``: title, header, one row of cells per
    (method, split) and the notes printed under it. Overall accuracy is ``mean ± hw`` (hw: half
    the 95% t interval over seeds), the bare mean where a row has one seed; ``paired Δ`` is its
    difference to the reference row on the same seeds with that difference's 95% interval.
    With several data draws the intervals are over the draws' means (:func:`summarize`) and a
    ``draws`` column counts each row's draws."""
    summary = summarize(results["rows"])
    seeds = max((len(s["seeds"]) for s in summary), default=0)
    draws = max((len(s["data_seeds"]) for s in summary), default=0)
    title = f"pkd demo — VQA accuracy (%), {seeds} seed{'' if seeds == 1 else 's'}"
    if draws > 1:
        title += f" x {draws} data draws"
    types = sorted({t for s in summary for t in s["perAnswerType"]})
    several = any(s["n"] > 1 for s in summary)
    header = ["method", "split", "overall (mean ± 95% CI)" if several else "overall", "seeds",
              *(["draws"] if draws > 1 else []),
              "paired Δ", *types, "prior %", "params", "µs/question"]
    params = results.get("models", {})
    rows = [[s["method"], s["split"], overall_cell(s), str(len(s["seeds"])),
             *([str(len(s["data_seeds"]))] if draws > 1 else []), delta_cell(s),
             *(f"{s['perAnswerType'].get(t, 0.0):.2f}" for t in types),
             f"{s['prior']:.1f}",
             f"{params[s['method']]:,}" if s["method"] in params else "",
             f"{1000 * s['ms_per_question']:.0f}"] for s in summary]
    return title, header, rows, _table_notes(summary, several) + _probe_notes(results)


def _probe_notes(results: dict) -> list[str]:
    """What the inputs can carry: linear probes of the region stores, zero-shot probes of the
    foundation model, and where the timings come from."""
    notes = []
    draws = results.get("draws") or {"0": results}  # an older file: its probes at the top
    for d, facts in sorted(draws.items(), key=lambda kv: int(kv[0])):
        where = f"draw {d} " if len(draws) > 1 else ""
        regions = facts.get("region_probes", {})
        if regions:
            notes.append(f"{where}region probes (linear, test images): " + "; ".join(
                f"{store} shape {p['shape']['accuracy']:.1f}%, colour "
                f"{p['color']['accuracy']:.1f}%" for store, p in regions.items()))
        probes = facts.get("foundation_probes", {}).get("probes", {})
        if probes:
            notes.append(f"{where}foundation zero-shot probes (held-out caption images): "
                         + ", ".join(f"{k} {v:.1f}%" for k, v in probes.items() if v is not None))
    if "machine" in results:
        m = results["machine"]
        notes.append(f"{results.get('preset', '')} size, {results['elapsed_s']:.0f} s in this "
                     f"invocation on {m['cpu']} ({m['cores']} cores)")
    return notes


def _table_notes(summary: list[dict], several: bool) -> list[str]:
    notes = []
    if any(len(s["data_seeds"]) > 1 for s in summary):
        notes.append("overall: mean over data draws of each draw's mean over seeds ± half-width "
                     "of the 95% Student-t interval over the draw means (it holds the seed "
                     "noise too); paired Δ: per draw, the mean over seeds of (row - reference) "
                     "on the same runs, then the mean over draws [95% t interval over draws]")
    elif several:
        notes.append("overall: mean ± half-width of the 95% Student-t interval over seeds; "
                     "paired Δ: mean over seeds of (row - reference) on the same seeds "
                     "[95% t interval]")
    elif summary:
        notes.append("paired Δ: row - reference on the same seed; one seed gives no interval "
                     "(a single seed is an anecdote: use --seeds 5)")
    present = {(s["method"], s["split"]) for s in summary}
    absent = sorted({s["reference"] for s in summary
                     if s["reference"] and (s["reference"], s["split"]) not in present})
    if absent:
        notes.append(f"paired Δ blank: reference row not run ({', '.join(absent)})")
    gold = {s["split"]: s["prior_gold"] for s in summary}
    if gold:
        notes.append("prior %: answers that are the training favourite of their question type "
                     "(gold " + ", ".join(f"{k} {v:.1f}%" for k, v in gold.items()) + ")")
    return notes


TEXT_COLUMNS = 2  # method, split: left-aligned; the other columns are numbers (right-aligned)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, its columns padded to a common width so it also reads as plain text."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    cells = [[cell(c) for c in r] for r in [header, *rows]]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < TEXT_COLUMNS else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    rule = "| " + " | ".join("-" * w if i < TEXT_COLUMNS else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def results_markdown(results: dict, main_only: bool = False) -> str:
    """``results.md``: the title, the table of :func:`results_table` and its notes, then (unless
    ``main_only``: the README's block) the grounding checks of :func:`checks_table` where any
    pair of its rows was run, the blind rules and the targets."""
    title, header, rows, notes = results_table(results)
    parts = [f"## {title}", markdown_table(header, rows), *notes]
    for title, header, rows, notes in ([] if main_only else extra_tables(results)):
        parts += [f"### {title}", markdown_table(header, rows), *notes]
    return "\n\n".join(parts) + "\n"


def extra_tables(results: dict) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """The tables printed under the results table, those with rows: the grounding checks
    (:func:`checks_table`) and the blind rules with the benchmark's targets
    (:func:`pkd.demo.blind.blind_table`)."""
    return [t for t in (checks_table(results), forgetting_table(results), blind_table(results))
            if t[2]]


def verdict(d) -> str:
    """``beats`` when the 95% CI of a paired Δ (:class:`pkd.stats.Estimate`) lies above 0,
    ``loses`` below 0, ``n.s.`` when it covers 0, ``anecdote`` without an interval (one run)."""
    if d.low is None:
        return "anecdote"
    return "beats" if d.low > 0 else "loses" if d.high < 0 else "n.s."


def checks_table(results: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The grounding checks (title, header, rows, notes): for each (method, other) of
    :data:`CHECKS` whose rows both exist, per split, the paired Δ of overall accuracy
    ``method - other`` on the same runs with its 95% CI (the estimator of :func:`summarize`,
    over seeds or data draws) and its :func:`verdict`. No rows when no such pair was run."""
    overall = _overall_runs(results["rows"])
    splits = list(dict.fromkeys(split for _, split in overall))
    rows = []
    for method, others in CHECKS.items():
        for other in others:
            for split in splits:
                if (method, split) not in overall or (other, split) not in overall:
                    continue
                d = paired_over_runs(overall[(method, split)], overall[(other, split)],
                                     names=(f"{method} ({split})", other))
                cell = f"{d.mean:+.2f}" + ("" if d.low is None
                                           else f" [{d.low:+.2f}, {d.high:+.2f}]")
                rows.append([method, split, other, cell, str(d.n), verdict(d)])
    header = ["method", "split", "must beat", "paired Δ (95% CI)", "n", "verdict"]
    if all(r[-1] == "anecdote" for r in rows):
        notes = ["paired Δ: row - the row it must beat on the same seed; one seed gives no "
                 "interval, so every verdict is an anecdote (use --seeds 5)"]
    else:
        notes = ["paired Δ: row - the row it must beat, on the same seeds (with several data "
                 "draws: per draw, then over draws) [95% t interval]; n: seeds, or data draws",
                 "verdict: beats (interval above 0), loses (below 0), n.s. (covers 0), "
                 "anecdote (one seed: no interval)"]
    return "grounding checks — paired Δ of overall accuracy (%)", header, rows, notes


def plot_results(results: dict, out: Path) -> Path:
    """``results.png``: overall accuracy per method and split, bars with their 95% CI."""
    import matplotlib  # matplotlib: loaded only when results.png is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: loaded only when results.png is drawn

    summary = summarize(results["rows"])
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(methods), 3.4))
    for j, split in enumerate(SPLITS):
        cells = [next((s for s in summary if s["method"] == m and s["split"] == split), None)
                 for m in methods]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
        ax.bar(xs, [c["mean"] if c else 0 for c in cells], 0.36,
               yerr=[(c["ci_high"] - c["ci_low"]) / 2 if c and c["ci_low"] is not None else 0
                     for c in cells], label=split)  # 95% CI over seeds
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("VQA accuracy (%)")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(out, png.getvalue())  # a full disk leaves the old plot, not half
