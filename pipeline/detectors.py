"""Box sources for the region stage, chosen by a detector spec string.

- ``given:PATH`` — :class:`GivenBoxes`: precomputed boxes from a COCO-detection JSON.
- ``hf:MODEL`` — :class:`HFDetector`: any transformers object detector (DETR, YOLOS, RT-DETR, ...).
- ``detectron2:CONFIG`` — :class:`Detectron2Detector`: a Faster R-CNN style detectron2 model
  (e.g. the bottom-up-attention Visual Genome detector); detectron2 is an optional install.
- ``grid:K`` / ``whole`` — :class:`GridBoxes`: no detector, ``K x K`` cells over the whole image
  (grid features) or one whole-image box; features pooled by ``--backbone``.
- ``simulated:student:PATH`` / ``simulated:teacher:PATH`` — :class:`pkd.pipeline.simulated.
  SimulatedDetector`: seeded proposal models (jitter, drop, add boxes) around given boxes, two
  that differ (for DistillVLM's alignment); labelled ``simulated`` in the provenance.

Every detector has ``detect(images, image_ids) -> list[Detections]``, ``provenance() -> dict``
and ``feature_dim`` (``None`` when it gives no per-box features: pool them with a backbone).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.hf.fingerprint import (
    file_sha256,
    folder_weights_sha256,
    image_processor_file,
    image_processor_sha256,
)
from pkd.hf.hashing import config_sha256
from pkd.hf.loading import first_line, model_identity, quiet_loading
from pkd.pipeline.backbones import forward_error, load_image_processor, load_pretrained
from pkd.pipeline.boxes import clip_boxes, cxcywh_to_xyxy, grid_boxes, select_boxes, xywh_to_xyxy

DETECTRON2_MISSING = ("detectron2 is not installed: pip install "
                      "'git+https://github.com/facebookresearch/detectron2.git' "
                      "(see README, Optional backends)")
SPEC_FORMS = ("given:PATH | hf:MODEL | detectron2:CONFIG | grid:K | whole | "
              "simulated:student|teacher:PATH")
MAX_GRID = 32  # grid:K with K up to this (1024 cells)
DETECTOR_DEFAULTS = {"conf": 0.2, "iou": 0.5, "min_boxes": 10}  # score threshold, NMS IoU,
# bottom-up's at-least-this-many boxes per image: a model detector's box selection
DEFAULT_MAX_BOXES = 100  # a detector's max_boxes when none is given (a grid gives its K*K)


@dataclass
class Detections:
    """The regions of one image (numpy, CPU)."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels of the decoded image
    scores: np.ndarray  # (N,) float32 detector confidence (1.0 for given boxes without a score)
    labels: np.ndarray  # (N,) int64 class id (-1: no class, e.g. the whole-image fallback box)
    features: np.ndarray | None  # (N, d) float32 per-box features, or None


@dataclass(frozen=True)
class DetectorSpec:
    kind: Literal["given", "hf", "detectron2", "grid", "simulated"]  # which box source
    target: str  # a JSON path, a model id/path, a detectron2 config path, or K of grid:K

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_detector(spec: str) -> DetectorSpec:
    """``"given:PATH" | "hf:MODEL" | "detectron2:CONFIG" | "grid:K" | "whole"`` -> :class:`DetectorSpec`
    (``whole`` = ``grid:1``)."""
    if spec.strip() == "whole":
        return DetectorSpec("grid", "1")  # one cell = the whole image
    kind, sep, target = spec.partition(":")
    if not sep or kind not in ("given", "hf", "detectron2", "grid", "simulated") \
            or not target.strip():
        raise PkdError(f"--detector {spec!r}: expected {SPEC_FORMS}")
    if kind == "grid" and not (target.strip().isdigit() and 1 <= int(target) <= MAX_GRID):
        raise PkdError(f"--detector {spec!r}: grid:K needs an integer K in 1..{MAX_GRID}")
    return DetectorSpec(kind, target.strip())  # type: ignore[arg-type]


