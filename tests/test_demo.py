"""`pkd demo` on a tiny benchmark: the whole chain runs and writes the results contract."""

from __future__ import annotations

import json

import torch

from pkd.data.synth import SynthConfig
from pkd.demo import DemoConfig, run_demo, summarize


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
    assert (cfg.out / "results.png").stat().st_size > 0
    assert saved["models"]["baseline"] > 0
    assert [s["n"] for s in summarize(saved["rows"])] == [1, 1]
    again = run_demo(cfg)  # resumable: finished stages are skipped, same numbers
    assert again["rows"] == results["rows"]
