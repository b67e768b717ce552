"""L_mkd: two-class (Bernoulli) KL of σ(M/T) vs σ(ITM_D/T) times T², by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.train.losses.model_kd import BinaryKL

torch.set_num_threads(1)


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_by_hand():
    student, teacher = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    want = (bernoulli_kl(sigmoid(2.0), 0.5) + bernoulli_kl(sigmoid(-1.0), sigmoid(1.0))) / 2
    assert BinaryKL()(student, teacher).item() == pytest.approx(want, rel=1e-5)
    # T = 2: logits halved, result times 4
    want_t2 = 4 * (bernoulli_kl(sigmoid(1.0), 0.5) + bernoulli_kl(sigmoid(-0.5), sigmoid(0.5))) / 2
    assert BinaryKL(2.0)(student, teacher).item() == pytest.approx(want_t2, rel=1e-5)


def test_equals_softmax_kl_of_two_classes():
    torch.manual_seed(0)
    s, m = torch.randn(6) * 3, torch.randn(6) * 3
    zeros = torch.zeros(6)
    p = torch.stack([zeros, m], -1).softmax(-1)
    log_q = torch.stack([zeros, s], -1).log_softmax(-1)
    want = (p * (p.log() - log_q)).sum(-1).mean()
    torch.testing.assert_close(BinaryKL()(s, m), want, rtol=1e-5, atol=1e-6)


def test_zero_at_teacher_and_masked_pairs_ignored():
    m = torch.tensor([3.0, -2.0, 0.5])
    assert BinaryKL()(m.clone(), m).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([3.0, -2.0, 40.0])
    valid = torch.tensor([True, True, False])
    assert BinaryKL()(s, m, valid).item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_goes_to_student_only():
    s = torch.zeros(2, requires_grad=True)
    m = torch.tensor([2.0, -2.0], requires_grad=True)
    BinaryKL()(s, m).backward()
    assert m.grad is None
    assert s.grad[0] < 0 < s.grad[1]  # pulled towards the teacher's sign


def test_bad_temperature():
    with pytest.raises(ValueError, match="> 0"):
        BinaryKL(0.0)
