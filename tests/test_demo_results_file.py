"""results.json accumulates over invocations; intervals over seeds x data draws; grounding checks;
`pkd results` rebuilds every table from the file (pkd.demo.results_file, pkd.demo.draws)."""

from __future__ import annotations

import json
import os

import pytest

from pkd.cli import main
from pkd.demo import checks_table, results_markdown, results_table, save_results, summarize
from pkd.demo.draws import paired_over_runs
from pkd.demo.families import families_markdown
from pkd.demo.results_file import BEGIN, END, write_atomic
from pkd.errors import PkdError
from pkd.stats import mean_ci

T1 = 12.706204736174698  # t_{0.975, 1}
T2 = 4.302652729749464  # t_{0.975, 2}


def row(method: str, seed: int, overall: float, split: str = "test", draw: int | None = None
        ) -> dict:
    r = {"method": method, "seed": seed, "split": split, "overall": overall,
         "perAnswerType": {"other": overall}, "perQuestionType": {"how many": overall},
         "ms_per_question": 0.01, "prior": 50.0, "prior_gold": 5.0}
    if draw is not None:
        r["data_seed"] = draw
    return r


def invocation(rows: list[dict], **fields) -> dict:
    return {"elapsed_s": 1.0, "rows": rows, "models": {}, "preset": "quick",
            "machine": {"cpu": "test cpu", "cores": 2}, **fields}


def test_rows_accumulate_over_invocations_and_a_rerun_row_replaces_its_key(tmp_path):
    save_results(invocation([row("baseline", 0, 40.0), row("baseline", 1, 41.0)],
                            models={"baseline": 10}, stage_seconds={"prep": 5.0, "a": 1.0}),
                 tmp_path)
    got = save_results(invocation([row("pkd", 0, 42.0), row("pkd", 1, 44.0),
                                   row("baseline", 1, 43.0)],
                                  elapsed_s=7.0, models={"pkd": 20},
                                  stage_seconds={"prep": 0.1, "b": 2.0}), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == got  # the caller's dict is the merged file
    assert [(r["method"], r["seed"], r["overall"]) for r in saved["rows"]] == [
        ("baseline", 0, 40.0), ("baseline", 1, 43.0), ("pkd", 0, 42.0), ("pkd", 1, 44.0)]
    assert saved["models"] == {"baseline": 10, "pkd": 20}
    assert saved["stage_seconds"] == {"prep": 0.1, "a": 1.0, "b": 2.0}
    assert saved["elapsed_s"] == 7.0
    assert [(i["methods"], i["elapsed_s"]) for i in saved["invocations"]] == [
        (["baseline"], 1.0), (["pkd", "baseline"], 7.0)]
    assert all(i["finished"] and i["preset"] == "quick" for i in saved["invocations"])
    assert saved["summary"] == summarize(saved["rows"])
    assert "| pkd " in (tmp_path / "results.md").read_text()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_unpaired_seeds_across_invocations_keep_the_rows_and_say_so(tmp_path):
    save_results(invocation([row("baseline", 0, 40.0), row("baseline", 1, 41.0)]), tmp_path)
    with pytest.raises(PkdError, match=r"seeds differ .*rows saved in") as err:
        save_results(invocation([row("pkd", 0, 42.0)]), tmp_path)
    assert "\n" not in str(err.value)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == 3 and len(saved["invocations"]) == 2


def test_rows_without_data_seed_are_draw_0(tmp_path):
    old = {"elapsed_s": 3.0, "rows": [row("baseline", 0, 40.0), row("baseline", 1, 41.0)]}
    (tmp_path / "results.json").write_text(json.dumps(old))  # a file of an older pkd
    save_results(invocation([row("baseline", 1, 45.0, draw=0)]), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["seed"], r["overall"]) for r in saved["rows"]] == [(0, 40.0), (1, 45.0)]
    (s,) = saved["summary"]
    assert (s["n"], s["seeds"], s["data_seeds"], s["runs"]) == (2, [0, 1], [0], 2)
    assert [i["finished"] for i in saved["invocations"]][0] is None  # the old file's own run


