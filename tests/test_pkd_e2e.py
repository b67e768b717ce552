"""PKD from the CLI: extract foundation stores -> stage 1 predictors -> stage 2 -> evaluate."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import make_benchmark, make_regions_store, train_overrides

from pkd.cli import main


@pytest.fixture(scope="module")
def pkd_data(tmp_path_factory, tiny_clip_dir):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pkd")
    data = make_benchmark(root / "data")
    regions = make_regions_store(data, root / "regions.zarr")
    assert main(["extract", "foundation", "--data", str(data), "--model", str(tiny_clip_dir),
                 "--out", str(root / "stores"), "--items-per-shard", "64"]) == 0
    stage1 = root / "stage1"
    args = train_overrides(data, regions, stage1, **_foundation(root), **{
        "method.name": "pkd-predictors", "method.pkd.predictor_hidden": 32,
        "method.pkd.predictor_layers": 1, "run.max_steps": 4})
    assert main(["train", *args]) == 0
    return data, regions, root, stage1


def _foundation(root):
    return {"data.foundation_image": root / "stores" / "foundation_images.zarr",
            "data.foundation_text": root / "stores" / "foundation_questions.zarr"}


def _stage2(pkd_data, out, **extra):
    data, regions, root, stage1 = pkd_data
    return train_overrides(data, regions, out, **_foundation(root), **{
        "method.name": "pkd", "method.pkd.predictors": stage1, "method.pkd.predictor_hidden": 32,
        "method.pkd.predictor_layers": 1, "method.pkd.memory_size": 32, "run.max_steps": 4,
        **extra})


def test_stage1_logs_predictor_losses_and_no_validation(pkd_data):
    rows = [json.loads(x) for x in (pkd_data[3] / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train"}
    assert all("itm_loss" in r and "div_loss" in r for r in rows)


@pytest.mark.parametrize("ablation", [{}, {"method.pkd.use_memory": False},
                                      {"method.pkd.use_model_kd": False}])
def test_stage2_trains_and_evaluates_without_the_foundation_model(pkd_data, tmp_path, ablation):
    run = tmp_path / "stage2"
    assert main(["train", *_stage2(pkd_data, run, **ablation)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert ("mkd_loss" in train_rows[0]) == ablation.get("method.pkd.use_model_kd", True)
    assert (run / "words.json").read_text() == (pkd_data[3] / "words.json").read_text()
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["missing"] == 0
