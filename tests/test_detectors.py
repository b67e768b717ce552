"""Detector specs, given boxes, transformers detectors and region backbones (tiny models)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.pipeline.backbones import RegionBackbone
from pkd.pipeline.detectors import (
    DetectorSpec,
    GivenBoxes,
    HFDetector,
    build_detector,
    parse_detector,
)
from pkd.pipeline.model_detectors import DETECTRON2_MISSING

torch.set_num_threads(1)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- specs ------------------------------------------------------------------------------------

def test_parse_detector_specs():
    assert parse_detector("given:data/boxes.json") == DetectorSpec("given", "data/boxes.json")
    assert parse_detector("hf:facebook/detr-resnet-50") == DetectorSpec(
        "hf", "facebook/detr-resnet-50")
    assert parse_detector("detectron2:C:/vg.yaml").target == "C:/vg.yaml"  # only the first ':'
    assert str(parse_detector("hf:x")) == "hf:x"


@pytest.mark.parametrize("spec", ["", "boxes.json", "yolo:v8", "hf:", "given:  ", ":x"])
def test_bad_specs_are_user_errors(spec):
    with pytest.raises(PkdError, match=re.escape("expected given:PATH | hf:MODEL | "
                                                 "detectron2:CONFIG")):
        parse_detector(spec)


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None,
                    reason="detectron2 is installed here")
def test_detectron2_missing_names_the_install():
    with pytest.raises(PkdError) as err:
        build_detector("detectron2:configs/vg.yaml")
    assert str(err.value) == DETECTRON2_MISSING
    assert "pip install 'git+https://github.com/facebookresearch/detectron2.git'" in str(err.value)


# --- given: COCO JSON ---------------------------------------------------------------------

COCO = {
    "images": [{"id": 1, "width": 100, "height": 50}, {"id": 2, "width": 40, "height": 40},
               {"id": 3, "width": 20, "height": 20}],
    "annotations": [
        {"id": 1, "image_id": 1, "bbox": [10, 5, 20, 10], "category_id": 3},
        {"id": 2, "image_id": 1, "bbox": [90, 40, 30, 30], "category_id": 1, "score": 0.5},
        {"id": 3, "image_id": 2, "bbox": [0, 0, 10, 10], "category_id": 2, "score": 0.2},
        {"id": 4, "image_id": 2, "bbox": [5, 5, 10, 10], "category_id": 2, "score": 0.9},
        {"id": 5, "image_id": 2, "bbox": [8, 8, 10, 10], "category_id": 2, "score": 0.4},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
}


def _write(tmp_path: Path, data, name: str = "boxes.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_given_boxes_xywh_to_pixels_and_clip(tmp_path):
    given = build_detector(f"given:{_write(tmp_path, COCO)}")
    assert isinstance(given, GivenBoxes) and given.feature_dim is None
    (det,) = given.detect([_image(100, 50)], [1])
    # [10,5,20,10] -> (10,5,30,15); [90,40,30,30] -> (90,40,120,70) clipped to (90,40,100,50)
    assert det.boxes.tolist() == [[10, 5, 30, 15], [90, 40, 100, 50]]
    assert det.boxes.dtype == np.float32
    assert det.scores.tolist() == [1.0, 0.5]  # no score field -> 1.0
    assert det.labels.tolist() == [3, 1]
    assert det.features is None


def test_given_boxes_scale_to_the_decoded_size_and_cap(tmp_path):
    given = GivenBoxes(_write(tmp_path, COCO), max_boxes=2)
    (det,) = given.detect([_image(80, 80)], [2])  # file says 40x40: boxes scale by 2
    # top-2 scores are .9 (annotation 4) and .4 (annotation 5), kept in file order
    assert det.boxes.tolist() == [[10, 10, 30, 30], [16, 16, 36, 36]]
    assert det.scores.tolist() == pytest.approx([0.9, 0.4])


def test_given_boxes_image_without_boxes_gets_the_whole_image(tmp_path):
    given = GivenBoxes(_write(tmp_path, COCO))
    no_boxes, unlisted = given.detect([_image(20, 20), _image(30, 10)], [3, 99])
    assert no_boxes.boxes.tolist() == [[0, 0, 20, 20]]
    assert unlisted.boxes.tolist() == [[0, 0, 30, 10]]
    assert unlisted.labels.tolist() == [-1] and unlisted.scores.tolist() == [1.0]


def test_given_boxes_provenance_hashes_the_file(tmp_path):
    a = GivenBoxes(_write(tmp_path, COCO, "a.json")).provenance()
    changed = {**COCO, "annotations": COCO["annotations"][:1]}
    b = GivenBoxes(_write(tmp_path, changed, "b.json")).provenance()
    assert a["detector"].startswith("given:") and a["boxes_sha256"] != b["boxes_sha256"]


@pytest.mark.parametrize("data, where", [
    ("{not json", "not a readable JSON file"),
    ({"images": []}, "missing field 'annotations'"),
    ({"images": [{"id": 1, "width": 10}], "annotations": []},
     r"images\[0\]: missing field 'height'"),
    ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, 2, 3], "category_id": 1}]},
     r"annotations\[0\]\.bbox: expected \[x, y, w, h\]"),
    ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, 2, "3", 4], "category_id": 1}]},
     r"annotations\[0\]\.bbox: expected a number"),
    ({**COCO, "annotations": [{"image_id": 7, "bbox": [1, 2, 3, 4], "category_id": 1}]},
     r"annotations\[0\]\.image_id: 7 is not listed"),
    ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, 2, -3, 4], "category_id": 1}]},
     "negative width or height"),
    ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, 2, 3, 4]}]},
     r"annotations\[0\]: missing field 'category_id'"),
])
def test_malformed_coco_names_the_field(tmp_path, data, where):
    path = _write(tmp_path, data)
    with pytest.raises(PkdError, match=where) as err:
        GivenBoxes(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PkdError, match="no such file"):
        build_detector(f"given:{tmp_path / 'nope.json'}")


# --- hf: transformers detectors -------------------------------------------------------------

IMAGES = [_image(96, 64, 1), _image(50, 70, 2)]


@pytest.fixture(scope="module", params=["detr", "yolos"])
def hf_model_dir(request) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def _reference(model_dir: Path, images):
    """Independent run: the model, its processor's own post-processing, the query states."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    model = AutoModelForObjectDetection.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    with torch.no_grad():
        out = model(**processor(images=images, return_tensors="pt"))
    sizes = [(img.height, img.width) for img in images]
    post = processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes)
    return out.last_hidden_state[:, -out.logits.shape[1]:], post