def build_detector(spec: str, conf: float | None = None, iou: float | None = None,
                   min_boxes: int | None = None, max_boxes: int | None = None,
                   device: str = "cpu"):
    """The detector a spec names, with the box-selection settings of the region recipe.
    ``max_boxes=None``: :data:`DEFAULT_MAX_BOXES` for a detector; a grid gives exactly its K*K
    boxes and refuses a smaller ``max_boxes`` (:class:`GridBoxes`). ``conf`` / ``iou`` /
    ``min_boxes`` (None: :data:`DETECTOR_DEFAULTS`) only apply to a model detector (hf:,
    detectron2:); given to a grid or a boxes file they are refused, not ignored."""
    parsed = parse_detector(spec)
    given = {name: value for name, value in (("--conf", conf), ("--iou", iou),
                                              ("--min-boxes", min_boxes)) if value is not None}
    if parsed.kind in ("grid", "given", "simulated") and given:
        raise PkdError(f"{', '.join(given)}: {parsed.kind}:{parsed.target} boxes are not scored or "
                       "suppressed by a model, so these options cannot apply (omit them)")
    conf = DETECTOR_DEFAULTS["conf"] if conf is None else conf
    iou = DETECTOR_DEFAULTS["iou"] if iou is None else iou
    min_boxes = DETECTOR_DEFAULTS["min_boxes"] if min_boxes is None else min_boxes
    if parsed.kind == "grid":
        return GridBoxes(int(parsed.target), max_boxes)
    max_boxes = DEFAULT_MAX_BOXES if max_boxes is None else max_boxes
    if parsed.kind == "given":
        return GivenBoxes(parsed.target, max_boxes=max_boxes)
    if parsed.kind == "simulated":
        from pkd.pipeline.simulated import SimulatedDetector  # it builds on GivenBoxes' reader

        return SimulatedDetector(parsed.target, max_boxes=max_boxes)
    if parsed.kind == "hf":
        return HFDetector(parsed.target, conf, iou, min_boxes, max_boxes, device)
    return Detectron2Detector(parsed.target, conf, iou, min_boxes, max_boxes, device)


def whole_image(width: int, height: int) -> Detections:
    """One box covering the image (score 1, label -1, no features)."""
    return Detections(np.array([[0, 0, width, height]], dtype=np.float32),
                      np.ones(1, dtype=np.float32), np.full(1, -1, dtype=np.int64), None)


# --- grid:K / whole: boxes without a detector -------------------------------------------------

class GridBoxes:
    """``k x k`` cells over each whole image (:func:`pkd.pipeline.boxes.grid_boxes`), score 1,
    label -1, no features; ``k = 1`` (``whole``) is one whole-image box. ``max_regions = k*k``,
    so the store is padded to exactly the grid. A ``max_boxes`` below ``k*k`` cannot apply (the
    cells tile the image; dropping some would leave holes) and is refused; ``None`` or at least
    ``k*k`` is accepted (the grid never exceeds it)."""

    feature_dim = None

    def __init__(self, k: int, max_boxes: int | None = None):
        self.k = k
        self.max_regions = k * k
        if max_boxes is not None and max_boxes < self.max_regions:
            raise PkdError(self._too_few(max_boxes))

    @property
    def name(self) -> str:
        return "whole" if self.k == 1 else f"grid:{self.k}"

    def _too_few(self, max_boxes: int) -> str:
        """The one-line refusal of a ``max_boxes`` below the grid's cells, with the way out."""
        n = self.max_regions
        fits = f" or use grid:{math.isqrt(max_boxes)}" if max_boxes >= 1 else ""
        return (f"--max-boxes {max_boxes}: the {self.name} detector gives exactly {n} "
                f"box{'es' if n > 1 else ''} (omit --max-boxes{fits})")

    def provenance(self) -> dict:
        return {"detector": self.name, "grid": self.k, "cells": self.max_regions,
                "cell_order": "row-major"}

    def detect(self, images: Sequence[Image.Image], image_ids: Sequence[int]) -> list[Detections]:
        n = self.max_regions
        return [Detections(grid_boxes(*img.size, self.k).numpy(), np.ones(n, dtype=np.float32),
                           np.full(n, -1, dtype=np.int64), None) for img in images]


# --- given: COCO-detection JSON ---------------------------------------------------------------

