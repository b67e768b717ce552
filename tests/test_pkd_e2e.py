"""PKD from the CLI: extract foundation stores -> stage 1 predictors -> stage 2 -> evaluate.

The foundation model sees the training and validation splits only: the test split is evaluated
with the VQA model and its memory alone (no foundation features were ever extracted for it)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from host_buffer_checks import assert_ring_batches_equal
from train_fixtures import make_benchmark, make_regions_store, train_overrides

from pkd.cli import main
from pkd.data.vqa import dataset_files, load_split
from pkd.stores import FeatureStore
from pkd.train.config_load import load_config


@pytest.fixture(scope="module")
def pkd_data(tmp_path_factory, tiny_clip_dir):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pkd")
    data = make_benchmark(root / "data")
    regions = make_regions_store(data, root / "regions.zarr")
    assert main(["extract", "foundation", "--data", str(data), "--model", str(tiny_clip_dir),
                 "--splits", "train,val", "--out", str(root / "stores"),
                 "--items-per-shard", "64"]) == 0
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


def _test_questions(data):
    return load_split(*dataset_files(data, "synth", "test"))


def test_foundation_stores_hold_no_test_item(pkd_data):
    data, _, root, _ = pkd_data
    test = _test_questions(data)
    images = FeatureStore.open(_foundation(root)["data.foundation_image"])
    questions = FeatureStore.open(_foundation(root)["data.foundation_text"])
    assert images.complete and questions.complete
    assert not {q.image_id for q, _ in test} & set(images.ids.tolist())
    assert not {q.question_id for q, _ in test} & set(questions.ids.tolist())


def test_ring_of_host_buffers_gives_the_same_foundation_batches(pkd_data, tmp_path):
    """The GPU feed's ring (unpinned here) with the foundation stores' tokens, cut to the
    batch's longest text as they are read: the same values as the plain read."""
    data, regions, root, _ = pkd_data
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "ring", **_foundation(root),
                                            **{"method.name": "pkd-predictors"}))
    got = assert_ring_batches_equal(cfg, tmp_path / "ring", foundation_tokens=True, teacher=True)
    assert {"region_features", "image_embeds", "vision_tokens", "text_embeds",
            "text_tokens"} <= got["in_slot"]
    assert got["batch"]["text_mask"].shape == got["batch"]["text_tokens"].shape[:2]


