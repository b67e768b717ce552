"""``--detector grid:K`` / ``whole``: regions without a detector, pooled by a backbone, in the same
store layout and provenance as detected regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkd.data.images import load_rgb
from pkd.errors import PkdError
from pkd.pipeline.boxes import grid_boxes
from pkd.pipeline.detectors import GridBoxes, build_detector, parse_detector
from pkd.stores import FeatureStore

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import SHARD, pkd  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]


def test_grid_boxes_by_hand():
    got = grid_boxes(60, 40, 2).numpy()
    want = [[0, 0, 30, 20], [30, 0, 60, 20], [0, 20, 30, 40], [30, 20, 60, 40]]  # row-major
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))
    cells = grid_boxes(641, 479, 7).numpy()  # sides not divisible by K
    area = ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).astype(np.float64)
    assert len(cells) == 49 and area.sum() == pytest.approx(641 * 479, rel=1e-6)  # tiles the image
    assert cells[:, 2].max() == 641 and cells[:, 3].max() == 479 and cells[:, :2].min() == 0


def test_specs_and_provenance():
    assert isinstance(build_detector("grid:3"), GridBoxes)
    whole = build_detector("whole")
    assert whole.max_regions == 1 and whole.provenance()["detector"] == "whole"
    assert build_detector("grid:3").provenance() == {"detector": "grid:3", "grid": 3, "cells": 9,
                                                     "cell_order": "row-major"}
    for bad in ("grid:0", "grid:x", "grid:", "grid:33", "whole:2"):
        with pytest.raises(PkdError, match=r"--detector"):
            parse_detector(bad)


@pytest.mark.parametrize(("spec", "k"), [("grid:3", 3), ("whole", 1)])
def test_extract_grid_regions(synth_data, tiny_resnet_dir, tmp_path, spec, k):
    from pkd.pipeline.backbones import RegionBackbone

    out = tmp_path / "grid.zarr"
    assert pkd("extract", "regions", "--data", synth_data, "--out", out, "--items-per-shard", SHARD,
               "--batch-size", "8", "--detector", spec, "--backbone", tiny_resnet_dir) == 0
    store = FeatureStore.open(out, kind="regions")
    assert store.complete and store.ok.all() and store.n_items == 48
    assert store.spec.dims == {"max_regions": k * k, "feature_dim": 32}
    assert store.spec.producer["detector"] == spec and "backbone" in store.spec.producer
    ids = store.ids[:3]
    got = store.read(store.rows_of(ids))
    backbone = RegionBackbone(str(tiny_resnet_dir))
    want_boxes = grid_boxes(64, 64, k).numpy()
    for i, image_id in enumerate(ids):
        assert got["num_regions"][i] == k * k and got["image_size"][i].tolist() == [64, 64]
        np.testing.assert_array_equal(got["boxes"][i], want_boxes)
        np.testing.assert_array_equal(got["region_scores"][i], np.ones(k * k, np.float32))
        np.testing.assert_array_equal(got["region_labels"][i], np.full(k * k, -1))
        x1, y1, x2, y2 = (want_boxes / 64).T
        np.testing.assert_allclose(got["region_geometry"][i],
                                   np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], 1), rtol=1e-6)
        img = load_rgb(synth_data / "images" / f"{int(image_id):012d}.png")
        feats = backbone.pool([img], [want_boxes])[0].numpy()
        np.testing.assert_allclose(got["region_features"][i].astype(np.float32), feats,
                                   rtol=2e-3, atol=2e-3)


def test_max_boxes_below_the_grid_is_refused():
    """A grid gives exactly K*K boxes: a smaller --max-boxes cannot apply, so it is refused (in
    the library too), never silently ignored; omitted or large enough, it is accepted."""
    want = (r"^--max-boxes 2: the grid:3 detector gives exactly 9 boxes "
            r"\(omit --max-boxes or use grid:1\)$")
    with pytest.raises(PkdError, match=want):
        build_detector("grid:3", max_boxes=2)
    with pytest.raises(PkdError, match=want):
        GridBoxes(3, max_boxes=2)
    with pytest.raises(PkdError, match=r"^--max-boxes 50: the grid:8 detector gives exactly 64 "
                                       r"boxes \(omit --max-boxes or use grid:7\)$"):
        build_detector("grid:8", max_boxes=50)
    with pytest.raises(PkdError, match=r"^--max-boxes 0: the whole detector gives exactly 1 box "
                                       r"\(omit --max-boxes\)$"):
        build_detector("whole", max_boxes=0)
    for spec, max_boxes in (("grid:3", 9), ("grid:3", 100), ("grid:11", None), ("grid:32", None)):
        assert build_detector(spec, max_boxes=max_boxes).max_regions == int(spec[5:]) ** 2


def test_cli_grid_with_too_few_max_boxes(synth_data, tiny_resnet_dir, tmp_path, capsys):
    out = tmp_path / "grid.zarr"
    assert pkd("extract", "regions", "--data", synth_data, "--out", out, "--detector", "grid:3",
               "--max-boxes", "2", "--backbone", tiny_resnet_dir, "--splits", "val") == 2
    assert capsys.readouterr().err == ("error: --max-boxes 2: the grid:3 detector gives exactly 9 "
                                       "boxes (omit --max-boxes or use grid:1)\n")
    assert not out.exists()


@pytest.mark.parametrize("spec", ["grid:3", "whole", "given:boxes.json"])
def test_model_detector_options_on_fixed_boxes_are_refused(spec, tmp_path):
    """``--conf`` / ``--iou`` / ``--min-boxes`` select among a model's scored boxes; a grid or a
    boxes file has none to select, so the options are refused, never ignored."""
    from pkd.pipeline.detectors import build_detector

    with pytest.raises(PkdError, match=r"--min-boxes: .* cannot apply \(omit them\)"):
        build_detector(spec, min_boxes=1)
    with pytest.raises(PkdError, match=r"--conf, --iou: "):
        build_detector(spec, conf=0.3, iou=0.4)
