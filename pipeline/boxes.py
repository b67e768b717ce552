"""Box utilities: format conversion, clipping, 6-d geometry, NMS, bottom-up box selection.

All boxes are ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels unless a name says otherwise.
Functions take torch tensors or numpy arrays and return torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pkd.roi import box_iou  # on the ground floor: region pre-training uses it too

ArrayLike = Tensor | np.ndarray


def _tensor(x: ArrayLike, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=dtype)


def xywh_to_xyxy(boxes: ArrayLike) -> Tensor:
    """COCO ``(x, y, w, h)`` -> ``(x1, y1, x2, y2) = (x, y, x + w, y + h)``."""
    b = _tensor(boxes).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def cxcywh_to_xyxy(boxes: ArrayLike) -> Tensor:
    """Centre format ``(cx, cy, w, h)`` -> ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``."""
    b = _tensor(boxes).reshape(-1, 4)
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)


def clip_boxes(boxes: ArrayLike, width: float, height: float) -> Tensor:
    """Clamp x to ``[0, width]`` and y to ``[0, height]``."""
    b = _tensor(boxes).reshape(-1, 4).clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, width)
    b[:, 1::2] = b[:, 1::2].clamp(0, height)
    return b


def box_geometry(boxes: ArrayLike, width: float, height: float) -> Tensor:
    """``(N, 6)`` = ``(x1/W, y1/H, x2/W, y2/H, (x2-x1)/W, (y2-y1)/H)`` (design.md, regions
    store)."""
    b = _tensor(boxes).reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=b.dtype)
    norm = b / scale  # (N, 4)
    return torch.cat([norm, norm[:, 2:] - norm[:, :2]], dim=1)


def nms(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: visit boxes by descending score (ties: lower index
    first) and drop every later box whose IoU with a kept one is ``> iou_threshold``.

    Returns the kept indices (int64) in descending score order, like ``torchvision.ops.nms``.
    """
    b, s = _tensor(boxes).reshape(-1, 4), _tensor(scores).reshape(-1)
    order = torch.sort(s, descending=True, stable=True).indices
    overlaps = box_iou(b[order], b[order]) > iou_threshold  # (N, N) in visiting order
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if not suppressed[i]:
            suppressed |= overlaps[i] & (torch.arange(len(order)) > i)
    return order[~suppressed]


def batched_nms(boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike,
                iou_threshold: float) -> Tensor:
    """NMS within each label separately (a box only suppresses boxes of its own label).

    Implemented by shifting each label's boxes to a disjoint region, so one :func:`nms` call
    does all labels. Returns kept indices in descending score order.
    """
    b, lab = _tensor(boxes).reshape(-1, 4), _tensor(labels, torch.int64).reshape(-1)
    if len(b) == 0:
        return torch.zeros(0, dtype=torch.int64)
    span = (b.max() - b.min()).abs() + 1
    shifted = b + (lab.to(b.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def select_boxes(boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike, conf: float = 0.2,
                 iou: float = 0.5, min_boxes: int = 10, max_boxes: int = 100,
                 class_agnostic: bool = False) -> Tensor:
    """Indices of the boxes to keep, bottom-up-attention style (Anderson et al. 2018,
    ``generate_tsv.py``: ``conf_thresh=0.2``, 10 to 100 boxes per image).

    1. NMS at ``iou`` per label (``class_agnostic=False``, as bottom-up does per class) or over
       all boxes; a suppressed box gets score 0 (bottom-up's ``max_conf`` stays 0).
    2. Keep the boxes whose score is ``>= conf``, best first, at most ``max_boxes``.
    3. If fewer than ``min_boxes`` pass, take the ``min_boxes`` best by that score regardless of
       ``conf`` (survivors of NMS first, then suppressed boxes by their own score).

    Returns int64 indices into the inputs, in descending score order.
    """
    s = _tensor(scores).reshape(-1)
    if class_agnostic:
        survivors = nms(boxes, s, iou)
    else:
        survivors = batched_nms(boxes, s, labels, iou)
    alive = torch.zeros(len(s), dtype=torch.bool)
    alive[survivors] = True
    # rank: NMS survivors by score, then suppressed boxes by score (stable: lower index first)
    by_score = torch.sort(s, descending=True, stable=True).indices
    ranked = torch.cat([by_score[alive[by_score]], by_score[~alive[by_score]]])
    passing = int((alive & (s >= conf)).sum())
    count = min(max(passing, min_boxes), max_boxes, len(s))
    return ranked[:count]


def grid_boxes(width: float, height: float, k: int) -> Tensor:
    """``(k*k, 4)`` cells of a ``k x k`` grid over the whole image, row-major (top row first):
    cell ``(r, c)`` = ``(c W/k, r H/k, (c+1) W/k, (r+1) H/k)``. They tile the image exactly
    (grid features, Jiang et al., "In Defense of Grid Features for VQA", CVPR 2020)."""
    xs = torch.arange(k + 1, dtype=torch.float64) * (width / k)  # (k+1,) cell edges
    ys = torch.arange(k + 1, dtype=torch.float64) * (height / k)
    xs[-1], ys[-1] = width, height  # exact right / bottom edge despite rounding
    y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")  # (k, k)
    y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4).float()