def test_stage1_logs_predictor_losses_and_no_validation(pkd_data):
    rows = [json.loads(x) for x in (pkd_data[3] / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train"}
    assert all("itm_loss" in r and "div_loss" in r for r in rows)


@pytest.mark.parametrize("ablation", [{}, {"method.pkd.use_memory": False},
                                      {"method.pkd.use_model_kd": False},
                                      {"method.pkd.vqa_loss": "lmh"},
                                      {"method.pkd.memory_holds": "features"},
                                      {"method.pkd.finetune_predictors": True}])
def test_stage2_trains_and_evaluates_without_the_foundation_model(pkd_data, tmp_path, ablation):
    run = tmp_path / "stage2"
    assert main(["train", *_stage2(pkd_data, run, **ablation)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert ("mkd_loss" in train_rows[0]) == ablation.get("method.pkd.use_model_kd", True)
    assert ("entropy_loss" in train_rows[0]) == (ablation.get("method.pkd.vqa_loss") == "lmh")
    finetune = ablation.get("method.pkd.finetune_predictors", False)
    assert ("itm_loss" in train_rows[0]) == ("div_loss" in train_rows[0]) == finetune
    assert (run / "words.json").read_text() == (pkd_data[3] / "words.json").read_text()
    # the test split has no foundation features: every test question is still answered
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["missing"] == 0
    assert metrics["answered"] == metrics["questions"] == len(_test_questions(pkd_data[0]))


def test_evaluation_reads_neither_foundation_store(pkd_data, tmp_path):
    """The test-time forward is D with its memory hook: an eval batch holds regions and the
    question only, and evaluation runs with the foundation stores gone."""
    from pkd.train.predict import load_run
    from pkd.train.prepare import split_batches

    run = tmp_path / "stage2"
    assert main(["train", *_stage2(pkd_data, run)]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--split", "val"]) == 0
    before = json.loads((run / "results_val.json").read_text())

    cfg, v, stores, model = load_run(run)
    assert stores.foundation_image is None and stores.foundation_text is None
    assert model.feature_fusion.memory.queue.count > 0  # the memory is in the checkpoint
    _, batches = split_batches(cfg, "test", v, stores)
    assert set(batches[[0, 1]]) == {"question_id", "question_tokens", "question_mask",
                                    "targets", "region_features", "region_geometry",
                                    "region_mask", "question_type"}

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["foundation_image"] = str(tmp_path / "gone" / "images.zarr")
    config["data"]["foundation_text"] = str(tmp_path / "gone" / "questions.zarr")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--checkpoint", str(run), "--split", "val"]) == 0
    assert json.loads((run / "results_val.json").read_text()) == before


def test_a_model_fed_foundation_embeddings_needs_them_at_test_time(pkd_data, tmp_path, capsys):
    """model.use_foundation_features feeds image_embeds / text_embeds to the forward: such a run
    does need the foundation stores to cover the split it is evaluated on."""
    data, regions, root, _ = pkd_data
    run = tmp_path / "fed"
    assert main(["train", *train_overrides(data, regions, run, **_foundation(root), **{
        "model.use_foundation_features": True, "run.max_steps": 2})]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--split", "val"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {_foundation(root)['data.foundation_image']}: no image_id")


def _train_rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def test_cached_predictions_give_the_online_losses(pkd_data, tmp_path, monkeypatch, capsys):
    """``pkd extract predicted`` + ``data.predicted``: stage 2 reads ṽ, t̃, their embeddings and
    the positive teacher logits from the store instead of running the predictors and the head;
    the same seed gives the same losses (float16 storage: ~1e-3), and a store made by other
    predictors is refused in one line."""
    online, cached, store = tmp_path / "online", tmp_path / "cached", tmp_path / "predicted.zarr"
    extra = {"run.log_every": 1, "method.pkd.mkd_fraction": 0.5}
    assert main(["train", *_stage2(pkd_data, online, **extra)]) == 0
    assert main(["extract", "predicted", str(online / "config.yaml"),
                 f"data.predicted={store}"]) == 0
    made = FeatureStore.open(store, kind="predicted")
    assert made.complete and made.spec.producer["predictors_digest"]
    from pkd.train.tasks.pkd import PKDTask

    read = []
    predict = PKDTask.predict
    monkeypatch.setattr(PKDTask, "predict", lambda self, batch: read.append(
        ("predicted_vision" in batch, "vision_tokens" in batch)) or predict(self, batch))
    assert main(["train", *_stage2(pkd_data, cached, **extra, **{"data.predicted": store})]) == 0
    # every training step read the store, and none read the foundation tokens it replaces
    assert read and all(r == (True, False) for r in read)
    a, b = _train_rows(online), _train_rows(cached)
    assert len(a) == len(b) >= 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("vqa_loss", "mkd_loss", "loss"):
            assert rb[key] == pytest.approx(ra[key], rel=5e-3, abs=1e-4), (key, ra, rb)
    # other predictors (another stage-1 seed): the cache no longer describes them
    data, regions, root, _ = pkd_data
    other = tmp_path / "stage1b"
    assert main(["train", *train_overrides(data, regions, other, **_foundation(root), **{
        "method.name": "pkd-predictors", "method.pkd.predictor_hidden": 32,
        "method.pkd.predictor_layers": 1, "run.max_steps": 2, "run.seed": 5})]) == 0
    args = _stage2(pkd_data, tmp_path / "bad", **{"data.predicted": store,
                                                   "method.pkd.predictors": other})
    assert main(["train", *args]) == 2
    # the same predictors on another regions store: the cached ṽ, t̃ describe the old features
    moved = make_regions_store(data, tmp_path / "regions-b.zarr", seed=1, producer="other")
    args = _stage2(pkd_data, tmp_path / "bad2", **{"data.predicted": store,
                                                    "data.regions": moved})
    assert main(["train", *args]) == 2
    assert "built from another regions store" in capsys.readouterr().err


def test_predicted_store_with_finetuned_predictors_is_a_config_error(pkd_data, tmp_path, capsys):
    args = _stage2(pkd_data, tmp_path / "x", **{"data.predicted": tmp_path / "p.zarr",
                                                 "method.pkd.finetune_predictors": True})
    assert main(["train", *args]) == 2
    assert "data.predicted" in capsys.readouterr().err


def test_probe_predicted_scores_another_split_and_stage2_refuses_its_store(pkd_data, tmp_path,
                                                                           capsys):
    """``pkd stores probe-predicted``: the frozen predictors predict another split into a store
    beside ``data.predicted`` (its producer names the split), retrieval and answer probes are
    reported per split; stage 2 refuses that store as its training cache in one line."""
    run, store = tmp_path / "run", tmp_path / "predicted.zarr"
    assert main(["train", *_stage2(pkd_data, run)]) == 0
    config = str(run / "config.yaml")
    assert main(["extract", "predicted", config, f"data.predicted={store}"]) == 0
    out = tmp_path / "probe.json"
    assert main(["stores", "probe-predicted", config, f"data.predicted={store}",
                 "--splits", "val", "--json", str(out)]) == 0
    val = FeatureStore.open(tmp_path / "predicted-val.zarr", kind="predicted")
    train = FeatureStore.open(store, kind="predicted")
    assert val.complete and val.spec.producer["split"] == "val"
    assert train.spec.producer["split"] == "train"
    assert val.spec.producer["predictors_digest"] == train.spec.producer["predictors_digest"]
    data = pkd_data[0]
    assert set(val.ids.tolist()) == {q.question_id
                                     for q, _ in load_split(*dataset_files(data, "synth", "val"))}
    result = json.loads(out.read_text())
    r = result["retrieval"]["val"]
    assert r["images"] == 16 and r["chance_r1"] == pytest.approx(100 / 16)
    assert all(0 <= r[q]["r1"] <= r[q]["r5"] <= 100 for q in
               ("predicted image e_v", "predicted text e_t", "question e_Q"))
    probes = result["probes"]["val"]
    assert set(probes) == {"predicted pair", "foundation pair", "prior"}
    assert all(0 <= v <= 100 for acc in probes.values() for v in acc.values())
    assert "val: answer probe prior" in capsys.readouterr().out
    stamp = (tmp_path / "predicted-val.zarr" / "ids").stat().st_mtime_ns
    assert main(["stores", "probe-predicted", config, f"data.predicted={store}",
                 "--splits", "val"]) == 0
    assert (tmp_path / "predicted-val.zarr" / "ids").stat().st_mtime_ns == stamp  # reused
    capsys.readouterr()
    bad = _stage2(pkd_data, tmp_path / "bad", **{"data.predicted": tmp_path / "predicted-val.zarr"})
    assert main(["train", *bad]) == 2
    assert "predictions of split 'val', stage 2 trains on 'train'" in capsys.readouterr().err


def test_item_reading_feeds_d_each_splits_predictions(pkd_data, tmp_path, capsys):
    """``model.foundation_inputs=predicted``: D's foundation inputs are its own item's predicted
    ``e_v``, ``e_t``; the frozen predictors run once per split into ``<stem>-<split>.zarr``
    (regions and question only: the test split has no foundation features at all), training
    validates on the val split's store, evaluation reads the evaluated split's, and a missing
    store, one of another split or of other predictors is refused in one line."""
    data, regions, root, _ = pkd_data
    pooled = {"method.pkd.predictor_hidden": 32, "method.pkd.predictor_layers": 1,
              "method.pkd.predictor_tokens": 4}
    stage1, other = tmp_path / "stage1", tmp_path / "stage1b"
    for run, seed in ((stage1, 0), (other, 5)):
        assert main(["train", *train_overrides(data, regions, run, **_foundation(root), **pooled,
                                               **{"method.name": "pkd-predictors",
                                                  "run.max_steps": 2, "run.seed": seed})]) == 0
    store = tmp_path / "predicted.zarr"
    item = {**pooled, "method.pkd.predictors": stage1, "data.predicted": store,
            "model.use_foundation_features": True, "model.foundation_inputs": "predicted",
            "method.pkd.use_memory": False, "method.pkd.use_model_kd": False}
    run = tmp_path / "item"
    args = _stage2(pkd_data, run, **item)
    config = tmp_path / "item.yaml"  # what pkd extract predicted reads: the run's own config
    config.write_text(yaml.safe_dump({}))
    over = [a for a in args if a.split("=", 1)[0] not in ("run.out_dir",)]
    # the training store covers the carved validation share too
    assert main(["extract", "predicted", str(config), *over, "data.val_fraction=0.25"]) == 0
    train_ids = {q.question_id for q, _ in load_split(*dataset_files(data, "synth", "train"))}
    assert set(FeatureStore.open(store, kind="predicted").ids.tolist()) == train_ids
    assert main(["train", *args]) == 2  # no val predictions yet
    err = capsys.readouterr().err
    assert f"{tmp_path / 'predicted-val.zarr'}: no predictions of split 'val'" in err
    for split in ("val", "test"):
        assert main(["extract", "predicted", str(config), *over, "--split", split]) == 0
    made = FeatureStore.open(tmp_path / "predicted-test.zarr", kind="predicted")
    assert made.complete and made.spec.producer["split"] == "test"
    assert set(made.ids.tolist()) == {q.question_id for q, _ in _test_questions(data)}
    assert main(["train", *args]) == 0
    from pkd.train.checkpoint import load_checkpoint

    weights, _ = load_checkpoint(run / "best")
    assert any(k.startswith("foundation_net.") for k in weights)  # D's input layer for e_v, e_t
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 0
    assert len(json.loads((run / "results_test.json").read_text())) == len(made.ids)
    # another split's predictions, then other predictors' predictions, under the test name
    test_store = tmp_path / "predicted-test.zarr"
    capsys.readouterr()
    assert main(["extract", "predicted", str(config), *over, "--split", "val", "--overwrite",
                 "--out", str(test_store)]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 2
    assert "predictions of split 'val', not 'test'" in capsys.readouterr().err
    assert main(["extract", "predicted", str(config), *over, "--split", "test", "--overwrite",
                 f"method.pkd.predictors={other}"]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 2
    assert f"{test_store}: made by other predictors" in capsys.readouterr().err
