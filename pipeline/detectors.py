"""Box sources for the region stage, chosen by a detector spec string.

- ``given:PATH`` — :class:`GivenBoxes`: precomputed boxes from a COCO-detection JSON.
- ``hf:MODEL`` — :class:`HFDetector`: any transformers object detector (DETR, YOLOS, RT-DETR, ...).
- ``detectron2:CONFIG`` — :class:`Detectron2Detector`: a Faster R-CNN style detectron2 model
  (e.g. the bottom-up-attention Visual Genome detector); detectron2 is an optional install.
- ``grid:K`` / ``whole`` — :class:`GridBoxes`: no detector, ``K x K`` cells over the whole image
  (grid features) or one whole-image box; features pooled by ``--backbone``.
- ``simulated:student:PATH`` / ``simulated:teacher:PATH`` —
  :class:`pkd.pipeline.simulated.SimulatedDetector`: seeded proposal models (jitter, drop, add
  boxes) around given boxes, two that differ (for DistillVLM's alignment); labelled
  ``simulated`` in the provenance.

Every detector has ``detect(images, image_ids) -> list[Detections]``, ``provenance() -> dict``
and ``feature_dim`` (``None`` when it gives no per-box features: pool them with a backbone).
This module reads the spec and builds the detector (:func:`build_detector`, the one dispatch);
the sources without a model are in :mod:`pkd.pipeline.box_sources`, ``hf:`` and
``detectron2:`` in :mod:`pkd.pipeline.model_detectors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pkd.errors import PkdError
from pkd.pipeline.box_sources import GivenBoxes, GridBoxes
from pkd.pipeline.model_detectors import Detectron2Detector, HFDetector
from pkd.pipeline.simulated import SimulatedDetector

SPEC_FORMS = ("given:PATH | hf:MODEL | detectron2:CONFIG | grid:K | whole | "
              "simulated:student|teacher:PATH")
MAX_GRID = 32  # grid:K with K up to this (1024 cells)
DETECTOR_DEFAULTS = {"conf": 0.2, "iou": 0.5, "min_boxes": 10}  # score threshold, NMS IoU,
# bottom-up's at-least-this-many boxes per image: a model detector's box selection
DEFAULT_MAX_BOXES = 100  # a detector's max_boxes when none is given (a grid gives its K*K)


@dataclass(frozen=True)
class DetectorSpec:
    kind: Literal["given", "hf", "detectron2", "grid", "simulated"]  # which box source
    target: str  # a JSON path, a model id/path, a detectron2 config path, or K of grid:K

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_detector(spec: str) -> DetectorSpec:
    """``"given:PATH" | "hf:MODEL" | "detectron2:CONFIG" | "grid:K" | "whole"`` ->
    :class:`DetectorSpec` (``whole`` = ``grid:1``)."""
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
        return SimulatedDetector(parsed.target, max_boxes=max_boxes)
    if parsed.kind == "hf":
        return HFDetector(parsed.target, conf, iou, min_boxes, max_boxes, device)
    return Detectron2Detector(parsed.target, conf, iou, min_boxes, max_boxes, device)
