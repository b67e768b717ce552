"""`pkd demo` on a tiny benchmark: the whole chain runs and writes the results contract."""

from __future__ import annotations

import json

import pytest
import torch

from pkd.data.synth import SynthConfig
from pkd.demo import (
    ABLATIONS,
    KNOWN,
    MAIN_METHODS,
    DemoConfig,
    Paths,
    overrides,
    results_markdown,
    run_demo,
    save_results,
    summarize,
)
from pkd.train.config import load_config


def test_demo_chain_writes_results_json(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    synth = SynthConfig(train_images=60, val_images=16, test_images=20, test_iid_images=20,
                        caption_images=40, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", seeds=1, methods=("baseline",), synth=synth,
                     pretrain_epochs=1, train_epochs=1)
    results = run_demo(cfg)
    saved = json.loads((cfg.out / "results.json").read_text())
    assert saved == results and isinstance(saved["elapsed_s"], float)
    assert {(r["method"], r["seed"], r["split"]) for r in saved["rows"]} == {
        ("baseline", 0, "test"), ("baseline", 0, "test_iid")}
    for row in saved["rows"]:
        assert 0.0 <= row["overall"] <= 100.0
        assert set(row["perAnswerType"]) <= {"yes/no", "number", "other"}
        assert row["ms_per_question"] > 0 and 0 <= row["prior"] <= 100
    assert (cfg.out / "results.png").stat().st_size > 0
    assert_markdown_matches(cfg.out, seeds=1)
    assert saved["models"]["baseline"] > 0
    stages = saved["stage_seconds"]
    assert set(stages) == {"prepare (data, pre-training, extraction)", "baseline-seed0", "evaluation"}
    assert sum(stages.values()) <= saved["elapsed_s"] + 0.5
    probes = saved["region_probes"]
    assert set(probes) == {"regions", "teacher_regions"}
    assert all(0 <= probes[s][a]["accuracy"] <= 100 for s in probes for a in ("shape", "color"))
    assert [s["n"] for s in summarize(saved["rows"])] == [1, 1]
    again = run_demo(cfg)  # resumable: finished stages are skipped, same numbers
    def scores(rows):
        return [{k: v for k, v in r.items() if k != "ms_per_question"} for r in rows]

    gold = {r["split"]: r["prior_gold"] for r in saved["rows"]}
    assert gold["test"] < gold["test_iid"]  # the favourites are rare in the shifted split

    assert scores(again["rows"]) == scores(results["rows"])


def test_every_demo_run_spec_is_a_valid_config(tmp_path):
    """Each row of the table (and the runs they build on) resolves to a typed config that
    differs from its reference run exactly where the ablation says."""
    cfg = DemoConfig(out=tmp_path)
    paths = Paths(tmp_path / "data", tmp_path / "foundation", tmp_path / "stores")

    def resolved(name):
        return load_config(None, [f"{k}={v}" for k, v in overrides(cfg, paths, name, 1).items()])

    configs = {n: resolved(n) for n in (*KNOWN, "predictors")}
    assert set(MAIN_METHODS) | set(ABLATIONS) <= set(KNOWN)
    assert configs["pkd-mkd3"].method.pkd.lambda_mkd == 3.0
    assert configs["baseline-foundation"].model.use_foundation_features is True
    assert configs["baseline"].model.use_foundation_features is False
    assert configs["pkd-memory"].method.pkd.use_memory is False
    assert configs["pkd-model-kd"].method.pkd.use_model_kd is False
    assert configs["pkd-predictors-off"].method.pkd.use_predictors is False
    d = {n: c.method.distill for n, c in configs.items() if n.startswith("distillvlm")}
    assert (d["distillvlm-att"].alpha, d["distillvlm-nce"].beta, d["distillvlm-kd"].gamma) == (0, 0, 0)
    assert d["distillvlm"].queue_size == 4096
    assert (d["distillvlm-queue256"].queue_size, d["distillvlm-queue16384"].queue_size) == (256, 16384)
    assert all(c.run.seed == 1 for c in configs.values())
    assert len({c.run.out_dir for c in configs.values()}) == len(configs)  # no shared run folder


def test_cli_prints_the_table_of_a_finished_demo(tmp_path, monkeypatch, capsys):
    """``pkd demo`` prints one row per (method, split) with the prior share and model size."""
    import pkd.demo
    from pkd.cli import main

    rows = [{"method": m, "seed": s, "split": sp, "overall": 50.0 + s, "perAnswerType":
             {"number": 40.0, "other": 30.0, "yes/no": 60.0}, "ms_per_question": 0.02,
             "prior": 70.0 - s, "prior_gold": 5.0 if sp == "test" else 60.0}
            for m in ("baseline", "pkd") for s in (0, 1) for sp in ("test", "test_iid")]
    results = {"elapsed_s": 1.0, "rows": rows, "models": {"baseline": 1234, "pkd": 5678}}
    seen = {}

    def fake_run_demo(cfg):
        seen["cfg"] = cfg
        return results

    monkeypatch.setattr(pkd.demo, "run_demo", fake_run_demo)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--ablations"]) == 0
    out = capsys.readouterr().out
    assert seen["cfg"].seeds == 2 and "pkd-memory" in seen["cfg"].methods
    assert "50.50 ± 0.50" in out and "69.5" in out and "5,678" in out
    assert "gold test 5.0%, test_iid 60.0%" in out


def test_cli_methods_option_and_unknown_method(tmp_path, monkeypatch, capsys):
    import pkd.demo
    from pkd.cli import main

    seen = {}
    monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg: seen.setdefault("cfg", cfg) and {
        "elapsed_s": 0.0, "rows": [], "models": {}})
    main(["demo", "--out", str(tmp_path), "--methods", "pkd, pkd-mkd3"])
    assert seen["cfg"].methods == ("pkd", "pkd-mkd3")
    monkeypatch.undo()
    assert main(["demo", "--out", str(tmp_path), "--methods", "pkd-typo"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'pkd-typo'" in err and len(err.strip().splitlines()) == 1


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
    """The body rows of the (single) Markdown table in ``text``, as header -> cell."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
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
        overall = r["overall (mean ± std)" if seeds > 1 else "overall"]
        mean, _, std = overall.partition(" ± ")
        assert float(mean) == pytest.approx(s["mean"], abs=0.005)
        assert float(std or 0) == pytest.approx(s["std"], abs=0.005)
        for t, v in s["perAnswerType"].items():
            assert float(r[t]) == pytest.approx(v, abs=0.005)
        assert float(r["prior %"]) == pytest.approx(s["prior"], abs=0.05)
        assert float(r["µs/question"]) == pytest.approx(1000 * s["ms_per_question"], abs=0.5)
        size = saved["models"].get(s["method"])
        assert r["params"] == (f"{size:,}" if size else "")


@pytest.mark.parametrize("seeds", [1, 3])
def test_results_md_is_the_table_of_results_json(tmp_path, seeds):
    save_results(fake_results(seeds=seeds), tmp_path)
    assert_markdown_matches(tmp_path, seeds)
    assert f"{seeds} seed{'s' if seeds > 1 else ''}" in (tmp_path / "results.md").read_text()


def test_piped_demo_prints_full_names_at_any_width(tmp_path, monkeypatch):
    """In CI / a pipe (not a terminal) at 40 columns: every name whole, no ``±`` for one seed."""
    from typer.testing import CliRunner

    import pkd.demo
    from pkd.cli import app

    for seeds in (1, 2):
        results = fake_results(seeds=seeds)
        monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg, r=results: r)
        got = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", str(seeds)],
                                 env={"COLUMNS": "40", "TERM": "dumb"})
        assert got.exit_code == 0, got.output
        out = got.output
        assert "…" not in out and ("±" in out) == (seeds > 1)
        table = markdown_rows(out)
        assert {(r["method"], r["split"]) for r in table} == {
            (m, sp) for m in LONG for sp in ("test", "test_iid")}
        assert "gold test 5.0%, test_iid 60.0%" in out


@pytest.mark.parametrize("width", [200, 40])
def test_terminal_table_never_cuts_a_name(width):
    """On a terminal: a rich table when it fits whole, else the plain table — never ``basel…``."""
    import io

    from rich.console import Console

    from pkd.cli.report import print_table
    from pkd.demo import results_table

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=width, color_system=None)
    print_table(*results_table(fake_results(seeds=2)), console=console)
    out = buf.getvalue()
    assert "…" not in out and "± " in out
    assert ("┃" in out) == (width == 200)  # rich's box only when every cell fits
    for name in (*LONG, "test_iid"):
        assert name in out
    if width == 200:
        assert max(len(ln) for ln in out.splitlines()) <= width
