"""Region-backbone pre-training (bottom-up's object + attribute heads) and simulated detectors."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pkd.errors import PkdError
from pkd.roi import box_iou
from pkd.train.pretrain.detection import load_detection_split
from pkd.train.pretrain.regions import (
    RegionHeads,
    RegionPretrainConfig,
    pretrain_regions,
    region_losses,
    sample_rois,
)

F16 = {"rtol": 2e-3, "atol": 2e-3}  # the store keeps features in float16


def pkd(*args) -> int:
    from pkd.cli import main

    return main([str(a) for a in args])


# --- heads and losses: golden values ------------------------------------------------------------

def _heads() -> RegionHeads:
    """dim 2, classes {bg, 1, 2}, one group "color" of 2 values, hidden 2, class embedding 1;
    weights set by hand: class logits = (0, ln 3, 0); h = ReLU((1, 0)) ; colour logits = (0, 2)."""
    heads = RegionHeads(2, 2, {"color": 2}, hidden=2, class_embedding=1)
    with torch.no_grad():
        for p in heads.parameters():
            p.zero_()
        heads.classifier.bias.copy_(torch.tensor([0.0, math.log(3.0), 0.0]))
        heads.attribute_hidden.bias.copy_(torch.tensor([1.0, 0.0]))
        heads.attributes["color"].weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    return heads


def test_region_losses_golden_values():
    heads = _heads()
    feats = torch.randn(2, 2)  # ignored by the zeroed weights
    labels = torch.tensor([1, 0])  # one foreground RoI, one background
    colors = {"color": torch.tensor([0, 1])}
    out = heads(feats, labels)
    assert out["class_logits"].shape == (2, 3) and out["attribute_logits"]["color"].shape == (2, 2)
    parts = region_losses(out, labels, colors, attribute_weight=0.5)
    # class softmax = (1/5, 3/5, 1/5): CE(label 1) = ln(5/3), CE(label 0) = ln 5
    class_loss = (math.log(5 / 3) + math.log(5)) / 2
    # only the foreground RoI counts: colour logits (0, 2), target 0 -> ln(1 + e^2)
    attribute_loss = math.log(1 + math.e ** 2)
    assert parts["class_loss"].item() == pytest.approx(class_loss, rel=1e-6)
    assert parts["attribute_loss"].item() == pytest.approx(attribute_loss, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(class_loss + 0.5 * attribute_loss, rel=1e-6)


def test_attribute_loss_is_zero_without_foreground_and_uses_the_class_embedding():
    heads = _heads()
    labels = torch.tensor([0, 0])
    parts = region_losses(heads(torch.zeros(2, 2), labels), labels, {"color": torch.tensor([0, 1])})
    assert parts["attribute_loss"].item() == 0.0
    with torch.no_grad():
        heads.class_embed.weight.copy_(torch.tensor([[0.0], [5.0], [0.0]]))
        heads.attribute_hidden.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    logits = heads(torch.zeros(2, 2), torch.tensor([1, 2]))["attribute_logits"]["color"]
    # class 1: h = (1, 5) -> colour logits (0, 2); class 2: h = (1, 0) -> (0, 2) too (W col 2 = 0)
    torch.testing.assert_close(logits, torch.tensor([[0.0, 2.0], [0.0, 2.0]]))


def test_rois_use_the_pipeline_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))


def test_sample_rois_labels_and_determinism(tmp_path):
    boxes = torch.tensor([[4.0, 4, 20, 20], [30, 30, 50, 50]])
    labels, colors = torch.tensor([1, 3]), {"color": torch.tensor([2, 5])}
    cfg = RegionPretrainConfig(tmp_path, tmp_path / "o", jitter_per_box=2, jitter_scale=0.05,
                               background_per_image=3)
    rois, classes, attrs = sample_rois(boxes, labels, colors, 64, 64, cfg,
                                       torch.Generator().manual_seed(0))
    again = sample_rois(boxes, labels, colors, 64, 64, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rois, again[0])
    torch.testing.assert_close(rois[:2], boxes)  # ground truth first
    jit = rois[2:6]
    iou = box_iou(jit, boxes)[torch.arange(4), torch.tensor([0, 1, 0, 1])]
    assert torch.equal(classes[2:6], torch.where(iou >= 0.5, labels.repeat(2), 0))
    assert torch.equal(attrs["color"][:6], colors["color"].repeat(3))
    background = rois[6:]
    assert len(background) <= 3 and (classes[6:] == 0).all()
    assert (box_iou(background, boxes) < 0.3).all()
    assert (rois >= 0).all() and (rois <= 64).all()


# --- the corpus loader: one-line errors -----------------------------------------------------------

def _corpus(folder: Path, train: dict | None = None) -> Path:
    """A two-image corpus (images are not decoded by the loader)."""
    good = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64},
                       {"id": 2, "file_name": "b.png", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [2, 3, 10, 12], "area": 120,
                             "iscrowd": 0, "category_id": 7,
                             "attributes": {"color": "red", "size": "small"}}],
            "categories": [{"id": 7, "name": "circle"}, {"id": 9, "name": "square"}],
            "attribute_names": {"color": ["red", "blue"], "size": ["small", "large"]}}
    (folder / "detection").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        data = train if (split == "train" and train is not None) else good
        text = data if isinstance(data, str) else json.dumps(data)
        (folder / "detection" / f"instances_{split}.json").write_text(text)
    return folder


def test_loader_reads_boxes_classes_and_attributes(tmp_path):
    split = load_detection_split(_corpus(tmp_path), "train")
    assert split.image_ids == [1, 2] and split.categories == ["circle", "square"]
    np.testing.assert_array_equal(split.boxes[0], [[2, 3, 12, 15]])  # xywh -> xyxy
    assert split.labels[0].tolist() == [1] and len(split.boxes[1]) == 0  # class index 1..K
    assert split.attributes["color"][0].tolist() == [0]
    assert split.files[0] == tmp_path / "detection" / "images" / "a.png"


def _broken(change) -> dict:
    data = json.loads(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [2, 3, 10, 12], "category_id": 7,
                         "attributes": {"color": "red", "size": "small"}}],
        "categories": [{"id": 7, "name": "circle"}],
        "attribute_names": {"color": ["red"], "size": ["small"]}}))
    change(data)
    return data


BAD = {
    "bbox length": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0].bbox"),
    "zero width": (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 3]),
                   "annotations[0].bbox"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=3),
                         "annotations[0].category_id"),
    "unknown colour": (lambda d: d["annotations"][0]["attributes"].update(color="teal"),
                       "annotations[0].attributes.color"),
    "missing size": (lambda d: d["annotations"][0]["attributes"].pop("size"),
                     "annotations[0].attributes: missing field 'size'"),
    "unlisted image": (lambda d: d["annotations"][0].update(image_id=5),
                       "annotations[0].image_id"),
    "string width": (lambda d: d["images"][0].update(width="64"), "images[0].width"),
    "no categories": (lambda d: d.pop("categories"), "missing field 'categories'"),
    "bad attribute names": (lambda d: d.update(attribute_names={"color": "red"}),
                            "attribute_names.color"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_loader_one_line_errors(tmp_path, name):
    change, where = BAD[name]
    _corpus(tmp_path, _broken(change))
    with pytest.raises(PkdError) as err:
        load_detection_split(tmp_path, "train")
    message = str(err.value)
    assert "\n" not in message and "instances_train.json" in message and where in message


def test_loader_unreadable_and_missing_files(tmp_path, capsys):
    _corpus(tmp_path, "{not json")
    with pytest.raises(PkdError, match="instances_train.json: not a readable JSON file"):
        load_detection_split(tmp_path, "train")
    assert pkd("pretrain", "regions", "--data", tmp_path / "nowhere", "--out",
               tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instances_train.json: no such file" in err
    _corpus(tmp_path)  # valid JSON, but the images do not exist
    assert pkd("pretrain", "regions", "--data", tmp_path, "--out", tmp_path / "m",
               "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.png: no such image file" in err
    assert not (tmp_path / "m").exists()


# --- train -> save_pretrained -> pkd extract regions --backbone ---------------------------------

@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark with its detection corpus (16 + 4 images)."""
    from pkd.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth_det")
    generate(SynthConfig(train_images=8, val_images=4, test_images=4, test_comp_images=4,
                         test_iid_images=4, caption_images=4, detection_train_images=16,
                         detection_val_images=4, pilot_scenes=300), out)
    return out


