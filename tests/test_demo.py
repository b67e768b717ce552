"""`pkd demo` on a tiny benchmark: the whole chain runs and writes the results contract."""

from __future__ import annotations

import json

import torch

from pkd.data.synth import SynthConfig
from pkd.demo import ABLATIONS, MAIN_METHODS, DemoConfig, Paths, overrides, run_demo, summarize
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
        assert row["ms_per_question"] > 0
    assert (cfg.out / "results.png").stat().st_size > 0
    assert saved["models"]["baseline"] > 0
    assert [s["n"] for s in summarize(saved["rows"])] == [1, 1]
    again = run_demo(cfg)  # resumable: finished stages are skipped, same numbers
    def scores(rows):
        return [{k: v for k, v in r.items() if k != "ms_per_question"} for r in rows]

    assert scores(again["rows"]) == scores(results["rows"])


def test_every_demo_run_spec_is_a_valid_config(tmp_path):
    """Each row of the table (and the runs they build on) resolves to a typed config that
    differs from its reference run exactly where the ablation says."""
    cfg = DemoConfig(out=tmp_path)
    paths = Paths(tmp_path / "data", tmp_path / "foundation", tmp_path / "stores")

    def resolved(name):
        return load_config(None, [f"{k}={v}" for k, v in overrides(cfg, paths, name, 1).items()])

    configs = {n: resolved(n) for n in (*MAIN_METHODS, *ABLATIONS, "predictors")}
    assert configs["pkd-memory"].method.pkd.use_memory is False
    assert configs["pkd-model-kd"].method.pkd.use_model_kd is False
    assert configs["pkd-predictors-off"].method.pkd.use_predictors is False
    d = {n: c.method.distill for n, c in configs.items() if n.startswith("distillvlm")}
    assert (d["distillvlm-att"].alpha, d["distillvlm-nce"].beta, d["distillvlm-kd"].gamma) == (0, 0, 0)
    assert d["distillvlm"].queue_size == 4096
    assert (d["distillvlm-queue256"].queue_size, d["distillvlm-queue16384"].queue_size) == (256, 16384)
    assert all(c.run.seed == 1 for c in configs.values())
    assert len({c.run.out_dir for c in configs.values()}) == len(configs)  # no shared run folder
