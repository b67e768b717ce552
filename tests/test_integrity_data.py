"""Training data integrity: an incomplete store is refused (or, opted in, its missing items'
questions are dropped and counted per split), best/ is never picked on an empty validation split,
and validation / evaluation join only the stores the model's forward reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import (
    benchmark_and_regions,
    train_overrides,
)

from pkd.cli import main
from pkd.data.vqa import dataset_files, load_split
from pkd.errors import PkdError
from pkd.stores import FeatureStore
from pkd.stores.schema import done_path
from pkd.train.config_load import load_config
from pkd.train.data import SplitData, Stores, attach


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return benchmark_and_regions(tmp_path_factory, "integrity")


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / store.name
    shutil.copytree(store, out)
    return out


def _shards_of(store: Path, data: Path, split: str) -> list[int]:
    """The shards of ``store`` holding the images of ``split``'s questions."""
    s = FeatureStore.open(store)
    images = sorted({q.image_id for q, _ in load_split(*dataset_files(data, "synth", split))})
    return sorted(set((s.rows_of(images) // s.spec.items_per_shard).tolist()))


def _undo(store: Path, shards: list[int]) -> None:
    """Make ``shards`` pending again (as if extraction stopped before them)."""
    for k in shards:
        done_path(store, k).unlink()


def _questions(data: Path, split: str) -> int:
    return len(load_split(*dataset_files(data, "synth", split)))


def test_train_refuses_an_incomplete_store(bench, tmp_path, capsys):
    data, regions = bench
    regions = _copy(regions, tmp_path)
    store = FeatureStore.open(regions)
    n = -(-store.n_items // store.spec.items_per_shard)
    _undo(regions, [n - 1])
    last = store.n_items - (n - 1) * store.spec.items_per_shard
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {regions}: incomplete regions store")
    assert f"1 of {n} shards ({last} of {store.n_items} items) not extracted" in err
    assert "data.allow_incomplete=true" in err
    assert not (run / "ckpt").exists() and not (run / "best").exists()


def test_opted_in_incomplete_store_drops_and_counts_questions(bench, tmp_path, capsys):
    data, regions = bench
    regions = _copy(regions, tmp_path)
    val_shards = _shards_of(regions, data, "val")
    missing = [k for k in _shards_of(regions, data, "train") if k not in val_shards][:1]
    assert missing, "fixture: a shard holding training images only"
    _undo(regions, missing)
    run = tmp_path / "run"
    args = train_overrides(data, regions, run, **{"data.allow_incomplete": True,
                                                  "run.max_steps": 2})
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    assert f"warning: {regions}: incomplete regions store, 1 of" in err
    store = FeatureStore.open(regions)
    cfg = load_config(None, args)
    from pkd.train.prepare import split_batches, vocabs

    v = vocabs(cfg, run, create=False)
    train, _ = split_batches(cfg, "train", v, Stores(regions=store))
    assert train.dropped > 0 and train.missing == {"regions": train.dropped}
    total = _questions(data, "train")
    assert len(train) + train.dropped == total
    assert f"train: {train.dropped} of {total} questions dropped (no features in: regions " \
           f"{train.dropped})" in err
    assert "val:" not in err  # the validation images are all there
    # its evaluation follows the run's opt-in (and counts what it drops)
    assert main(["evaluate", "--checkpoint", str(run), "--split", "val"]) == 0


def test_empty_validation_split_is_refused_before_training(bench, tmp_path, capsys):
    data, regions = bench
    regions = _copy(regions, tmp_path)
    val_shards = _shards_of(regions, data, "val")
    assert set(_shards_of(regions, data, "train")) - set(val_shards), "fixture: train shards left"
    _undo(regions, val_shards)  # every validation image (and some training ones)
    run = tmp_path / "run"
    args = train_overrides(data, regions, run, **{"data.allow_incomplete": True})
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    n = _questions(data, "val")
    assert err[-1] == (f"error: validation split 'val' is empty (all {n} questions dropped, no "
                       f"features in: regions {n}): best/ would be chosen on nothing; training "
                       "not started")
    assert not (run / "best").exists() and not (run / "ckpt").exists()


def test_evaluate_refuses_a_store_made_incomplete_after_training(bench, tmp_path, capsys):
    data, regions = bench
    regions = _copy(regions, tmp_path)
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run, **{"run.max_steps": 2})]) == 0
    _undo(regions, _shards_of(regions, data, "test")[:1])
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {regions}: incomplete regions store, 1 of")
    assert "to evaluate on the extracted items only" in err


def test_attach_counts_missing_features_per_store(bench):
    _, regions = bench
    store = FeatureStore.open(regions)
    ids = store.ids[:4]
    split = SplitData(
        name="s", question_ids=np.arange(4, dtype=np.int64), image_ids=ids.copy(),
        tokens=np.ones((4, 3), dtype=np.int64), answer_index=np.full((4, 10), -1),
        answer_score=np.zeros((4, 10), dtype=np.float32), answer_types=["a"] * 4,
        question_types=["q"] * 4)
    store.ok = store.ok.copy()
    store.ok[[0, 2]] = False
    kept, rows = attach(split, Stores(regions=store))
    assert kept.question_ids.tolist() == [1, 3] and rows["regions"].tolist() == [1, 3]
    assert kept.dropped == 2 and kept.missing == {"regions": 2}


def test_validation_and_evaluation_join_only_what_the_forward_reads(bench, tmp_path):
    """A store the model's forward does not read never drops a validation / test question."""
    from pkd.train.prepare import forward_stores, open_stores

    data, regions = bench
    args = train_overrides(data, regions, tmp_path / "run", **{
        "data.foundation_image": tmp_path / "nowhere.zarr",
        "data.foundation_text": tmp_path / "nowhere-text.zarr"})
    cfg = load_config(None, args)
    stores = open_stores(cfg, evaluation=True)  # the foundation store is not even opened
    assert stores.foundation_image is None and stores.foundation_text is None
    with pytest.raises(PkdError, match="nowhere.zarr"):
        open_stores(cfg)  # training needs it
    fake = Stores(regions=stores.regions, foundation_image=stores.regions,
                  foundation_text=stores.regions, teacher=stores.regions)
    assert forward_stores(cfg, fake) == Stores(regions=stores.regions)
    feeds = load_config(None, [*args, "model.use_foundation_features=true"])
    assert forward_stores(feeds, fake) == Stores(regions=stores.regions,
                                                 foundation_image=stores.regions,
                                                 foundation_text=stores.regions)
    with pytest.raises(PkdError, match="nowhere.zarr"):
        open_stores(feeds, evaluation=True)  # its forward reads image_embeds


def test_recorded_foundation_dims(tmp_path):
    from pkd.train.store_checks import recorded_foundation_dims

    assert recorded_foundation_dims(tmp_path) is None
    (tmp_path / "stores.json").write_text(json.dumps(
        {"regions": {"producer": {}, "dims": {"feature_dim": 16}},
         "foundation_image": {"producer": {}, "dims": {"embed_dim": 24, "vision_dim": 32}}}))
    assert recorded_foundation_dims(tmp_path) == {"embed_dim": 24, "vision_dim": 32}
