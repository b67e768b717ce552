"""The demo's results table and summary: ``results.md`` is the table of ``results.json``;
intervals over seeds and paired differences checked by hand."""

from __future__ import annotations

import json

import pytest

from pkd.demo import reference_of, results_table, save_results, summarize
from pkd.demo.summary import delta_cell

pytest.register_assert_rewrite("demo_tables")
from demo_tables import (  # noqa: E402
    assert_markdown_matches,
    fake_results,
    markdown_rows,
    paired_rows,
)


@pytest.mark.parametrize("seeds", [1, 3])
def test_results_md_is_the_table_of_results_json(tmp_path, seeds):
    save_results(fake_results(seeds=seeds), tmp_path)
    assert_markdown_matches(tmp_path, seeds)
    assert f"{seeds} seed{'s' if seeds > 1 else ''}" in (tmp_path / "results.md").read_text()


def test_summary_intervals_and_paired_differences_by_hand(tmp_path):
    """pkd: mean 26, s = 1, hw = 4.302653 / sqrt(3) = 2.48; pkd - baseline: mean 1.5, s = 0.5,
    hw = 4.302653 * 0.5 / sqrt(3) = 1.24 -> [+0.26, +2.74]; distillvlm - student = +1 exactly."""
    results = {"elapsed_s": 1.0, "rows": paired_rows(3), "models": {}}
    save_results(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    by = {s["method"]: s for s in saved["summary"]}
    assert saved["summary"] == summarize(results["rows"])
    pkd, base, dvlm = by["pkd"], by["baseline"], by["distillvlm"]
    assert (pkd["mean"], pkd["n"], pkd["seeds"], pkd["reference"]) == (
        26.0, 3, [0, 1, 2], "baseline")
    assert (pkd["ci_low"], pkd["ci_high"]) == pytest.approx((26 - 2.484138, 26 + 2.484138),
                                                            abs=1e-6)
    assert pkd["diff_mean"] == pytest.approx(1.5)
    assert (pkd["diff_ci_low"], pkd["diff_ci_high"]) == pytest.approx((0.257931, 2.742069),
                                                                      abs=1e-6)
    assert base["reference"] is None and base["diff_mean"] is None
    assert by["student"]["reference"] is None
    assert (dvlm["reference"], dvlm["diff_mean"]) == ("student", pytest.approx(1.0))
    assert (dvlm["diff_ci_low"], dvlm["diff_ci_high"]) == pytest.approx((1.0, 1.0))
    _, header, rows, notes = results_table(saved)
    cells = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert cells["pkd"]["overall (mean ± 95% CI)"] == "26.00 ± 2.48"
    assert cells["pkd"]["paired Δ"] == "vs baseline +1.50 [+0.26, +2.74]"
    assert cells["distillvlm"]["paired Δ"] == "vs student +1.00 [+1.00, +1.00]"
    assert cells["baseline"]["paired Δ"] == cells["student"]["paired Δ"] == ""
    assert cells["pkd"]["seeds"] == "3"
    assert "95% Student-t interval over seeds" in notes[0]


def test_one_seed_has_a_difference_but_no_interval(tmp_path):
    save_results({"elapsed_s": 1.0, "rows": paired_rows(1), "models": {}}, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "±" not in text and "[" not in text
    table = {r["method"]: r for r in markdown_rows(text)}
    assert table["pkd"]["overall"] == "26.00" and table["pkd"]["paired Δ"] == "vs baseline +2.00"
    saved = json.loads((tmp_path / "results.json").read_text())["summary"]
    pkd = next(s for s in saved if s["method"] == "pkd")
    assert (pkd["ci_low"], pkd["diff_mean"], pkd["diff_ci_low"]) == (None, 2.0, None)


def test_reference_mapping_and_missing_reference():
    assert [reference_of(m) for m in ("baseline", "student", "pkd", "pkd-mkd3", "teacher",
                                      "distillvlm", "distillvlm-queue256", "baseline-foundation")
            ] == [None, None, "baseline", "baseline", "baseline", "student", "student", "baseline"]
    rows = [r for r in paired_rows(3) if r["method"] == "pkd"]
    (s,) = summarize(rows)
    assert s["reference"] == "baseline" and s["diff_mean"] is None and delta_cell(s) == ""
    _, _, _, notes = results_table({"rows": rows})
    assert "paired Δ blank: reference row not run (baseline)" in notes


def test_unpaired_seeds_are_refused_in_one_line():
    from pkd.errors import PkdError

    rows = [r for r in paired_rows(3) if not (r["method"] == "baseline" and r["seed"] == 2)]
    with pytest.raises(PkdError) as err:
        summarize(rows)
    assert str(err.value) == ("paired difference pkd (test) - baseline: seeds differ "
                              "(pkd (test): [0, 1, 2], baseline: [0, 1])")
