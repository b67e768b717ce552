"""What a detector returns (:class:`Detections`) and the box sources that need no model.

- ``grid:K`` / ``whole`` — :class:`GridBoxes`: ``K x K`` cells over the whole image (grid
  features) or one whole-image box; features pooled by ``--backbone``.
- ``given:PATH`` — :class:`GivenBoxes`: precomputed boxes from a COCO-detection JSON
  (:func:`read_coco_boxes`); :mod:`pkd.pipeline.simulated` draws proposals around them.

The spec strings are read, and the source chosen, in :mod:`pkd.pipeline.detectors`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pkd.errors import PkdError
from pkd.hf.loading import first_line
from pkd.pipeline.boxes import clip_boxes, grid_boxes, xywh_to_xyxy


@dataclass
class Detections:
    """The regions of one image (numpy, CPU)."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels of the decoded image
    scores: np.ndarray  # (N,) float32 detector confidence (1.0 for given boxes without a score)
    labels: np.ndarray  # (N,) int64 class id (-1: no class, e.g. the whole-image fallback box)
    features: np.ndarray | None  # (N, d) float32 per-box features, or None


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
