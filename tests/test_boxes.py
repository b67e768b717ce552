"""Box geometry, conversions, NMS and bottom-up box selection, on hand-made cases."""

from __future__ import annotations

import numpy as np
import torch

from pkd.pipeline.boxes import (
    batched_nms,
    box_geometry,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    nms,
    select_boxes,
    xywh_to_xyxy,
)

torch.set_num_threads(1)


def test_geometry_by_hand():
    # image 200 x 100 (W x H); box (20, 10, 120, 60): x/W = .1, .6; y/H = .1, .6; w/W = .5; h/H = .5
    geo = box_geometry(np.array([[20, 10, 120, 60]], dtype=np.float32), 200, 100)
    assert torch.allclose(geo, torch.tensor([[0.1, 0.1, 0.6, 0.6, 0.5, 0.5]]))
    whole = box_geometry(torch.tensor([[0.0, 0.0, 200.0, 100.0]]), 200, 100)
    assert torch.allclose(whole, torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]))
    assert box_geometry(np.zeros((0, 4)), 10, 10).shape == (0, 6)


def test_conversions_and_clip():
    assert torch.equal(xywh_to_xyxy([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[1.0, 2.0, 4.0, 6.0]]))
    assert torch.equal(cxcywh_to_xyxy([[5.0, 5.0, 4.0, 2.0]]), torch.tensor([[3.0, 4.0, 7.0, 6.0]]))
    clipped = clip_boxes([[-5.0, 3.0, 50.0, 12.0]], width=40, height=10)
    assert torch.equal(clipped, torch.tensor([[0.0, 3.0, 40.0, 10.0]]))


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    # overlap 1x1 = 1, union 4 + 4 - 1 = 7; touching corner -> 0; identical -> 1
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))


def test_nms_hand_case():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # 0: score .9, kept
        [1.0, 0.0, 11.0, 10.0],   # 1: IoU with 0 = 90 / 110 = .818 -> suppressed by 0
        [20.0, 20.0, 30.0, 30.0],  # 2: disjoint, kept
        [0.0, 5.0, 10.0, 15.0],   # 3: IoU with 0 = 50 / 150 = .333 -> kept at .5
    ])
    scores = torch.tensor([0.9, 0.8, 0.3, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3, 2]  # descending score
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]  # .333 > .3 now suppresses box 3
    assert nms(boxes, scores, 0.95).tolist() == [0, 1, 3, 2]


def test_nms_suppressed_box_does_not_suppress():
    # 0 suppresses 1 (IoU .818), 1 would suppress 2 (IoU .818) but 2 only overlaps 0 by
    # 80 / 120 = .667 > .5, so 2 is suppressed by 0 as well; with 0.7 box 2 survives because
    # the suppressed box 1 is not used.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.7).tolist() == [0, 2]


def test_batched_nms_only_within_a_label():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert batched_nms(boxes, scores, torch.tensor([1, 1]), 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([1, 2]), 0.5).tolist() == [0, 1]


def _grid_boxes(n: int) -> torch.Tensor:
    """n disjoint 10x10 boxes in a row (NMS removes none)."""
    x = torch.arange(n, dtype=torch.float32) * 20
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)


def test_select_keeps_confident_boxes_best_first():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.05])
    keep = select_boxes(_grid_boxes(5), scores, torch.zeros(5), conf=0.2, min_boxes=2, max_boxes=10)
    assert keep.tolist() == [1, 2, 3]


def test_select_caps_at_max_boxes():
    scores = torch.tensor([0.6, 0.9, 0.5, 0.7, 0.8])
    keep = select_boxes(_grid_boxes(5), scores, torch.zeros(5), conf=0.2, min_boxes=1, max_boxes=2)
    assert keep.tolist() == [1, 4]


def test_select_fills_up_to_min_boxes_regardless_of_conf():
    scores = torch.tensor([0.1, 0.9, 0.05, 0.15])
    keep = select_boxes(_grid_boxes(4), scores, torch.zeros(4), conf=0.5, min_boxes=3, max_boxes=10)
    assert keep.tolist() == [1, 3, 0]
    # fewer boxes than min_boxes: all of them
    keep = select_boxes(_grid_boxes(2), scores[:2], torch.zeros(2), conf=0.5, min_boxes=10)
    assert keep.tolist() == [1, 0]


def test_select_fill_takes_nms_survivors_before_suppressed_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 0, 60, 10]])
    scores = torch.tensor([0.9, 0.8, 0.1])  # box 1 is suppressed by box 0
    keep = select_boxes(boxes, scores, torch.zeros(3), conf=0.5, iou=0.5, min_boxes=2)
    assert keep.tolist() == [0, 2]
    keep = select_boxes(boxes, scores, torch.zeros(3), conf=0.5, iou=0.5, min_boxes=3)
    assert keep.tolist() == [0, 2, 1]


def test_select_per_class_vs_class_agnostic():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    scores, labels = torch.tensor([0.9, 0.8]), torch.tensor([3, 4])
    assert select_boxes(boxes, scores, labels, min_boxes=0).tolist() == [0, 1]
    assert select_boxes(boxes, scores, labels, min_boxes=0, class_agnostic=True).tolist() == [0]


def test_select_on_no_boxes():
    assert select_boxes(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)).tolist() == []
