"""Linear probes of region features: informative features probe well, noise probes at chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import make_benchmark, make_regions_store

from pkd.demo.probe import object_labels, probe_store, split_image_ids
from pkd.errors import PkdError
from pkd.stores import FeatureStore, StoreWriter


def rewritten(src, dst, features, move=None):
    """The store at ``src`` with region features ``features(image_id, box) -> (d,)`` and, with
    ``move``, each box replaced by ``move(box)`` (after its features are made)."""
    store = FeatureStore.open(src)
    arrays = store.read_range(0, store.n_items)
    for i, image_id in enumerate(store.ids.tolist()):
        for j in range(int(arrays["num_regions"][i])):
            arrays["region_features"][i, j] = features(image_id, arrays["boxes"][i, j])
            if move is not None:
                arrays["boxes"][i, j] = move(arrays["boxes"][i, j])
    with StoreWriter(dst, store.spec, store.ids) as writer:
        for k in writer.pending():
            r = writer.shard_rows(k)
            writer.write_shard(k, {n: a[r.start:r.stop] for n, a in arrays.items()})
    return dst


def attribute_code(labels: dict, rng):
    """Features = one-hot shape and colour (+ noise): linearly decodable by construction."""
    shapes = sorted({t["shape"] for _, tags in labels.values() for t in tags})
    colors = sorted({t["color"] for _, tags in labels.values() for t in tags})

    def features(image_id, box):
        boxes, tags = labels[image_id]
        (k,) = np.flatnonzero(np.abs(boxes - box).max(1) < 1e-3)  # the object of this box
        tag = tags[int(k)]
        x = 0.3 * rng.normal(size=16)
        x[shapes.index(tag["shape"])] += 1.0
        x[4 + colors.index(tag["color"])] += 1.0
        return x

    return features


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    data = make_benchmark(root / "data")
    base = make_regions_store(data, root / "regions.zarr")
    rng = np.random.default_rng(0)
    code = attribute_code(object_labels(data / "boxes.json"), rng)
    good = rewritten(base, root / "good.zarr", code)
    noise = rewritten(base, root / "noise.zarr", lambda image_id, box: rng.normal(size=16))
    # a detector's view: every box shifted 1.5 px (IoU ~0.8 with its object), same features
    moved = rewritten(base, root / "moved.zarr", code, lambda box: box + np.float32(1.5))
    return data, good, noise, moved


def test_informative_features_probe_well_and_noise_at_chance(bench):
    data, good, noise, _ = bench
    train, test = split_image_ids(data, "train"), split_image_ids(data, "test")
    informative = probe_store(good, data / "boxes.json", train, test)
    random = probe_store(noise, data / "boxes.json", train, test)
    for attr in ("shape", "color"):
        assert informative[attr]["regions"] == random[attr]["regions"] > 20
        assert informative[attr]["accuracy"] >= 90.0, informative
        assert random[attr]["accuracy"] <= random[attr]["majority"] + 15.0, random
    assert informative["shape"]["chance"] == 25.0


def test_jittered_boxes_match_their_objects_by_iou(bench):
    data, good, _, moved = bench
    train, test = split_image_ids(data, "train"), split_image_ids(data, "test")
    exact, shifted = (probe_store(s, data / "boxes.json", train, test) for s in (good, moved))
    for attr in ("shape", "color"):  # every region still matched (to its own object: the
        # features encode that object's attributes, so a wrong match would cost accuracy)
        assert shifted[attr]["regions"] == exact[attr]["regions"] > 20
        assert shifted[attr]["accuracy"] >= 90.0, shifted


def test_box_iou_by_hand():
    import torch

    from pkd.demo.probe import box_iou  # the pipeline's, as the probe matches with it

    a = torch.tensor([[0, 0, 2, 2], [10, 10, 11, 11]], dtype=torch.float64)
    b = torch.tensor([[1, 1, 3, 3], [0, 0, 2, 2]], dtype=torch.float64)
    assert np.allclose(box_iou(a, b).numpy(), [[1 / 7, 1.0], [0.0, 0.0]])


def test_store_without_the_benchmark_boxes_is_refused(bench, tmp_path):
    data, good, _, _ = bench
    boxes = json.loads((data / "boxes.json").read_text())
    for a in boxes["annotations"]:
        a["bbox"] = [a["bbox"][0] + 1000, *a["bbox"][1:]]  # no stored box overlaps any more
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(PkdError, match="no region overlaps a box"):
        probe_store(good, tmp_path / "boxes.json", split_image_ids(data, "train"),
                    split_image_ids(data, "test"))


def test_cli_probe_prints_both_attributes(bench, capsys):
    from pkd.cli import main

    data, good, _, _ = bench
    assert main(["stores", "probe", str(good), "--data", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("shape: ") and "chance 25.0%" in out[0]
    assert out[1].startswith("color: ") and "test regions" in out[1]
    assert main(["stores", "probe", str(good), "--data", str(data), "--eval-split", "nope"]) == 2
    assert "no such split file" in capsys.readouterr().err