def test_a_damaged_results_json_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "results.json"
    for text, what in (("{not json", "not valid JSON"), ('{"elapsed_s": 1}', 'no "rows"')):
        path.write_text(text)
        with pytest.raises(PkdError) as err:
            save_results(invocation([row("baseline", 0, 40.0)]), tmp_path)
        assert str(path) in str(err.value) and what in str(err.value)
        assert "\n" not in str(err.value) and path.read_text() == text


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "results.md", "old\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.md"]


def draws_rows() -> list[dict]:
    """pkd on 2 draws x 3 seeds: draw 0 40, 42, 44 (mean 42), draw 1 50, 52, 48 (mean 50);
    baseline 39, 40, 41 and 47, 49, 45: pkd - baseline per draw 2 and 3."""
    pkd = {0: [40.0, 42.0, 44.0], 1: [50.0, 52.0, 48.0]}
    base = {0: [39.0, 40.0, 41.0], 1: [47.0, 49.0, 45.0]}
    return [row(m, s, v[d][s], draw=d) for m, v in (("baseline", base), ("pkd", pkd))
            for d in (0, 1) for s in range(3)]


def test_two_stage_interval_over_draws_by_hand():
    """Draw means 42, 50: mean 46, sd √32, hw = t_{.975,1} √32 / √2 = 4 t; the paired
    difference: draw means 2, 3, mean 2.5, sd √0.5, hw = t_{.975,1} / 2."""
    by = {s["method"]: s for s in summarize(draws_rows())}
    pkd = by["pkd"]
    assert (pkd["mean"], pkd["n"], pkd["seeds"], pkd["data_seeds"], pkd["runs"]) == (
        pytest.approx(46.0), 2, [0, 1, 2], [0, 1], 6)
    assert (pkd["ci_low"], pkd["ci_high"]) == pytest.approx((46 - 4 * T1, 46 + 4 * T1))
    assert pkd["diff_mean"] == pytest.approx(2.5)
    assert (pkd["diff_ci_low"], pkd["diff_ci_high"]) == pytest.approx((2.5 - T1 / 2,
                                                                       2.5 + T1 / 2))
    title, header, rows, notes = results_table({"rows": draws_rows()})
    assert title == "pkd demo — VQA accuracy (%), 3 seeds x 2 data draws"
    cells = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert (cells["pkd"]["seeds"], cells["pkd"]["draws"]) == ("3", "2")
    assert "interval over the draw means" in notes[0]
    assert "x 2 data draws" in families_markdown({"rows": draws_rows()})


def test_one_draw_is_the_t_interval_over_seeds():
    values = [40.0, 42.5, 44.0, 41.0]
    rows = [row("baseline", s, v) for s, v in enumerate(values)]
    (s,) = summarize(rows)
    e = mean_ci(values)
    assert (s["mean"], s["ci_low"], s["ci_high"], s["n"]) == (e.mean, e.low, e.high, e.n)
    assert summarize([{**r, "data_seed": 0} for r in rows]) == [s]
    _, header, _, _ = results_table({"rows": rows})
    assert "draws" not in header


def test_paired_difference_over_draws_refuses_unpaired_runs():
    a = {(s, d): 10.0 + s + d for s in range(2) for d in range(3)}
    b = {k: v - 1.0 - k[1] for k, v in a.items()}  # per draw: +1, +2, +3
    d = paired_over_runs(a, b)
    assert (d.mean, d.n) == (pytest.approx(2.0), 3)
    assert (d.low, d.high) == pytest.approx((2.0 - T2 / 3 ** 0.5, 2.0 + T2 / 3 ** 0.5))
    with pytest.raises(PkdError, match="seeds of data draw 2 differ"):
        paired_over_runs(a, {k: v for k, v in b.items() if k != (1, 2)}, names=("pkd", "base"))
    with pytest.raises(PkdError, match="data draws differ"):
        paired_over_runs(a, {k: v for k, v in b.items() if k[1] < 2})


