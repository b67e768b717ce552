"""Linear probes of region features: informative features probe well, noise probes at chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import make_benchmark, make_regions_store

from pkd.demo.probe import object_labels, probe_store, split_image_ids
from pkd.errors import PkdError
from pkd.stores import FeatureStore, StoreWriter


def rewritten(src, dst, features):
    """The store at ``src`` with region features ``features(image_id, box) -> (d,)``."""
    store = FeatureStore.open(src)
    arrays = store.read_range(0, store.n_items)
    for i, image_id in enumerate(store.ids.tolist()):
        for j in range(int(arrays["num_regions"][i])):
            arrays["region_features"][i, j] = features(image_id, arrays["boxes"][i, j])
    with StoreWriter(dst, store.spec, store.ids) as writer:
        for k in writer.pending():
            r = writer.shard_rows(k)
            writer.write_shard(k, {n: a[r.start:r.stop] for n, a in arrays.items()})
    return dst


def attribute_code(labels: dict, rng):
    """Features = one-hot shape and colour (+ noise): linearly decodable by construction."""
    shapes = sorted({v["shape"] for v in labels.values()})
    colors = sorted({v["color"] for v in labels.values()})

    def features(image_id, box):
        tag = labels[(image_id, tuple(np.round(box.astype(np.float64), 2).tolist()))]
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
    good = rewritten(base, root / "good.zarr", attribute_code(object_labels(data / "boxes.json"), rng))
    noise = rewritten(base, root / "noise.zarr", lambda image_id, box: rng.normal(size=16))
    return data, good, noise


def test_informative_features_probe_well_and_noise_at_chance(bench):
    data, good, noise = bench
    train, test = split_image_ids(data, "train"), split_image_ids(data, "test")
    informative = probe_store(good, data / "boxes.json", train, test)
    random = probe_store(noise, data / "boxes.json", train, test)
    for attr in ("shape", "color"):
        assert informative[attr]["regions"] == random[attr]["regions"] > 20
        assert informative[attr]["accuracy"] >= 90.0, informative
        assert random[attr]["accuracy"] <= random[attr]["majority"] + 15.0, random
    assert informative["shape"]["chance"] == 25.0


def test_store_without_the_benchmark_boxes_is_refused(bench, tmp_path):
    data, good, _ = bench
    boxes = json.loads((data / "boxes.json").read_text())
    for a in boxes["annotations"]:
        a["bbox"] = [a["bbox"][0] + 1.5, *a["bbox"][1:]]  # no stored box matches any more
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(PkdError, match="no region matches a box"):
        probe_store(good, tmp_path / "boxes.json", split_image_ids(data, "train"),
                    split_image_ids(data, "test"))


def test_cli_probe_prints_both_attributes(bench, capsys):
    from pkd.cli import main

    data, good, _ = bench
    assert main(["stores", "probe", str(good), "--data", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("shape: ") and "chance 25.0%" in out[0]
    assert out[1].startswith("color: ") and "test regions" in out[1]
    assert main(["stores", "probe", str(good), "--data", str(data), "--eval-split", "nope"]) == 2
    assert "no such split file" in capsys.readouterr().err