@dataclass
class ImageBoxes:
    width: float  # image width the boxes refer to (images[].width)
    height: float  # image height the boxes refer to (images[].height)
    boxes: np.ndarray  # (N, 4) float32 x1y1x2y2 in that frame
    scores: np.ndarray  # (N,) float32, 1.0 where the annotation has no score
    labels: np.ndarray  # (N,) int64 category_id


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PkdError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _field(obj, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise PkdError(f"{where}: missing field '{key}'")
    return obj[key]


def read_coco_boxes(path: str | Path) -> dict[int, ImageBoxes]:
    """Parse ``{images: [{id, width, height}], annotations: [{image_id, bbox: [x, y, w, h],
    category_id, score?}]}`` into boxes per image id; any malformed field -> PkdError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise PkdError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PkdError(f"{path}: not a readable JSON file ({first_line(err)})") from err
    images, annotations = _field(data, "images", str(path)), _field(data, "annotations", str(path))
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise PkdError(f"{path}: 'images' and 'annotations' must be lists")
    sizes = {}
    for i, img in enumerate(images):
        where = f"{path}: images[{i}]"
        image_id = int(_number(_field(img, "id", where), f"{where}.id"))
        sizes[image_id] = (_number(_field(img, "width", where), f"{where}.width"),
                           _number(_field(img, "height", where), f"{where}.height"))
    rows: dict[int, list[tuple[list[float], float, int]]] = {i: [] for i in sizes}
    for j, ann in enumerate(annotations):
        where = f"{path}: annotations[{j}]"
        image_id = int(_number(_field(ann, "image_id", where), f"{where}.image_id"))
        if image_id not in sizes:
            raise PkdError(f"{where}.image_id: {image_id} is not listed in 'images'")
        bbox = _field(ann, "bbox", where)
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise PkdError(f"{where}.bbox: expected [x, y, w, h], got {bbox!r}")
        xywh = [_number(v, f"{where}.bbox") for v in bbox]
        if xywh[2] < 0 or xywh[3] < 0:
            raise PkdError(f"{where}.bbox: negative width or height {bbox!r}")
        score = _number(ann.get("score", 1.0), f"{where}.score")
        label = int(_number(_field(ann, "category_id", where), f"{where}.category_id"))
        rows[image_id].append((xywh, score, label))
    return {i: _image_boxes(sizes[i], rows[i]) for i in sizes}


def _image_boxes(size: tuple[float, float], rows: list) -> ImageBoxes:
    xywh = np.array([r[0] for r in rows], dtype=np.float32).reshape(-1, 4)
    return ImageBoxes(size[0], size[1], xywh_to_xyxy(xywh).numpy(),
                      np.array([r[1] for r in rows], dtype=np.float32),
                      np.array([r[2] for r in rows], dtype=np.int64))


class GivenBoxes:
    """Boxes from a COCO-detection JSON (the synthetic benchmark's ``boxes.json``).

    Boxes are in the frame of ``images[].width/height``; a decoded image of another size gets
    them scaled to its own size, then clipped. More than ``max_boxes`` -> the ``max_boxes``
    highest-scoring ones, in file order. An image without annotations (or not listed) gets
    one whole-image box, so every image has at least one region. No per-box features.
    """

    feature_dim = None

    def __init__(self, path: str | Path, max_boxes: int = 100):
        self.path, self.max_boxes = Path(path), max_boxes
        self.by_id = read_coco_boxes(self.path)

    def provenance(self) -> dict:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return {"detector": f"given:{self.path.resolve()}", "boxes_sha256": digest,
                "max_boxes": self.max_boxes}

    def detect(self, images: Sequence[Image.Image], image_ids: Sequence[int]) -> list[Detections]:
        return [self._one(img.size, int(i)) for img, i in zip(images, image_ids, strict=True)]

    def _one(self, size: tuple[int, int], image_id: int) -> Detections:
        width, height = size
        entry = self.by_id.get(image_id)
        if entry is None or len(entry.boxes) == 0:
            return whole_image(width, height)
        scale = np.array([width / entry.width, height / entry.height] * 2, dtype=np.float32)
        boxes = clip_boxes(entry.boxes * scale, width, height).numpy()
        keep = np.sort(np.argsort(-entry.scores, kind="stable")[: self.max_boxes])
        return Detections(boxes[keep], entry.scores[keep], entry.labels[keep], None)


# --- hf: transformers object detectors ------------------------------------------------------

def class_scores(logits: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query ``(score, label)`` from ``(B, Q, K)`` logits.

    ``K == num_labels + 1`` (DETR, YOLOS): softmax, the last class is "no object" and is
    dropped; otherwise (RT-DETR, Deformable / Conditional DETR focal heads): sigmoid per class.
    Score = the best class probability.
    """
    if logits.shape[-1] == num_labels + 1:
        probs = logits.softmax(-1)[..., :-1]
    else:
        probs = logits.sigmoid()
    return probs.max(-1)


class HFDetector:
    """A transformers object detector (``AutoModelForObjectDetection`` + its PIL processor).

    Boxes: ``pred_boxes`` (cx, cy, w, h relative to the image, as the processor's
    ``post_process_object_detection`` reads them) scaled to the decoded image size and clipped;
    scores/labels from :func:`class_scores`; then :func:`select_boxes` (NMS, conf, min/max).
    Region feature of a box = the final decoder hidden state of the query that predicted it
    (the last ``Q`` rows of ``last_hidden_state``: DETR's decoder output, YOLOS's detection
    tokens), so ``feature_dim`` is the model's width (``d_model`` / ``hidden_size``).
    """

    def __init__(self, model: str, conf: float = 0.2, iou: float = 0.5, min_boxes: int = 10,
                 max_boxes: int = 100, device: str = "cpu"):
        from transformers import AutoModelForObjectDetection

        quiet_loading()
        net, folder = load_pretrained(AutoModelForObjectDetection, model,
                                      "an object-detection model", f"hf:{model}")
        self.model = net.to(device).eval().requires_grad_(False)
        self.processor = load_image_processor(model)
        self.model_id, self.device = model, device
        self.weights_hash = folder_weights_sha256(folder)
        self.processor_hash = image_processor_sha256(folder)
        self.processor_file = image_processor_file(folder, model)
        self.conf, self.iou, self.min_boxes, self.max_boxes = conf, iou, min_boxes, max_boxes
        config = self.model.config
        self.feature_dim = int(getattr(config, "d_model", None) or config.hidden_size)

    def provenance(self) -> dict:
        return {"detector": f"hf:{model_identity(self.model_id)}",
                "config_sha256": config_sha256(self.model.config),
                "weights_sha256": self.weights_hash,
                "image_processor_sha256": self.processor_hash, "conf": self.conf, "iou": self.iou,
                "min_boxes": self.min_boxes, "max_boxes": self.max_boxes,
                "region_feature": "decoder_query_state"}

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], image_ids: Sequence[int]) -> list[Detections]:
        images = [img.convert("RGB") for img in images]
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        try:
            out = self.model(**inputs)
        except Exception as err:
            refused = forward_error(err, f"hf:{self.model_id}", self.processor_file,
                                    inputs["pixel_values"].shape)
            if refused is None:
                raise
            raise refused from err
        num_queries = out.logits.shape[1]
        scores, labels = class_scores(out.logits, self.model.config.num_labels)  # (B, Q)
        queries = out.last_hidden_state[:, -num_queries:]  # (B, Q, d) one state per query
        return [self._select(img.size, out.pred_boxes[i], scores[i], labels[i], queries[i])
                for i, img in enumerate(images)]

    def _select(self, size, pred_boxes, scores, labels, queries) -> Detections:
        width, height = size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = clip_boxes(cxcywh_to_xyxy(pred_boxes.float().cpu()) * scale, width, height)
        scores, labels = scores.float().cpu(), labels.cpu()
        keep = select_boxes(boxes, scores, labels, self.conf, self.iou, self.min_boxes,
                            self.max_boxes)
        return Detections(boxes[keep].numpy(), scores[keep].numpy(),
                          labels[keep].numpy().astype(np.int64),
                          queries[keep.to(queries.device)].float().cpu().numpy())


