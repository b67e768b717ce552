"""Output distillation: BCE against the teacher's sigmoid outputs, hand-checked values."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.train.losses.logit_kd import LogitKD

torch.set_num_threads(1)

LN3 = math.log(3.0)


def bce(x: float, p: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return -(p * math.log(s) + (1 - p) * math.log(1 - s))


def test_sum_over_answers_mean_over_batch_by_hand():
    student = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    teacher = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    # row 0: p = (.75, .5), sigma(s) = (.5, .75):
    #   -(.75 log .5 + .25 log .5) = log 2;  -(.5 log .75 + .5 log .25) = -.5 log(.1875)
    row0 = math.log(2) - 0.5 * math.log(0.1875)
    row1 = 2 * math.log(2)
    assert LogitKD()(student, teacher).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert row0 == pytest.approx(bce(0, 0.75) + bce(LN3, 0.5))


def test_temperature_scales_inputs_and_multiplies_by_t_squared():
    # T = 2: s/T = ln 3 (sigma .75), p = sigma(0) = .5 -> BCE = -.5 log(.1875), times 4
    loss = LogitKD(temperature=2.0)(torch.tensor([[2 * LN3]]), torch.tensor([[0.0]]))
    assert loss.item() == pytest.approx(4 * -0.5 * math.log(0.1875), rel=1e-6)


def test_minimum_at_the_teacher_and_teacher_gets_no_gradient():
    teacher = torch.tensor([[1.5, -2.0, 0.3]], requires_grad=True)
    student = teacher.detach().clone().requires_grad_(True)
    loss = LogitKD(temperature=3.0)(student, teacher)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-6
    assert teacher.grad is None
    entropy = sum(bce(t / 3, 1 / (1 + math.exp(-t / 3))) for t in (1.5, -2.0, 0.3))
    assert loss.item() == pytest.approx(9 * entropy, rel=1e-5)


def test_shape_mismatch_and_bad_temperature_raise():
    with pytest.raises(ValueError, match="answer vocabulary"):
        LogitKD()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        LogitKD(temperature=0.0)
