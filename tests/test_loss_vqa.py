"""VQA loss and soft accuracy against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.train.losses import VQALoss, vqa_score

LOGITS = torch.tensor([[0.0, 2.0], [math.log(3.0), -1.0]])  # (B=2, A=2)
TARGETS = torch.tensor([[1.0, 0.0], [0.3, 1.0]])


def hand_bce() -> list[list[float]]:
    # BCE(x, s) = -[s log σ(x) + (1 - s) log(1 - σ(x))]
    # row 0: x=0 -> σ=1/2, s=1: ln 2;  x=2, s=0: -ln(1 - σ(2)) = ln(1 + e^2)
    # row 1: x=ln 3 -> σ=3/4, s=0.3: -(0.3 ln 3/4 + 0.7 ln 1/4); x=-1, s=1: ln(1 + e)
    return [
        [math.log(2.0), math.log(1.0 + math.e**2)],
        [-(0.3 * math.log(0.75) + 0.7 * math.log(0.25)), math.log(1.0 + math.e)],
    ]


def test_reductions_match_hand_values():
    bce = hand_bce()
    per_question = [sum(row) for row in bce]
    none = VQALoss("none")(LOGITS, TARGETS)
    assert none.tolist() == pytest.approx(per_question, rel=1e-6)
    assert VQALoss("sum")(LOGITS, TARGETS).item() == pytest.approx(sum(per_question), rel=1e-6)
    assert VQALoss()(LOGITS, TARGETS).item() == pytest.approx(sum(per_question) / 2, rel=1e-6)


def test_mean_is_reference_elementwise_mean_times_num_answers():
    logits, targets = torch.randn(5, 7), torch.rand(5, 7)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) * 7
    assert VQALoss()(logits, targets).item() == pytest.approx(reference.item(), rel=1e-6)


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        VQALoss("avg")


def test_vqa_score_is_soft_score_of_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([[0.0, 0.6, 1.0], [0.3, 1.0, 0.9], [1.0, 1.0, 0.0]])
    assert vqa_score(logits, targets).tolist() == pytest.approx([0.6, 0.3, 0.0])