# --- detectron2: Faster R-CNN box head features -----------------------------------------------

def detectron2_weights(config: str, weights: str) -> Path | None:
    """The local file of a config's ``MODEL.WEIGHTS`` (hashed into the provenance), None for a
    URL / ``detectron2://`` / ``catalog://`` name (fetched by detectron2; the name is part of the
    config hash). An empty or missing local file is a PkdError: detectron2 would build the
    detector with random weights or fail deep inside fvcore."""
    if not weights:
        raise PkdError(f"{config}: MODEL.WEIGHTS is empty (the detector would run with random "
                       "weights)")
    if "://" in weights:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PkdError(f"{config}: MODEL.WEIGHTS {weights}: no such file")
    return path


class Detectron2Detector:
    """A detectron2 ``GeneralizedRCNN`` with ``StandardROIHeads`` (FPN) or ``Res5ROIHeads`` (C4,
    e.g. the bottom-up-attention Visual Genome detector).

    Runs like ``DefaultPredictor`` (resize to ``INPUT.MIN_SIZE_TEST``, BGR/RGB per
    ``INPUT.FORMAT``), keeps up to ``max(max_boxes, 1000)`` detections at score >= 0, then
    :func:`select_boxes`. Region features: the box head's pooled features of the kept boxes
    (see ``_box_features``). Weights: ``MODEL.WEIGHTS`` of the config.
    Written against detectron2's public API; the test suite runs the loading and error paths
    against a stand-in module (detectron2 is not installable from the registry), not a real
    detector.
    """

    def __init__(self, config: str, conf: float = 0.2, iou: float = 0.5, min_boxes: int = 10,
                 max_boxes: int = 100, device: str = "cpu"):
        try:
            import detectron2.data.transforms as T
            from detectron2.checkpoint import DetectionCheckpointer
            from detectron2.config import get_cfg
            from detectron2.modeling import build_model
        except ImportError as err:
            raise PkdError(DETECTRON2_MISSING) from err
        if not Path(config).is_file():
            raise PkdError(f"{config}: no such detectron2 config file")
        # detectron2 / yacs / fvcore raise all kinds of exceptions for a bad config or checkpoint
        # (KeyError, AssertionError, yaml errors...): each step is one line naming the file.
        cfg = get_cfg()
        try:
            cfg.merge_from_file(config)
            cfg.MODEL.DEVICE = device
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # select_boxes applies conf / min_boxes
            cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = iou
            cfg.TEST.DETECTIONS_PER_IMAGE = max(max_boxes, 1000)
            cfg.freeze()
        except Exception as err:
            raise PkdError(f"{config}: not a valid detectron2 config ({first_line(err)})") from err
        weights = str(cfg.MODEL.WEIGHTS or "")
        self.weights_path = detectron2_weights(config, weights)
        try:
            self.model = build_model(cfg).eval().requires_grad_(False)
        except Exception as err:
            raise PkdError(f"{config}: cannot build the detectron2 model "
                           f"({first_line(err)})") from err
        try:
            DetectionCheckpointer(self.model).load(weights)
        except Exception as err:
            raise PkdError(f"{config}: cannot load MODEL.WEIGHTS {weights} "
                           f"({first_line(err)})") from err
        self.weights_hash = file_sha256(self.weights_path) if self.weights_path else ""
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.cfg, self.config_path, self.device = cfg, config, device
        self.conf, self.iou, self.min_boxes, self.max_boxes = conf, iou, min_boxes, max_boxes
        heads = self.model.roi_heads
        self.feature_dim = (int(heads.box_head.output_shape.channels) if hasattr(heads, "box_head")
                            else int(cfg.MODEL.RESNETS.RES2_OUT_CHANNELS) * 8)  # res5 width

    def provenance(self) -> dict:
        return {"detector": f"detectron2:{Path(self.config_path).resolve()}",
                "config_sha256": hashlib.sha256(self.cfg.dump().encode()).hexdigest(),
                "weights_sha256": self.weights_hash,
                "conf": self.conf, "iou": self.iou, "min_boxes": self.min_boxes,
                "max_boxes": self.max_boxes, "region_feature": "box_head"}

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], image_ids: Sequence[int]) -> list[Detections]:
        return [self._one(img.convert("RGB")) for img in images]

    def _one(self, image: Image.Image) -> Detections:
        rgb = np.asarray(image)
        pixels = rgb[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else rgb
        resized = self.resize.get_transform(pixels).apply_image(pixels)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        width, height = image.size
        model = self.model
        batched = model.preprocess_image([{"image": tensor, "height": height, "width": width}])
        maps = model.backbone(batched.tensor)
        proposals, _ = model.proposal_generator(batched, maps, None)
        instances, _ = model.roi_heads(batched, maps, proposals, None)
        found = instances[0]  # boxes in resized-image pixels
        features = self._box_features(maps, found.pred_boxes)  # (N, feature_dim)
        resized_h, resized_w = batched.image_sizes[0]
        scale = torch.tensor([width / resized_w, height / resized_h] * 2)
        boxes = clip_boxes(found.pred_boxes.tensor.float().cpu() * scale, width, height)
        scores, labels = found.scores.float().cpu(), found.pred_classes.cpu()
        keep = select_boxes(boxes, scores, labels, self.conf, self.iou, self.min_boxes,
                            self.max_boxes)
        return Detections(boxes[keep].numpy(), scores[keep].numpy(),
                          labels[keep].numpy().astype(np.int64),
                          features[keep.to(features.device)].float().cpu().numpy())

    def _box_features(self, maps: dict, boxes) -> torch.Tensor:
        """Pooled box-head features: FPN-style ``StandardROIHeads`` (``box_pooler`` +
        ``box_head``) or C4 ``Res5ROIHeads`` (res5 on the pooled crop, spatial mean; the
        bottom-up-attention 2048-d features)."""
        heads = self.model.roi_heads
        if hasattr(heads, "box_head"):
            pooled = heads.box_pooler([maps[f] for f in heads.box_in_features], [boxes])
            return heads.box_head(pooled).flatten(1)
        crops = heads._shared_roi_transform([maps[f] for f in heads.in_features], [boxes])
        return crops.mean(dim=(2, 3))
