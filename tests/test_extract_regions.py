"""``pkd extract regions`` on the synthetic benchmark: ``given:`` boxes pooled by a backbone,
``hf:`` detector features, and the DistillVLM aligned teacher (``--boxes-from``): token i of the
teacher and the student store is the same box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkd.data.images import load_rgb
from pkd.stores import ArraySpec, FeatureStore, StoreSpec, StoreWriter

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import SHARD, coco_boxes, pkd, store_arrays  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, ... (session fixtures)

F16 = {"rtol": 2e-3, "atol": 2e-3}
MAX_BOXES = 8  # synth images hold at most 4 objects


def regions(data, out, *args) -> int:
    return pkd("extract", "regions", "--data", data, "--out", out, "--items-per-shard", SHARD,
               "--batch-size", "8", *args)


@pytest.fixture(scope="module")
def student(synth_data, tiny_resnet_dir, tmp_path_factory):
    """Regions store: the benchmark's boxes.json, features pooled from the tiny ResNet."""
    out = tmp_path_factory.mktemp("regions") / "student.zarr"
    assert regions(synth_data, out, "--detector", f"given:{synth_data / 'boxes.json'}",
                   "--backbone", tiny_resnet_dir, "--max-boxes", MAX_BOXES) == 0
    return out


def image(data, image_id):
    return load_rgb(data / "images" / f"{int(image_id):012d}.png")


def test_given_boxes_pooled_by_backbone(student, synth_data, tiny_resnet_dir):
    from pkd.pipeline.backbones import RegionBackbone

    store = FeatureStore.open(student, kind="regions")
    assert store.complete and store.ok.all() and store.n_items == 48
    assert store.spec.dims == {"max_regions": MAX_BOXES, "feature_dim": 32}
    backbone = RegionBackbone(str(tiny_resnet_dir))
    want_boxes = coco_boxes(synth_data)
    ids = np.random.default_rng(0).permutation(store.ids)[:6]  # read by id, random order
    got = store.read(store.rows_of(ids))
    for i, image_id in enumerate(ids):
        n = int(got["num_regions"][i])
        boxes = want_boxes[int(image_id)]
        assert n == len(boxes) and got["image_size"][i].tolist() == [64, 64]
        np.testing.assert_array_equal(got["boxes"][i, :n], boxes)
        assert not got["boxes"][i, n:].any() and not got["region_features"][i, n:].any()
        x1, y1, x2, y2 = (boxes / 64).T
        geometry = np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], 1)  # by hand: (N, 6)
        np.testing.assert_allclose(got["region_geometry"][i, :n], geometry, rtol=1e-6)
        feats = backbone.pool([image(synth_data, image_id)], [boxes])[0].numpy()
        np.testing.assert_allclose(got["region_features"][i, :n].astype(np.float32), feats, **F16)


def test_aligned_teacher_pools_the_student_boxes(student, synth_data, teacher_resnet_dir):
    out = student.parent / "teacher.zarr"
    assert regions(synth_data, out, "--boxes-from", student, "--backbone", teacher_resnet_dir) == 0
    s, t = store_arrays(student), store_arrays(out)
    for name in ("ids", "ok", "boxes", "num_regions", "region_geometry", "image_size",
                 "region_scores", "region_labels"):
        assert s[name].tobytes() == t[name].tobytes(), name
    valid = np.arange(MAX_BOXES)[None] < s["num_regions"][:, None]  # (n, K)
    a, b = s["region_features"][valid], t["region_features"][valid]
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-2)  # same boxes, other backbone
    producer = FeatureStore.open(out).spec.producer
    assert producer["boxes_from"] == str(student)
    assert producer["backbone"]["config_sha256"] == producer["boxes_producer"]["backbone"][
        "config_sha256"]  # same config, other weights: only the weights fingerprint tells
    assert producer["backbone"]["weights_sha256"] != producer["boxes_producer"]["backbone"][
        "weights_sha256"]