def checks_rows(seeds: int) -> list[dict]:
    """pkd beats baseline-masked (+5, +6, +7), loses to baseline-prior-corrected (-3, -4, -5);
    distillvlm - student is -1, +2, 0 (n.s.)."""
    overall = {"pkd": [50.0, 51.0, 52.0], "baseline-masked": [45.0, 45.0, 45.0],
               "baseline-prior-corrected": [53.0, 55.0, 57.0],
               "student": [40.0, 40.0, 40.0], "distillvlm": [39.0, 42.0, 40.0]}
    return [row(m, s, v[s]) for m, v in overall.items() for s in range(seeds)]


def test_checks_table_verdicts():
    title, header, rows, notes = checks_table({"rows": checks_rows(3)})
    assert title.startswith("grounding checks")
    got = {(r[0], r[2]): dict(zip(header, r, strict=True)) for r in rows}
    assert list(got) == [("pkd", "baseline-masked"), ("pkd", "baseline-prior-corrected"),
                         ("distillvlm", "student")]
    assert [got[k]["verdict"] for k in got] == ["beats", "loses", "n.s."]
    assert got[("pkd", "baseline-masked")]["paired Δ (95% CI)"] == "+6.00 [+3.52, +8.48]"
    assert got[("pkd", "baseline-masked")]["n"] == "3"
    _, _, one, _ = checks_table({"rows": checks_rows(1)})
    assert {r[-1] for r in one} == {"anecdote"}
    assert checks_table({"rows": [row("pkd", 0, 1.0)]})[2] == []
    text = results_markdown({"rows": checks_rows(3)})
    assert "### grounding checks" in text and " loses |" in text
    assert "grounding checks" not in results_markdown({"rows": [row("pkd", 0, 1.0)]})


def test_pkd_results_rebuilds_the_tables_and_the_readme(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    save_results(invocation(checks_rows(3)), out)
    written = (out / "results.md").read_text()
    for name in ("results.md", "results_families.md", "results.png"):
        (out / name).unlink()
    readme = tmp_path / "README.md"
    readme.write_text(f"# pkd\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    assert main(["results", str(out), "--readme", str(readme)]) == 0
    assert (out / "results.md").read_text() == written
    assert (out / "results_families.md").is_file() and (out / "results.png").stat().st_size
    # the README holds the main table and a link to the whole results.md (relative to it)
    main_table = written.split("\n### ")[0]
    block = main_table + ("\nGrounding checks, blind rules, targets and the per-family tables: "
                          "[demo/results.md](demo/results.md) (`pkd results` writes both from "
                          "the run's `results.json`).\n")
    assert "### grounding checks" in written and "grounding checks —" not in main_table
    assert readme.read_text() == f"# pkd\n\nintro\n\n{BEGIN}\n{block}{END}\n\nafter\n"
    assert main(["results", str(out), "--readme", str(readme)]) == 0  # idempotent
    assert readme.read_text() == f"# pkd\n\nintro\n\n{BEGIN}\n{block}{END}\n\nafter\n"
    printed = capsys.readouterr().out
    assert "grounding checks" in printed and "baseline-masked" in printed


def error_of(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_pkd_results_errors_are_one_line(tmp_path, capsys):
    assert str(tmp_path / "results.json") in error_of(capsys, ["results", str(tmp_path)])
    (tmp_path / "results.json").write_text("{not json")
    assert "not valid JSON" in error_of(capsys, ["results", str(tmp_path)])
    (tmp_path / "results.json").unlink()
    save_results(invocation([row("baseline", 0, 40.0)]), tmp_path)
    (tmp_path / "results.md").unlink()
    readme = tmp_path / "README.md"
    readme.write_text(f"# pkd\n{END}\n{BEGIN}\n")  # markers in the wrong order
    assert BEGIN in error_of(capsys, ["results", str(tmp_path), "--readme", str(readme)])
    assert not (tmp_path / "results.md").exists()  # nothing written before the error
    missing = tmp_path / "NOPE.md"
    assert str(missing) in error_of(capsys, ["results", str(tmp_path), "--readme", str(missing)])


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os
    import stat

    from pkd.demo.results_file import write_atomic

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "results.md", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone leaves 0600
    assert path.read_text() == "x\n" and not list(tmp_path.glob(".*.tmp"))