def test_hf_detector_counts_and_boxes_inside(hf_model_dir):
    det = HFDetector(str(hf_model_dir), conf=0.0, iou=1.0, min_boxes=3, max_boxes=5)
    assert det.feature_dim == 32
    for img, d in zip(IMAGES, det.detect(IMAGES, [1, 2]), strict=True):
        assert d.boxes.shape == (5, 4) and d.features.shape == (5, 32)  # iou 1: no suppression
        assert d.scores.shape == (5,) and d.labels.shape == (5,)
        assert np.all(np.diff(d.scores) <= 0)  # best first
        assert np.all(d.boxes[:, :2] >= 0) and np.all(d.boxes[:, :2] <= d.boxes[:, 2:])
        assert np.all(d.boxes[:, 2] <= img.width) and np.all(d.boxes[:, 3] <= img.height)
    # nothing passes conf: exactly min_boxes; NMS may only lower the confident count
    confident = HFDetector(str(hf_model_dir), conf=1.1, min_boxes=3, max_boxes=5)
    for d in confident.detect(IMAGES, [1, 2]):
        assert len(d.boxes) == 3
    loose = HFDetector(str(hf_model_dir), conf=0.0, iou=0.5, min_boxes=2, max_boxes=8)
    for d in loose.detect(IMAGES, [1, 2]):
        assert 2 <= len(d.boxes) <= 8


def test_hf_features_are_the_kept_queries_states(hf_model_dir):
    det = HFDetector(str(hf_model_dir), conf=0.0, iou=1.0, min_boxes=4, max_boxes=4)
    queries, post = _reference(hf_model_dir, IMAGES)
    for i, (img, d) in enumerate(zip(IMAGES, det.detect(IMAGES, [1, 2]), strict=True)):
        for box, score, label, feat in zip(d.boxes, d.scores, d.labels, d.features, strict=True):
            q = int(torch.cdist(torch.from_numpy(feat)[None], queries[i]).argmin())
            assert torch.allclose(torch.from_numpy(feat), queries[i][q], atol=1e-5)
            # the processor's own post-processing agrees on that query's box / score / label
            ref = post[i]["boxes"][q].clone()
            ref[0::2], ref[1::2] = ref[0::2].clamp(0, img.width), ref[1::2].clamp(0, img.height)
            assert torch.allclose(torch.from_numpy(box), ref, atol=1e-3)
            assert score == pytest.approx(float(post[i]["scores"][q]), abs=1e-5)
            assert label == int(post[i]["labels"][q])
        # the kept queries are the 4 best of all queries
        assert sorted(d.scores.tolist(), reverse=True) == pytest.approx(
            sorted(post[i]["scores"].tolist(), reverse=True)[:4], abs=1e-5)


def test_hf_detector_is_deterministic(tiny_detr_dir):
    det = HFDetector(str(tiny_detr_dir), conf=0.0, min_boxes=3, max_boxes=6)
    first, second = det.detect(IMAGES, [1, 2]), det.detect(IMAGES, [1, 2])
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.features, b.features)
    assert det.provenance()["detector"] == f"hf:{tiny_detr_dir}"


def test_hf_detector_bad_model_is_a_user_error(tmp_path):
    with pytest.raises(PkdError, match="cannot load an object-detection model"):
        build_detector(f"hf:{tmp_path}")


