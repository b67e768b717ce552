"""`pkd demo` on a tiny benchmark: the whole chain runs and writes the results contract."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from pkd.data.synth import SynthConfig
from pkd.demo import (
    ABLATIONS,
    CONTROLS,
    KNOWN,
    MAIN_METHODS,
    OWN_REGIONS,
    POSTHOC_ROWS,
    SPLITS,
    DemoConfig,
    Paths,
    delta_cell,
    overrides,
    reference_of,
    results_markdown,
    results_table,
    run_demo,
    save_results,
    summarize,
)
from pkd.demo.vlm import PREDICTOR_RUNS
from pkd.train.config import load_config


def test_demo_chain_writes_results_json(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    synth = SynthConfig(train_images=60, val_images=16, test_images=20, test_iid_images=20,
                        test_comp_images=20, detection_train_images=10, detection_val_images=5,
                        caption_images=40, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", seeds=1, methods=("baseline",), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, train_epochs=1,
                     student_epochs=1, teacher_epochs=1)
    results = run_demo(cfg)
    saved = json.loads((cfg.out / "results.json").read_text())
    assert saved == results and isinstance(saved["elapsed_s"], float)
    assert {(r["method"], r["seed"], r["split"]) for r in saved["rows"]} == {
        ("baseline", 0, "test"), ("baseline", 0, "test_comp"), ("baseline", 0, "test_iid")}
    for row in saved["rows"]:
        assert 0.0 <= row["overall"] <= 100.0
        assert set(row["perAnswerType"]) <= {"yes/no", "number", "other"}
        assert row["ms_per_question"] > 0 and 0 <= row["prior"] <= 100
        assert row["perQuestionType"] and all(0 <= v <= 100 for v in row["perQuestionType"].values())
    assert (cfg.out / "results.png").stat().st_size > 0
    assert "### test_comp" in (cfg.out / "results_families.md").read_text()
    assert_markdown_matches(cfg.out, seeds=1)
    assert saved["models"]["baseline"] > 0
    stages = saved["stage_seconds"]
    assert set(stages) == {"prepare (data, pre-training, extraction)", "baseline-seed0", "evaluation"}
    assert sum(stages.values()) <= saved["elapsed_s"] + 0.5
    assert set(saved["draws"]) == {"0"}
    blind = saved["draws"]["0"]["blind_rules"]
    assert blind["best blind"]["test"] >= blind["favourite"]["test"]
    assert "blind rules" in (cfg.out / "results.md").read_text()
    probes = saved["draws"]["0"]["region_probes"]
    assert set(probes) == {"regions", "teacher_regions"}
    assert all(0 <= probes[s][a]["accuracy"] <= 100 for s in probes for a in ("shape", "color"))
    assert [s["n"] for s in summarize(saved["rows"])] == [1, 1, 1]
    again = run_demo(cfg)  # resumable: finished stages are skipped, same numbers
    def scores(rows):
        return [{k: v for k, v in r.items() if k != "ms_per_question"} for r in rows]

    gold = {r["split"]: r["prior_gold"] for r in saved["rows"]}
    assert gold["test"] < gold["test_iid"]  # the favourites are rare in the shifted split

    assert scores(again["rows"]) == scores(results["rows"])
    assert again["rows"] == results["rows"]  # the finished run's rows were reused, not re-scored
    assert (cfg.out / "draw0" / "runs" / "baseline-seed0" / "demo_rows.json").is_file()


def test_demo_pkd_row_trains_stage_2_from_the_cached_predictions(tmp_path, monkeypatch):
    """The pkd row: stage-1 predictors, their outputs cached once per seed (``predicted``
    store), stage 2 reading the cache on every step."""
    from pkd.stores import FeatureStore
    from pkd.train.tasks.pkd import PKDTask

    torch.set_num_threads(1)
    synth = SynthConfig(train_images=40, val_images=12, test_images=12, test_iid_images=12,
                        test_comp_images=12, detection_train_images=8, detection_val_images=4,
                        caption_images=24, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", methods=("pkd", "pkd-item"), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, train_epochs=1,
                     student_epochs=1, teacher_epochs=1)
    read = []
    predict = PKDTask.predict
    monkeypatch.setattr(PKDTask, "predict", lambda self, batch: read.append(
        "predicted_vision" in batch) or predict(self, batch))
    results = run_demo(cfg)
    assert {r["method"] for r in results["rows"]} == {"pkd", "pkd-item"}
    store = FeatureStore.open(cfg.out / "draw0" / "stores" / "predicted-seed0.zarr", kind="predicted")
    assert store.complete and store.spec.dims["vision_tokens"] == 8
    assert read and all(read)
    # the item reading: the same frozen predictors predicted every split D is validated and
    # scored on, and its rows were scored on them
    for split in ("val", *SPLITS):
        made = FeatureStore.open(cfg.out / "draw0" / "stores" / f"predicted-seed0-{split}.zarr",
                                 kind="predicted")
        assert made.complete and made.spec.producer["split"] == split
        assert made.spec.producer["predictors_digest"] == store.spec.producer["predictors_digest"]
    assert {r["split"] for r in results["rows"] if r["method"] == "pkd-item"} == set(SPLITS)


def test_demo_alignment_ablation_rows_run_on_the_teachers_own_boxes(tmp_path):
    """teacher-own / distillvlm-unaligned: a teacher regions store from the teacher's simulated
    detector, the teacher adapted on it, the student distilled from it online."""
    from pkd.stores import FeatureStore

    torch.set_num_threads(1)
    synth = SynthConfig(train_images=40, val_images=12, test_images=12, test_iid_images=12,
                        test_comp_images=12, detection_train_images=8, detection_val_images=4,
                        caption_images=24, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", methods=("distillvlm-unaligned",), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, train_epochs=1,
                     student_epochs=1, teacher_epochs=1)
    results = run_demo(cfg)
    assert {r["method"] for r in results["rows"]} == {"distillvlm-unaligned"}
    store = FeatureStore.open(cfg.out / "draw0" / "stores" / OWN_REGIONS, kind="regions")
    assert store.complete and store.spec.producer["detector"].startswith("simulated:teacher:")
    adapted = json.loads((cfg.out / "draw0" / "runs" / "teacher-own-seed0" / "stores.json").read_text())
    assert adapted["regions"]["producer"]["simulated"] is True  # adapted on its own boxes
    assert not (cfg.out / "draw0" / "stores" / "teacher-seed0.zarr").exists()  # online: no cache


def test_every_demo_run_spec_is_a_valid_config(tmp_path):
    """Each row of the table (and the runs they build on) resolves to a typed config that
    differs from its reference run exactly where the ablation says."""
    cfg = DemoConfig(out=tmp_path)
    paths = Paths(tmp_path / "data", tmp_path / "foundation", tmp_path / "stores")

    def resolved(name):
        return load_config(None, [f"{k}={v}" for k, v in overrides(cfg, paths, name, 1).items()])

    configs = {n: resolved(n) for n in (*KNOWN, "predictors", "predictors-cross", "predictors-mmd",
                                        "predictors-emb", *PREDICTOR_RUNS)
               if n not in CONTROLS and n not in POSTHOC_ROWS}  # no run of their own
    cross = configs["pkd-cross"]
    assert cross.method.pkd.predictor_inputs == "cross" == configs["predictors-cross"].method.pkd.predictor_inputs
    assert cross.method.pkd.predictors.endswith("predictors-cross-seed1")
    assert cross.data.predicted != configs["pkd"].data.predicted  # its own cache
    assert set(MAIN_METHODS) | set(ABLATIONS) <= set(KNOWN)
    assert configs["pkd-mkd3"].method.pkd.lambda_mkd == 3.0
    assert configs["pkd-lmh"].method.pkd.vqa_loss == "lmh" and reference_of("pkd-lmh") == "lmh"
    assert configs["pkd-lmh"].data.predicted == configs["pkd"].data.predicted  # one stage 1
    assert configs["pkd-memory-train"].method.pkd.memory_at_test is False
    assert configs["pkd-memory-train"].data.predicted == configs["pkd"].data.predicted
    mmd = configs["pkd-mmd"]
    assert mmd.method.pkd.divergence == "mmd" == configs["predictors-mmd"].method.pkd.divergence
    assert mmd.method.pkd.predictors.endswith("predictors-mmd-seed1")
    assert mmd.data.predicted not in (configs["pkd"].data.predicted, configs["pkd-cross"].data.predicted)
    assert {n: configs[n].method.name for n in ("question-only", "rubi", "lmh")} == {
        "question-only": "question-only", "rubi": "rubi", "lmh": "lmh"}
    assert configs["baseline-foundation"].model.use_foundation_features is True
    vlm = {n: configs[n] for n in ("finetune", "pkd-vlm", "pkd-vlm-memory", "lwf-oracle")}
    assert {c.model.arch for c in vlm.values()} == {"vlm"}
    assert vlm["pkd-vlm"].method.pkd.predictors.endswith("pkd-vlm-predictors-seed1")
    assert vlm["pkd-vlm-memory"].method.pkd.use_memory is False
    assert configs["pkd-vlm-predictors"].method.name == "pkd-vlm-predictors"
    assert reference_of("pkd-vlm") == "finetune" == reference_of("lwf-oracle")
    from pkd.demo import needs

    assert needs("pkd-vlm-mlm-real") == ("pkd-vlm-predictors",) and needs("pkd-vlm-predictors") == ()
    for row, weight in (("pkd-vlm-noitm", "lambda_itm"), ("pkd-vlm-nodiv", "lambda_div")):
        stage1, stage2 = configs[f"{row}-predictors"].method.pkd, configs[row]
        assert getattr(stage1, weight) == 0.0 and needs(row) == (f"{row}-predictors",)
        assert stage2.method.pkd.predictors.endswith(f"{row}-predictors-seed1")
        headline = configs["pkd-vlm-mlm-real"].method.pkd
        assert (stage2.method.pkd.mkd_heads, stage2.method.pkd.mkd_vision) == (
            headline.mkd_heads, headline.mkd_vision)
    assert configs["baseline"].model.use_foundation_features is False
    for item in ("pkd-item", "pkd-item-full"):  # D fed its item's predicted e_v, e_t
        m = configs[item].model
        assert (m.use_foundation_features, m.foundation_inputs) == (True, "predicted")
        assert configs[item].data.predicted == configs["pkd"].data.predicted  # pkd's stage 1
    p = configs["pkd-item"].method.pkd
    assert (p.use_memory, p.use_model_kd) == (False, False)  # L_vqa only: the item reading alone
    p = configs["pkd-item-full"].method.pkd
    assert (p.use_memory, p.use_model_kd) == (True, True)
    assert configs["baseline-foundation"].model.foundation_inputs == "real"
    emb = configs["pkd-item-emb"]
    assert (emb.method.pkd.divergence_on, emb.method.pkd.divergence) == ("embeddings", "cosine")
    assert emb.method.pkd.divergence_on == configs["predictors-emb"].method.pkd.divergence_on
    assert emb.method.pkd.predictors.endswith("predictors-emb-seed1")
    assert emb.model.foundation_inputs == "predicted"
    assert emb.data.predicted not in (configs["pkd"].data.predicted, mmd.data.predicted)
    assert configs["pkd"].method.pkd.divergence_on == "tokens"
    assert configs["pkd-memory"].method.pkd.use_memory is False
    assert configs["pkd-model-kd"].method.pkd.use_model_kd is False
    assert configs["pkd-predictors-off"].method.pkd.use_predictors is False
    d = {n: c.method.distill for n, c in configs.items() if n.startswith("distillvlm")}
    assert (d["distillvlm-att"].alpha, d["distillvlm-nce"].beta, d["distillvlm-kd"].gamma) == (0, 0, 0)
    assert d["distillvlm"].queue_size == 4096
    assert (d["distillvlm-queue256"].queue_size, d["distillvlm-queue16384"].queue_size) == (256, 16384)
    own, unaligned = configs["teacher-own"], configs["distillvlm-unaligned"]
    assert own.method.name == "teacher-adapt" and own.data.teacher_regions.endswith(OWN_REGIONS)
    assert unaligned.data.teacher_regions == own.data.teacher_regions and unaligned.data.teacher == ""
    assert (unaligned.method.distill.alignment, unaligned.method.distill.online_teacher) == (
        "index", True) and d["distillvlm"].alignment == "aligned"
    assert unaligned.method.distill.teacher_checkpoint.endswith("teacher-own-seed1/best")
    assert (reference_of("distillvlm-unaligned"), reference_of("teacher-own")) == (
        "distillvlm", "teacher")
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
    # 50 and 51: hw = t_{0.975, 1} * 0.7071 / sqrt(2) = 6.35; pkd - baseline = 0 on both seeds
    assert "50.50 ± 6.35" in out and "69.5" in out and "5,678" in out
    assert "vs baseline +0.00 [+0.00, +0.00]" in out
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


def paired_rows(seeds: int) -> list[dict]:
    """baseline 24, 25.5, 24 and pkd 26, 27, 25 on seeds 0-2 (pkd - baseline = 2, 1.5, 1);
    student 30 + s, distillvlm 31 + s (a constant +1 to its reference, the student)."""
    overall = {"baseline": [24.0, 25.5, 24.0], "pkd": [26.0, 27.0, 25.0],
               "student": [30.0, 31.0, 32.0], "distillvlm": [31.0, 32.0, 33.0]}
    return [{"method": m, "seed": s, "split": "test", "overall": v[s],
             "perAnswerType": {"other": v[s]}, "ms_per_question": 0.01, "prior": 50.0,
             "prior_gold": 5.0} for m, v in overall.items() for s in range(seeds)]


def test_summary_intervals_and_paired_differences_by_hand(tmp_path):
    """pkd: mean 26, s = 1, hw = 4.302653 / sqrt(3) = 2.48; pkd - baseline: mean 1.5, s = 0.5,
    hw = 4.302653 * 0.5 / sqrt(3) = 1.24 -> [+0.26, +2.74]; distillvlm - student = +1 exactly."""
    results = {"elapsed_s": 1.0, "rows": paired_rows(3), "models": {}}
    save_results(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    by = {s["method"]: s for s in saved["summary"]}
    assert saved["summary"] == summarize(results["rows"])
    pkd, base, dvlm = by["pkd"], by["baseline"], by["distillvlm"]
    assert (pkd["mean"], pkd["n"], pkd["seeds"], pkd["reference"]) == (26.0, 3, [0, 1, 2], "baseline")
    assert (pkd["ci_low"], pkd["ci_high"]) == pytest.approx((26 - 2.484138, 26 + 2.484138), abs=1e-6)
    assert pkd["diff_mean"] == pytest.approx(1.5)
    assert (pkd["diff_ci_low"], pkd["diff_ci_high"]) == pytest.approx((0.257931, 2.742069), abs=1e-6)
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


def test_presets_quick_and_full():
    from pathlib import Path

    from pkd.demo import DEBIAS, FULL_METHODS

    quick, full = DemoConfig.of("quick", Path("q")), DemoConfig.of("full", Path("f"))
    assert quick.synth == SynthConfig() and (quick.seeds, quick.methods) == (1, MAIN_METHODS)
    assert full.synth == SynthConfig.preset("full") and full.seeds == 3
    assert full.data_seeds == (1, 2, 3)  # draws nothing was tuned on
    assert set(FULL_METHODS) == (set(MAIN_METHODS) | set(DEBIAS) | set(CONTROLS)
                                 | set(POSTHOC_ROWS) | {"pkd-lmh", "student-best"})  # no ablations
    assert full.methods == FULL_METHODS and full.preset == "full"
    assert DemoConfig.of("full", Path("f"), seeds=2).seeds == 2
    from pkd.errors import PkdError

    with pytest.raises(PkdError, match="unknown preset 'huge'"):
        DemoConfig.of("huge", Path("x"))


def test_a_data_folder_of_another_size_is_refused(tmp_path):
    from dataclasses import asdict

    from pkd.demo import check_same_benchmark
    from pkd.errors import PkdError

    saved = json.loads(json.dumps(asdict(SynthConfig())))  # the quick benchmark's config
    check_same_benchmark(saved, DemoConfig.of("quick", tmp_path), tmp_path)  # same: accepted
    older = {k: v for k, v in saved.items() if k != "caption_relations"}  # before the field
    check_same_benchmark(older, DemoConfig.of("quick", tmp_path), tmp_path)  # its default
    with pytest.raises(PkdError, match="generated with caption_relations=True"):
        check_same_benchmark({**saved, "caption_relations": True}, DemoConfig.of("quick", tmp_path),
                             tmp_path)
    with pytest.raises(PkdError, match=r"generated with max_objects=4, this demo \(full\) "
                                       r"needs 6; give another --out"):
        check_same_benchmark(saved, DemoConfig.of("full", tmp_path), tmp_path)


def test_cli_preset_option_sets_size_seeds_and_rows(tmp_path, monkeypatch):
    import pkd.demo
    from pkd.cli import main
    from pkd.demo import FULL_METHODS

    seen = {}
    monkeypatch.setattr(pkd.demo, "run_demo", lambda cfg: seen.setdefault("cfg", cfg) and {
        "elapsed_s": 0.0, "rows": [], "models": {}})
    assert main(["demo", "--out", str(tmp_path), "--preset", "full"]) == 0
    cfg = seen.pop("cfg")
    assert (cfg.preset, cfg.seeds, cfg.methods) == ("full", 3, FULL_METHODS)
    assert cfg.data_seeds == (1, 2, 3)
    assert cfg.synth.train_images == SynthConfig.preset("full").train_images
    assert main(["demo", "--out", str(tmp_path), "--preset", "full", "--seeds", "2"]) == 0
    assert seen["cfg"].seeds == 2
    seen.pop("cfg")
    assert main(["demo", "--out", str(tmp_path), "--data-seeds", "0,4"]) == 0
    assert seen["cfg"].data_seeds == (0, 4)
    assert main(["demo", "--out", str(tmp_path), "--preset", "huge"]) == 2


def test_fusion_rows_train_with_their_own_budget_and_optimizer(tmp_path):
    """Student and DistillVLM share one budget (equal steps), the teacher has its own; the three
    use the transformer optimizer (warmup, lr 1e-3, clip 1.0), UpDn rows keep theirs."""
    from pkd.demo import TRANSFORMER_OPTIM

    cfg = DemoConfig(out=tmp_path, train_epochs=7, student_epochs=11, student_best_epochs=33,
                     teacher_epochs=5)
    paths = Paths(tmp_path / "data", tmp_path / "foundation", tmp_path / "stores")
    spec = {n: overrides(cfg, paths, n, 0) for n in ("baseline", "student", "distillvlm",
                                                      "teacher", "teacher-own", "student-best")}
    assert [spec[n]["run.epochs"] for n in spec] == [7, 11, 11, 5, 5, 33]
    assert {k: v for k, v in spec["student-best"].items() if k not in ("run.epochs", "run.out_dir")} \
        == {k: v for k, v in spec["student"].items() if k not in ("run.epochs", "run.out_dir")}
    for n in ("student", "distillvlm", "teacher", "teacher-own"):
        assert {k: spec[n][k] for k in TRANSFORMER_OPTIM} == TRANSFORMER_OPTIM
    assert spec["baseline"]["optim.lr"] == 0.002 and "optim.warmup_steps" not in spec["baseline"]


def test_demo_rows_in_pkds_setting(tmp_path):
    """F0 (tiny LXMERT) pre-trained on the captions' regions; zero-shot, finetune, wise-ft and
    lwf-oracle rows with D's forgetting measured on F0's held-out captions."""
    from pkd.demo.vlm import forgetting_table

    torch.set_num_threads(1)
    synth = SynthConfig(train_images=60, val_images=16, test_images=20, test_iid_images=20,
                        test_comp_images=20, detection_train_images=10, detection_val_images=5,
                        caption_images=40, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", methods=("zero-shot", "finetune", "wise-ft",
                                                     "lwf-oracle"), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, vlm_epochs=1,
                     vlm_pretrain_epochs=1)
    results = run_demo(cfg)
    draw = cfg.out / "draw0"
    assert (draw / "foundation-lxmert" / "pretrain_metrics.json").is_file()
    rows = {(r["method"], r["split"]): r for r in results["rows"]}
    assert {m for m, _ in rows} == {"zero-shot", "finetune", "wise-ft", "lwf-oracle"}
    zero = rows[("zero-shot", "test")]["forgetting"]
    assert 0 <= zero["itm_accuracy"] <= 100 and "mlm_shape_accuracy" in zero
    assert (draw / "runs" / "wise-ft-seed0" / "best" / "latest.json").is_file()
    title, header, table, _ = forgetting_table(results)
    assert [r[0] for r in table] == ["zero-shot", "finetune", "wise-ft", "lwf-oracle"]
    (s,) = [s for s in summarize(results["rows"]) if s["method"] == "lwf-oracle"
            and s["split"] == "test"]
    assert s["reference"] == "finetune"
