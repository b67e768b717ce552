"""Box sources with a model: ``hf:MODEL`` and ``detectron2:CONFIG``.

- :class:`HFDetector`: any transformers object detector (DETR, YOLOS, RT-DETR, ...); a box's
  feature is the decoder state of the query that predicted it.
- :class:`Detectron2Detector`: a Faster R-CNN style detectron2 model (e.g. the
  bottom-up-attention Visual Genome detector); detectron2 is an optional install.

Both select boxes with :func:`pkd.pipeline.boxes.select_boxes` (NMS, conf, min/max boxes) and
return :class:`~pkd.pipeline.box_sources.Detections`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.hf.fingerprint import (
    file_sha256,
)
from pkd.hf.hashing import config_sha256
from pkd.hf.loading import first_line, model_identity, quiet_loading
from pkd.pipeline.backbones import attach_frozen, forward_error, load_pretrained
from pkd.pipeline.box_sources import Detections
from pkd.pipeline.boxes import clip_boxes, cxcywh_to_xyxy, select_boxes

DETECTRON2_MISSING = ("detectron2 is not installed: pip install "
                      "'git+https://github.com/facebookresearch/detectron2.git' "
                      "(see README, Optional backends)")


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
        from transformers import AutoModelForObjectDetection  # transformers: only for a HF detector

        quiet_loading()
        net, folder = load_pretrained(AutoModelForObjectDetection, model,
                                      "an object-detection model", f"hf:{model}")
        attach_frozen(self, net, folder, model, device)
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
            import detectron2.data.transforms as T  # detectron2: optional backend, not on PyPI
            from detectron2.checkpoint import DetectionCheckpointer  # detectron2: optional backend
            from detectron2.config import get_cfg  # detectron2: optional backend, not on PyPI
            from detectron2.modeling import build_model  # detectron2: optional backend, not on PyPI
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
