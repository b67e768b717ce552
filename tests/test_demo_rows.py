"""The demo's per-run row cache (pkd.demo.row_cache) and per-family table (pkd.demo.families)."""

from __future__ import annotations

import json
import os

import pytest

from pkd.demo.families import families_markdown, family_cell, family_summary
from pkd.demo.row_cache import ROWS_FILE, cached_rows
from pkd.errors import PkdError


def _run(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "latest.json").write_text('{"step": 10}')
    (run / "done").write_text("")
    split = tmp_path / "synth_test_annotations.json"
    split.write_text("{}")
    return run, split


def test_rows_are_reused_until_the_run_or_a_split_file_changes(tmp_path):
    run, split = _run(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return [{"method": "baseline", "overall": float(len(calls))}]

    assert cached_rows(run, [split], compute)[0]["overall"] == 1.0
    assert cached_rows(run, [split], compute)[0]["overall"] == 1.0 and len(calls) == 1
    (run / "best" / "latest.json").write_text('{"step": 20}')  # another best checkpoint
    assert cached_rows(run, [split], compute)[0]["overall"] == 2.0
    st = (run / "done").stat()  # retrained: a new done marker
    os.utime(run / "done", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cached_rows(run, [split], compute)[0]["overall"] == 3.0
    split.write_text('{"annotations": []}')  # a regenerated split file
    assert cached_rows(run, [split], compute)[0]["overall"] == 4.0
    assert cached_rows(run, [split], compute)[0]["overall"] == 4.0 and len(calls) == 4


def test_a_damaged_rows_file_is_evaluated_again(tmp_path):
    run, split = _run(tmp_path)
    (run / ROWS_FILE).write_text("{not json")
    assert cached_rows(run, [split], lambda: [{"overall": 7.0}]) == [{"overall": 7.0}]
    saved = json.loads((run / ROWS_FILE).read_text())
    assert saved["rows"] == [{"overall": 7.0}] and len(saved["key"]) == 64
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary left


def _rows():
    acc = {  # (method, seed) -> {question type: accuracy} on test
        ("baseline", 0): {"how many": 40.0, "what shape is the": 90.0},
        ("baseline", 1): {"how many": 44.0, "what shape is the": 92.0},
        ("pkd", 0): {"how many": 41.0, "what shape is the": 90.0},
        ("pkd", 1): {"how many": 47.0, "what shape is the": 91.0},
    }
    return [{"method": m, "seed": s, "split": "test", "overall": 0.0, "perQuestionType": a}
            for (m, s), a in acc.items()]


def test_family_summary_by_hand():
    by = {(s["method"], s["question_type"]): s for s in family_summary(_rows())}
    count = by[("pkd", "how many")]
    # differences 1 and 3: mean 2, sd sqrt(2), hw = t_{0.975,1} (12.706) * sqrt(2) / sqrt(2)
    assert count["mean"] == pytest.approx(44.0) and count["diff_mean"] == pytest.approx(2.0)
    assert count["diff_ci_low"] == pytest.approx(2.0 - 12.7062, abs=1e-3)
    assert count["diff_ci_high"] == pytest.approx(2.0 + 12.7062, abs=1e-3)
    assert by[("baseline", "how many")]["diff_mean"] is None  # the reference itself
    assert family_cell(by[("pkd", "what shape is the")]) == "90.5 (-0.5 [-6.9, +5.9])"
    assert family_cell(by[("baseline", "how many")]) == "42.0"


def test_families_markdown_and_its_guards():
    text = families_markdown({"rows": _rows()})
    assert "### test" in text and "### test_iid" not in text and "2 seeds" in text
    assert "| pkd " in text and "44.0 (+2.0 [-10.7, +14.7])" in text
    old = [{k: v for k, v in r.items() if k != "perQuestionType"} for r in _rows()]
    assert families_markdown({"rows": old}) == ""  # rows of an older pkd: no table
    unpaired = [r for r in _rows() if (r["method"], r["seed"]) != ("baseline", 1)]
    with pytest.raises(PkdError, match="seeds differ"):
        family_summary(unpaired)