def test_boxes_from_an_imported_store_without_scores(student, synth_data, tiny_resnet_dir):
    """Stores imported from HDF5 have no region_scores / region_labels: score 1, label -1."""
    src = store_arrays(student)
    keep = ("boxes", "region_features", "region_geometry", "num_regions", "image_size")
    spec = FeatureStore.open(student).spec
    imported = StoreSpec("regions", "image_id", tuple(a for a in spec.arrays if a.name in keep),
                         {"model": "import-h5:x.h5"}, spec.dims, 16, 64)
    assert all(isinstance(a, ArraySpec) for a in imported.arrays)
    path = student.parent / "imported.zarr"
    with StoreWriter(path, imported, src["ids"]) as writer:
        writer.write_shard(0, {name: src[name] for name in keep})
    out = student.parent / "from_imported.zarr"
    assert regions(synth_data, out, "--boxes-from", path, "--backbone", tiny_resnet_dir) == 0
    got = store_arrays(out)
    valid = np.arange(MAX_BOXES)[None] < got["num_regions"][:, None]
    assert (got["region_scores"][valid] == 1).all() and (got["region_labels"][valid] == -1).all()
    assert got["boxes"].tobytes() == src["boxes"].tobytes()
    np.testing.assert_array_equal(got["region_features"], src["region_features"])  # same backbone


def test_hf_detector_boxes_and_query_features(synth_data, tiny_detr_dir, tmp_path):
    from pkd.pipeline.detectors import HFDetector

    out = tmp_path / "detr.zarr"
    assert regions(synth_data, out, "--detector", f"hf:{tiny_detr_dir}", "--min-boxes", 3,
                   "--max-boxes", 6) == 0
    store = FeatureStore.open(out)
    assert store.spec.dims == {"max_regions": 6, "feature_dim": 32} and store.ok.all()
    detector = HFDetector(str(tiny_detr_dir), min_boxes=3, max_boxes=6)
    ids = np.random.default_rng(1).permutation(store.ids)[:4]
    got = store.read(store.rows_of(ids))
    for i, image_id in enumerate(ids):
        det = detector.detect([image(synth_data, image_id)], [int(image_id)])[0]
        n = len(det.boxes)
        assert 3 <= n <= 6 and got["num_regions"][i] == n
        np.testing.assert_allclose(got["boxes"][i, :n], det.boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["region_scores"][i, :n], det.scores, rtol=1e-4)
        np.testing.assert_allclose(got["region_features"][i, :n].astype(np.float32),
                                   det.features, **F16)


def test_grid_pooling_keeps_the_layout_and_reduces_to_mean(synth_data, tiny_resnet_dir):
    """grid:1 and the mean of grid:7's cells are exactly mean pooling; grid:K has C*K*K dims."""
    from pkd.pipeline.backbones import RegionBackbone

    boxes = coco_boxes(synth_data)
    image_id = next(i for i, b in boxes.items() if len(b) >= 2)
    img = [image(synth_data, image_id)]
    mean = RegionBackbone(str(tiny_resnet_dir)).pool(img, [boxes[image_id]])[0]
    n, c = mean.shape
    grid1 = RegionBackbone(str(tiny_resnet_dir), pooling="grid:1").pool(img, [boxes[image_id]])[0]
    torch.testing.assert_close(grid1, mean)
    grid7 = RegionBackbone(str(tiny_resnet_dir), pooling="grid:7").pool(img, [boxes[image_id]])[0]
    torch.testing.assert_close(grid7.reshape(n, c, 7, 7).mean((2, 3)), mean)
    grid2 = RegionBackbone(str(tiny_resnet_dir), pooling="grid:2")
    assert grid2.dim == 4 * c and grid2.provenance()["pooling"] == "roi_align_grid2"
    assert grid2.pool(img, [boxes[image_id]])[0].shape == (n, 4 * c)


def test_grid_pooled_store_and_bad_pooling(synth_data, tiny_resnet_dir, tmp_path, capsys):
    given = f"given:{synth_data / 'boxes.json'}"
    out = tmp_path / "grid.zarr"
    assert regions(synth_data, out, "--detector", given, "--backbone", tiny_resnet_dir,
                   "--pooling", "grid:2", "--max-boxes", MAX_BOXES, "--splits", "val") == 0
    store = FeatureStore.open(out, kind="regions")
    assert store.spec.dims["feature_dim"] == 128
    assert store.spec.producer["backbone"]["pooling"] == "roi_align_grid2"
    capsys.readouterr()
    for bad in ("grid:0", "grid:8", "max"):
        assert regions(synth_data, tmp_path / f"{bad}.zarr", "--detector", given, "--backbone",
                       tiny_resnet_dir, "--pooling", bad, "--splits", "val") == 2
        err = capsys.readouterr().err.strip()
        assert "expected 'mean' or 'grid:K'" in err and len(err.splitlines()) == 1
    assert regions(synth_data, tmp_path / "nobb.zarr", "--detector", "hf:x", "--pooling",
                   "grid:2", "--splits", "val") == 2
    assert "needs --backbone" in capsys.readouterr().err
