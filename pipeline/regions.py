"""The region stage: boxes per image, features per box, geometry — one ``regions`` store.

Boxes come from a detector spec (``given:PATH`` COCO boxes, ``hf:MODEL`` transformers detector,
``detectron2:CONFIG``) or, for the DistillVLM aligned teacher, from another regions store
(``boxes_from``): the teacher's backbone is then pooled on exactly the student's boxes, so token i
of teacher and student is the same region. Features are RoIAlign-pooled from ``backbone`` when one
is given, else the detector's own per-box features.

Stored per image (padded to ``max_regions``): ``boxes`` (N,4) xyxy pixels, ``region_features``
(N,d), ``region_geometry`` (N,6) = (x1/W, y1/H, x2/W, y2/H, w/W, h/H), ``num_regions``,
``image_size`` (w,h), ``region_scores`` (N), ``region_labels`` (N).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pkd.errors import PkdError
from pkd.pipeline.backbones import RegionBackbone
from pkd.pipeline.box_sources import Detections
from pkd.pipeline.boxes import box_geometry
from pkd.pipeline.detectors import build_detector
from pkd.pipeline.sources import Source
from pkd.pipeline.stages import empty_arrays, image_inputs, iter_image_batches
from pkd.stores import ArraySpec, Failure, FeatureStore, StoreSpec


class StoreBoxes:
    """Boxes (and scores/labels) read back from an existing regions store, keyed by image id.

    Stores imported from HDF5 (``pkd stores import-h5``) may lack ``region_scores`` /
    ``region_labels``: their boxes then get score 1 and label -1 (no class).
    """

    def __init__(self, path: str):
        self.store = FeatureStore.open(path, kind="regions")
        if not self.store.complete:
            raise PkdError(f"{path}: --boxes-from store is incomplete (pending shards "
                           f"{self.store.pending[:5]}); finish its extraction first")
        self.max_regions = int(self.store.spec.dims["max_regions"])
        self.names = [n for n in ("boxes", "num_regions", "region_scores", "region_labels")
                      if n in self.store.spec.names]

    def provenance(self) -> dict:
        # the absolute path: the same store given as a relative path is the same provenance
        return {"boxes_from": str(Path(self.store.path).resolve()),
                "boxes_producer": self.store.spec.producer}

    def detect(self, images: list, image_ids: Sequence[int]) -> list[Detections]:
        got = self.store.read(self.store.rows_of(image_ids), self.names)
        shape = got["boxes"].shape[:2]  # (B, max_regions)
        scores = got.get("region_scores", np.ones(shape, np.float32))  # imported: score 1
        labels = got.get("region_labels", np.full(shape, -1, np.int32))  # imported: no class
        counts = got["num_regions"]
        return [Detections(got["boxes"][i, :n], scores[i, :n], labels[i, :n], None)
                for i, n in enumerate(counts.astype(int))]


class RegionStage:
    """Detect (or read) boxes, pool features, write one padded row per image."""

    kind = "regions"

    def __init__(self, source: Source, boxes, backbone, max_regions: int, feature_dim: int,
                 batch_size: int, producer: dict):
        self.source, self.boxes, self.backbone = source, boxes, backbone
        self.batch_size, self.max_regions = batch_size, max_regions
        self.ids = source.image_ids
        n, d = max_regions, feature_dim
        self._spec = StoreSpec(
            kind=self.kind,
            key="image_id",
            arrays=(
                ArraySpec("boxes", (n, 4), "float32"),
                ArraySpec("region_features", (n, d), "float16"),
                ArraySpec("region_geometry", (n, 6), "float32"),
                ArraySpec("num_regions", (), "int32"),
                ArraySpec("image_size", (2,), "int32"),
                ArraySpec("region_scores", (n,), "float32"),
                ArraySpec("region_labels", (n,), "int32"),
            ),
            producer=producer,
            dims={"max_regions": n, "feature_dim": d},
        )

    def spec(self) -> StoreSpec:
        return self._spec

    def run(self, ids: Sequence[int]) -> tuple[dict[str, np.ndarray], list[Failure]]:
        arrays = empty_arrays(self._spec, len(ids))
        failures: list[Failure] = []
        for pos, images, failed in iter_image_batches(self.source, ids, self.batch_size):
            failures += failed
            if not images:
                continue
            dets = self.boxes.detect(images, [int(ids[p]) for p in pos])
            feats = self._features(images, dets)
            for p, img, det, f in zip(pos, images, dets, feats, strict=True):
                self._fill(arrays, p, img.size, det, f)
        return arrays, failures

    def inputs(self, ids: Sequence[int], content: bool) -> str:
        return image_inputs(self.source, ids, content)

    def _features(self, images: list, dets: list[Detections]) -> list[np.ndarray]:
        if self.backbone is not None:
            boxes = [np.asarray(d.boxes)[: self.max_regions] for d in dets]
            pooled = self.backbone.pool(images, boxes)
            return [np.asarray(p, dtype=np.float32) for p in pooled]
        return [np.asarray(d.features, dtype=np.float32) for d in dets]

    def _fill(self, arrays: dict, p: int, size: tuple[int, int], det: Detections, feats) -> None:
        n = min(len(det.boxes), self.max_regions)
        boxes = np.asarray(det.boxes, dtype=np.float32)[:n]
        w, h = size
        arrays["boxes"][p, :n] = boxes
        arrays["region_features"][p, :n] = feats[:n]
        arrays["region_geometry"][p, :n] = np.asarray(box_geometry(boxes, w, h))
        arrays["num_regions"][p] = n
        arrays["image_size"][p] = (w, h)
        arrays["region_scores"][p, :n] = np.asarray(det.scores, dtype=np.float32)[:n]
        arrays["region_labels"][p, :n] = np.asarray(det.labels, dtype=np.int64)[:n]


def make_region_stage(recipe, source: Source) -> RegionStage:
    """Wire a :class:`RegionRecipe` into a stage: box source, backbone, dims, provenance."""
    if (recipe.detector is None) == (recipe.boxes_from is None):
        raise PkdError("extract regions: give exactly one of --detector or --boxes-from")
    if recipe.pooling != "mean" and not recipe.backbone:
        raise PkdError(f"extract regions: --pooling {recipe.pooling} needs --backbone MODEL")
    if recipe.boxes_from:
        boxes = StoreBoxes(recipe.boxes_from)
        max_regions = boxes.max_regions
    else:
        boxes = build_detector(recipe.detector, conf=recipe.conf, iou=recipe.iou,
                               min_boxes=recipe.min_boxes, max_boxes=recipe.max_boxes,
                               device=recipe.device)
        max_regions = getattr(boxes, "max_regions", None) or boxes.max_boxes  # grid:K: K*K
    backbone = (RegionBackbone(recipe.backbone, device=recipe.device, pooling=recipe.pooling)
                if recipe.backbone else None)
    if backbone is None and getattr(boxes, "feature_dim", None) is None:
        raise PkdError(f"extract regions: {recipe.detector or recipe.boxes_from} gives no "
                       "per-box features; add --backbone MODEL to pool them")
    dim = backbone.dim if backbone is not None else boxes.feature_dim
    producer = {"stage": "regions", **boxes.provenance(), "batch_size": recipe.batch_size,
                **({"backbone": backbone.provenance()} if backbone else {})}
    return RegionStage(source, boxes, backbone, max_regions, dim, recipe.batch_size, producer)