@pytest.fixture(scope="module")
def trained(bench, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backbones") / "student"
    assert pkd("pretrain", "regions", "--data", bench, "--out", out, "--epochs", "1",
               "--batch-size", "8", "--threads", "1") == 0
    return out


def test_round_trip_extract_with_the_trained_backbone(bench, trained, tmp_path):
    from transformers import AutoModel

    from pkd.pipeline.backbones import RegionBackbone
    from pkd.stores import FeatureStore
    from pkd.train.pretrain.detection import decode_pixels
    from pkd.train.pretrain.regions import SIZES, batch_features, build_backbone

    config = json.loads((trained / "config.json").read_text())
    record = config["pkd_region_pretrain"]
    assert record["corpus"]["train_images"] == 16 and record["size"] == "student"
    assert record["corpus"]["instances_train_sha256"] and "bottom-up" in record["recipe"]
    metrics = json.loads((trained / "pretrain_metrics.json").read_text())
    assert metrics["stage"] == "regions" and len(metrics["epochs"]) == 1
    assert not list(trained.parent.glob(".*partial*"))  # the staging folder is gone
    store_path = tmp_path / "r.zarr"
    assert pkd("extract", "regions", "--data", bench, "--detector",
               f"given:{bench / 'boxes.json'}", "--backbone", trained,
               "--max-boxes", "4", "--out", store_path) == 0
    store = FeatureStore.open(store_path, kind="regions")
    assert store.complete and store.spec.dims["feature_dim"] == 64  # the student's width
    producer = store.spec.producer["backbone"]
    assert producer["weights_sha256"] == RegionBackbone(str(trained)).weights_hash
    # the training path (decode_pixels + batch_features) gives the stored features
    model = AutoModel.from_pretrained(trained, local_files_only=True).eval()
    _, processor = build_backbone(SIZES["student"], 0)
    got = store.read(store.rows_of(store.ids[:3]), ["boxes", "num_regions", "region_features"])
    files = [bench / "images" / f"{int(i):012d}.png" for i in store.ids[:3]]
    pixels = decode_pixels(files, processor)
    boxes = [torch.from_numpy(got["boxes"][k, :n]) for k, n in enumerate(got["num_regions"])]
    cfg = RegionPretrainConfig(bench, trained)
    with torch.no_grad():
        feats = batch_features(model, pixels, boxes, [(64, 64)] * 3, cfg).numpy()
    stored = np.concatenate([got["region_features"][k, :n] for k, n in
                             enumerate(got["num_regions"])]).astype(np.float32)
    np.testing.assert_allclose(stored, feats, **F16)


def test_refuses_a_foreign_out_folder_and_a_bad_size(bench, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert pkd("pretrain", "regions", "--data", bench, "--out", foreign, "--epochs", "1") == 2
    assert "holds no earlier pretrain output" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "mine"
    assert pkd("pretrain", "regions", "--data", bench, "--out", tmp_path / "x", "--size",
               "huge") == 2
    assert "size must be one of student, teacher" in capsys.readouterr().err


def test_same_seed_same_weights(bench, tmp_path):
    from safetensors.torch import load_file

    def run(seed: int, name: str) -> dict:
        pretrain_regions(RegionPretrainConfig(bench, tmp_path / name, epochs=1, batch_size=8,
                                              seed=seed, threads=1))
        return load_file(tmp_path / name / "model.safetensors")

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_foundation_pretrain_command_still_routes(tmp_path, capsys):
    """``pkd pretrain --data --out`` is still the foundation pre-training (its own error)."""
    assert pkd("pretrain", "--data", tmp_path, "--out", tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "captions.json" in err and err.count("\n") == 1


# --- simulated detectors ------------------------------------------------------------------------

def _detect(spec: str, bench: Path, ids: list[int]):
    from PIL import Image

    from pkd.pipeline.detectors import build_detector

    detector = build_detector(spec, max_boxes=8)
    images = [Image.open(bench / "images" / f"{i:012d}.png") for i in ids]
    return detector, detector.detect(images, ids)


def test_simulated_detectors_differ_and_are_deterministic(bench):
    from pkd.pipeline.box_sources import read_coco_boxes

    ids = sorted(read_coco_boxes(bench / "boxes.json"))[:12]
    student, s1 = _detect(f"simulated:student:{bench / 'boxes.json'}", bench, ids)
    _, s2 = _detect(f"simulated:student:{bench / 'boxes.json'}", bench, ids[::-1])
    teacher, t1 = _detect(f"simulated:teacher:{bench / 'boxes.json'}", bench, ids)
    for a, b in zip(s1, s2[::-1], strict=True):  # same boxes whatever the order / batch
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert any(a.boxes.shape != b.boxes.shape or not np.allclose(a.boxes, b.boxes)
               for a, b in zip(s1, t1, strict=True))
    for det in s1 + t1:
        assert len(det.boxes) >= 1 and (det.boxes[:, 2:] > det.boxes[:, :2]).all()
        assert (det.boxes >= 0).all() and (det.boxes <= 64).all()
        assert (np.diff(det.scores) <= 0).all()  # best first
    assert student.provenance()["simulated"] is True
    assert student.provenance()["profile"] != teacher.provenance()["profile"]


def test_simulated_proposal_model_by_hand():
    from pkd.pipeline.simulated import ProposalProfile, simulate_proposals

    boxes = np.array([[10.0, 10, 30, 30]])
    exact = ProposalProfile(sigma=0.0, drop=0.0, extra=0.0, seed=3)
    det = simulate_proposals(boxes, np.array([2]), 64, 64, exact, 7, 10)
    np.testing.assert_array_equal(det.boxes, boxes)  # no jitter, no drop, no extra
    assert det.labels.tolist() == [2] and 0.6 <= det.scores[0] <= 1.0
    dropped = simulate_proposals(boxes, np.array([2]), 64, 64, replace(exact, drop=1.0),
                                 7, 10)
    assert len(dropped.boxes) == 1  # one box per image is always kept


def test_bad_simulated_spec(tmp_path, capsys):
    from pkd.pipeline.detectors import build_detector

    with pytest.raises(PkdError, match="PROFILE one of student, teacher"):
        build_detector(f"simulated:oracle:{tmp_path / 'b.json'}")
    with pytest.raises(PkdError, match="no such file"):
        build_detector(f"simulated:student:{tmp_path / 'b.json'}")