# --- region backbones -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet(tiny_resnet_dir) -> RegionBackbone:
    return RegionBackbone(str(tiny_resnet_dir), output_size=4)


def test_backbone_whole_image_box_is_the_map_mean(resnet):
    # 80x80 -> shortest edge 64 -> 64x64 pixels -> 8x8 map (stride 8). Aligned RoIAlign of the
    # box (0,0,80,80) -> map box (-.5,-.5,7.5,7.5) with 4x4 bins of 2 cells, ceil(8/4) = 2
    # samples per axis at -.5 + 2p + (i + .5) = 2p + i: exactly the 64 cell centres, so the
    # pooled vector is exactly the average of the map (up to float summation order).
    img = _image(80, 80)
    (fmap,) = resnet.feature_maps([img])
    assert fmap.shape == (32, 8, 8) and resnet.dim == 32
    (pooled,) = resnet.pool([img], [np.array([[0, 0, 80, 80]], dtype=np.float32)])
    assert pooled.shape == (1, 32) and pooled.dtype == torch.float32
    assert torch.allclose(pooled[0], fmap.mean(dim=(1, 2)), atol=1e-6)
    # the top-left quarter (0,0,40,40) -> map (-.5,-.5,3.5,3.5): one sample per bin at cells 0..3
    (quarter,) = resnet.pool([img], [np.array([[0, 0, 40, 40]], dtype=np.float32)])
    assert torch.allclose(quarter[0], fmap[:, :4, :4].mean(dim=(1, 2)), atol=1e-6)


def test_backbone_map_matches_a_plain_forward(resnet, tiny_resnet_dir):
    from transformers import AutoModel

    img = _image(80, 80, 3)
    model = AutoModel.from_pretrained(tiny_resnet_dir, local_files_only=True).eval()
    pixels = resnet.processor(images=[img.resize((64, 64), Image.Resampling.BICUBIC)],
                              do_resize=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = model(pixel_values=pixels).last_hidden_state[0]
    assert torch.allclose(resnet.feature_maps([img])[0], want, atol=1e-5)


def test_backbone_keeps_aspect_and_box_order(resnet):
    # 120x80 -> 96x64 pixels -> 12x8 map; rows follow the boxes, empty box sets give (0, C)
    images = [_image(120, 80, 4), _image(80, 80, 5)]
    boxes = [np.array([[0, 0, 60, 80], [60, 0, 120, 80], [10, 10, 50, 30]], dtype=np.float32),
             np.zeros((0, 4), dtype=np.float32)]
    assert resnet.feature_maps(images[:1])[0].shape == (32, 8, 12)
    pooled = resnet.pool(images, boxes)
    assert [p.shape for p in pooled] == [(3, 32), (0, 32)]
    for i in range(3):
        (alone,) = resnet.pool(images[:1], [boxes[0][i:i + 1]])
        assert torch.allclose(alone[0], pooled[0][i], atol=1e-6)
    assert not torch.allclose(pooled[0][0], pooled[0][1])


def test_aligned_teacher_same_boxes_two_backbones(resnet, tmp_path_factory):
    from pkd.hf.tiny_models import build_tiny_resnet

    teacher = RegionBackbone(str(build_tiny_resnet(tmp_path_factory.mktemp("teacher"), hidden=8,
                                                   seed=1)), output_size=4)
    images = [_image(96, 64, 6), _image(64, 64, 7)]
    boxes = [np.array([[0, 0, 30, 30], [30, 10, 96, 64]], dtype=np.float32),
             np.array([[5, 5, 60, 60]], dtype=np.float32)]
    student_rows, teacher_rows = resnet.pool(images, boxes), teacher.pool(images, boxes)
    assert [len(r) for r in student_rows] == [len(r) for r in teacher_rows] == [2, 1]
    assert teacher.dim == 16 and teacher_rows[0].shape == (2, 16)
    # row i of the teacher is box i: pooling box i alone gives the same vector
    (second,) = teacher.pool(images[:1], [boxes[0][1:]])
    assert torch.allclose(teacher_rows[0][1], second[0], atol=1e-6)
    assert teacher.provenance()["config_sha256"] != resnet.provenance()["config_sha256"]


def test_vit_tokens_become_a_map(tmp_path):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    vit = RegionBackbone(str(tmp_path), output_size=4)
    img = _image(50, 40)  # resized (not cropped) to 32x32 -> 4x4 patch grid
    (fmap,) = vit.feature_maps([img])
    assert fmap.shape == (16, 4, 4) and vit.dim == 16
    (pooled,) = vit.pool([img], [np.array([[0, 0, 50, 40]], dtype=np.float32)])
    assert torch.allclose(pooled[0], fmap.mean(dim=(1, 2)), atol=1e-6)


def test_backbone_bad_model_is_a_user_error(tmp_path):
    with pytest.raises(PkdError, match="cannot load a transformers backbone"):
        RegionBackbone(str(tmp_path))
