"""Helpers of the ``pkd demo`` tests: fake results files, and the results table read back from
Markdown and checked against ``results.json``."""

from __future__ import annotations

import itertools
import json

import pytest

from pkd.demo import results_markdown, summarize
from pkd.demo.summary import delta_cell

LONG = ("distillvlm-queue16384", "pkd-predictors-off", "baseline-foundation")


def fake_results(methods=LONG, seeds=1) -> dict:
    rows = [{"method": m, "seed": s, "split": sp, "overall": 40.0 + 3 * s + i + (sp == "test"),
             "perAnswerType": {"number": 20.0 + s, "other": 30.0 + i, "yes/no": 60.0 - s},
             "ms_per_question": 0.02 * (i + 1), "prior": 70.0 - s,
             "prior_gold": 5.0 if sp == "test" else 60.0}
            for i, m in enumerate(methods) for s in range(seeds) for sp in ("test", "test_iid")]
    return {"elapsed_s": 1.0, "rows": rows, "models": {m: 1000 * (i + 1)
                                                        for i, m in enumerate(methods)}}


def markdown_rows(text: str) -> list[dict]:
    """The body rows of the first Markdown table in ``text`` (the results table; the grounding
    checks may follow it), as header -> cell."""
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), itertools.dropwhile(
        lambda ln: not ln.startswith("|"), text.splitlines())))
    split = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    header, rule, body = split[0], split[1], split[2:]
    assert all(set(c) <= {"-", ":"} for c in rule)
    return [dict(zip(header, r, strict=True)) for r in body]


def assert_markdown_matches(out, seeds: int) -> None:
    """``results.md`` beside ``results.json``: one row per (method, split), same values."""
    saved = json.loads((out / "results.json").read_text())
    text = (out / "results.md").read_text()
    assert text == results_markdown(saved)
    assert ("±" in text) == (seeds > 1)
    table = markdown_rows(text)
    summary = summarize(saved["rows"])
    assert [(r["method"], r["split"]) for r in table] == [(s["method"], s["split"])
                                                          for s in summary]
    for r, s in zip(table, summary, strict=True):
        overall = r["overall (mean ± 95% CI)" if seeds > 1 else "overall"]
        mean, _, hw = overall.partition(" ± ")
        assert float(mean) == pytest.approx(s["mean"], abs=0.005)
        if seeds > 1:
            assert float(hw) == pytest.approx((s["ci_high"] - s["ci_low"]) / 2, abs=0.005)
        else:
            assert hw == "" and s["ci_low"] is None
        assert int(r["seeds"]) == s["n"] == seeds
        assert r["paired Δ"] == delta_cell(s)
        for t, v in s["perAnswerType"].items():
            assert float(r[t]) == pytest.approx(v, abs=0.005)
        assert float(r["prior %"]) == pytest.approx(s["prior"], abs=0.05)
        assert float(r["µs/question"]) == pytest.approx(1000 * s["ms_per_question"], abs=0.5)
        size = saved["models"].get(s["method"])
        assert r["params"] == (f"{size:,}" if size else "")


def paired_rows(seeds: int) -> list[dict]:
    """baseline 24, 25.5, 24 and pkd 26, 27, 25 on seeds 0-2 (pkd - baseline = 2, 1.5, 1);
    student 30 + s, distillvlm 31 + s (a constant +1 to its reference, the student)."""
    overall = {"baseline": [24.0, 25.5, 24.0], "pkd": [26.0, 27.0, 25.0],
               "student": [30.0, 31.0, 32.0], "distillvlm": [31.0, 32.0, 33.0]}
    return [{"method": m, "seed": s, "split": "test", "overall": v[s],
             "perAnswerType": {"other": v[s]}, "ms_per_question": 0.01, "prior": 50.0,
             "prior_gold": 5.0} for m, v in overall.items() for s in range(seeds)]
