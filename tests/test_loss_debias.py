"""RUBi, LMH, the question-only branch and the answer prior against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pkd.train.losses.debias import LMHLoss, RUBiLoss, binary_entropy_with_logits
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.answer_prior import answer_prior, answer_prior_sparse
from pkd.train.models.question_only import QuestionOnly

LN3, LN4 = math.log(3.0), math.log(4.0)
TARGETS = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.6]])  # (B=2, A=3) soft scores


def bce(x: float, s: float) -> float:
    """-[s log σ(x) + (1 - s) log(1 - σ(x))] for one answer."""
    p = 1.0 / (1.0 + math.exp(-x))
    return -(s * math.log(p) + (1.0 - s) * math.log(1.0 - p))


def bce_rows(x: list[list[float]], s: torch.Tensor) -> float:
    """Sum over answers, mean over questions (VQALoss's scale)."""
    return sum(bce(xi, si) for row, srow in zip(x, s.tolist(), strict=True)
               for xi, si in zip(row, srow, strict=True)) / len(x)


def near(t: torch.Tensor, expected: list[list[float]], tol: float = 1e-6) -> bool:
    """Element-wise closeness of a (B, A) tensor to hand values."""
    return torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=tol, atol=tol)


def h2(p: float) -> float:
    """Binary entropy of a probability, in nats."""
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


# ---------------------------------------------------------------- RUBi

X = torch.tensor([[2.0, -1.0, 0.0], [1.0, 3.0, -2.0]])  # VQA logits
Q = torch.tensor([[0.0, LN3, -LN3], [LN3, 0.0, 0.0]])  # question-only logits: σ = 1/2, 3/4, 1/4
# x ⊙ σ(q) = [[2·1/2, -1·3/4, 0·1/4], [1·3/4, 3·1/2, -2·1/2]]
X_RUBI = [[1.0, -0.75, 0.0], [0.75, 1.5, -1.0]]


def test_rubi_golden_values():
    rubi = RUBiLoss(3, question_loss_weight=0.5, end_classifier=False)
    out = rubi(X, Q, TARGETS)
    assert near(out["logits_rubi"], X_RUBI)
    vqa = bce_rows(X_RUBI, TARGETS)
    q = bce_rows(Q.tolist(), TARGETS)
    assert out["vqa_loss"].item() == pytest.approx(vqa, rel=1e-6)
    assert out["q_loss"].item() == pytest.approx(q, rel=1e-6)
    assert out["loss"].item() == pytest.approx(vqa + 0.5 * q, rel=1e-6)


def test_rubi_question_loss_reads_c_q():
    rubi = RUBiLoss(3)
    with torch.no_grad():
        rubi.c_q.weight.copy_(2 * torch.eye(3))
        rubi.c_q.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    out = rubi(X, Q, TARGETS)
    c_q = (2 * Q + torch.tensor([1.0, 0.0, -1.0])).tolist()
    assert near(out["logits_q"], c_q)
    assert out["q_loss"].item() == pytest.approx(bce_rows(c_q, TARGETS), rel=1e-6)
    assert out["vqa_loss"].item() == pytest.approx(bce_rows(X_RUBI, TARGETS), rel=1e-6)


def rubi_step(detach_input: bool, question_loss_weight: float = 1.0):
    torch.manual_seed(0)
    q_feat = torch.randn(2, 4, requires_grad=True)  # (B, H) the main model's question vector
    logits = torch.randn(2, 3, requires_grad=True)  # (B, A) the main model's logits
    branch = QuestionOnly(4, 3, hidden_dims=(5,), detach_input=detach_input)
    rubi = RUBiLoss(3, question_loss_weight=question_loss_weight)
    out = rubi(logits, branch(q_feat), TARGETS)
    out["loss"].backward()
    return q_feat, logits, branch, rubi


def test_rubi_branch_sends_no_gradient_into_the_question_vector():
    q_feat, logits, branch, rubi = rubi_step(detach_input=True)
    assert q_feat.grad is None  # the branch read sg(q)
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    assert rubi.c_q.weight.grad.abs().sum() > 0
    q_feat, *_ = rubi_step(detach_input=False)  # control: without the stop-gradient it flows
    assert q_feat.grad is not None and q_feat.grad.abs().sum() > 0


def test_rubi_mask_alone_trains_the_branch():
    _, _, branch, rubi = rubi_step(detach_input=True, question_loss_weight=0.0)
    assert all(p.grad.abs().sum() > 0 for p in branch.parameters())  # through σ(q_logits)
    assert rubi.c_q.weight.grad.abs().sum() == 0


def test_rubi_leaves_test_time_logits_alone():
    logits = X.clone().requires_grad_(True)
    out = RUBiLoss(3)(logits, torch.full((2, 3), 50.0), TARGETS)  # σ(50) = 1: no mask
    out["loss"].backward()
    assert torch.equal(logits.detach(), X)  # no in-place change
    assert torch.allclose(out["logits_rubi"], X)
    assert not torch.allclose(RUBiLoss(3)(X, Q, TARGETS)["logits_rubi"], X)


def test_rubi_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        RUBiLoss(3)(X, Q[:, :2], TARGETS)


# ---------------------------------------------------------------- LMH

# g = softplus(h) with gate w = 1, c = 0: h = log(e^g - 1) gives g = 1 and g = 2
H_G12 = torch.tensor([[math.log(math.e - 1.0)], [math.log(math.e**2 - 1.0)]])
PRIOR = torch.tensor([[0.5, 0.75, 0.2], [0.8, 0.5, 0.25]])
# b = log p - log(1 - p) = [[0, ln 3, -ln 4], [ln 4, 0, -ln 3]];  g·b (g = 1, 2):
GB = [[0.0, LN3, -LN4], [2 * LN4, 0.0, -2 * LN3]]
X_LMH = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 1.0]])
# σ(g·b) = [[1/2, 3/4, 1/5], [16/17, 1/2, 1/10]]
H_HAND = (h2(0.5) + h2(0.75) + h2(0.2) + h2(16 / 17) + h2(0.5) + h2(0.1)) / 6


def lmh(hidden_dim: int = 1, **kw) -> LMHLoss:
    loss = LMHLoss(hidden_dim, **kw)
    with torch.no_grad():
        loss.gate.weight.fill_(1.0)
        loss.gate.bias.zero_()
    return loss


def test_lmh_golden_values():
    out = lmh(entropy_weight=0.36, smooth=False)(X_LMH, H_G12, PRIOR, TARGETS)
    assert out["bias_scale"].squeeze(1).tolist() == pytest.approx([1.0, 2.0], rel=1e-6)
    combined = (X_LMH + torch.tensor(GB)).tolist()
    # [[1, -1 + ln 3, -ln 4], [ln 16, 2, 1 - ln 9]]
    assert near(out["logits_lmh"], combined)
    vqa = bce_rows(combined, TARGETS)
    assert out["vqa_loss"].item() == pytest.approx(vqa, rel=1e-6)
    assert out["entropy"].item() == pytest.approx(H_HAND, rel=1e-6)
    assert out["loss"].item() == pytest.approx(vqa + 0.36 * H_HAND, rel=1e-6)


def test_lmh_constant_and_learned_smoothing():
    # t = 1/4 + σ(0) = 3/4: b = log(p + 3/4) - log(7/4 - p); p = 1/4 -> log(1/1.5), p = 1/2 -> 0
    loss = lmh(smooth=True, smooth_init=0.0, constant_smooth=0.25)
    b = loss.bias_log_odds(torch.tensor([[0.25, 0.5, 1.0]]))
    assert b.tolist()[0] == pytest.approx([math.log(1 / 1.5), 0.0, math.log(1.75 / 0.75)],
                                          rel=1e-6, abs=1e-7)
    b.sum().backward()
    assert loss.smooth_param.grad is not None  # the smoothing is learned


def reference_learned_mixin(loss: LMHLoss, logits, hidden, bias, labels) -> torch.Tensor:
    """Slow path in the reference's form: a two-way ensemble per answer in log space."""
    g = F.softplus(loss.gate(hidden))  # (B, 1)
    pair = torch.stack([bias, 1 - bias], 2) + loss.constant_smooth  # (B, A, 2)
    if loss.smooth_param is not None:
        pair = pair + torch.sigmoid(loss.smooth_param)
    scaled = pair.log() * g.unsqueeze(1)  # (B, A, 2)
    model = torch.stack([F.logsigmoid(logits), F.logsigmoid(-logits)], 2)
    joint = torch.log_softmax(scaled + model, dim=2)
    nll = -(joint[..., 0] * labels + (1 - labels) * joint[..., 1]).sum(1).mean(0)
    bias_lp = torch.log_softmax(scaled, dim=2)
    entropy = -(bias_lp.exp() * bias_lp).sum(2).mean()
    return nll + loss.entropy_weight * entropy


def test_lmh_matches_the_two_way_ensemble_form():
    torch.manual_seed(0)
    logits, hidden = torch.randn(4, 6) * 3, torch.randn(4, 8)
    prior, targets = torch.rand(4, 6), torch.rand(4, 6).round()
    for kw in ({}, {"smooth": False, "constant_smooth": 0.1}):
        loss = LMHLoss(8, **kw)
        x = logits.clone().requires_grad_(True)
        loss(x, hidden, prior, targets)["loss"].backward()
        fast = [x.grad.clone()] + [p.grad.clone() for p in loss.parameters()]
        loss.zero_grad()
        x.grad = None
        ref = reference_learned_mixin(loss, x, hidden, prior, targets)
        assert loss(x, hidden, prior, targets)["loss"].item() == pytest.approx(ref.item(),
                                                                                 rel=1e-5)
        ref.backward()
        slow = [x.grad] + [p.grad for p in loss.parameters()]
        for a, b in zip(fast, slow, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lmh_bias_scale_is_nonnegative():
    torch.manual_seed(1)
    loss = LMHLoss(8)
    with torch.no_grad():
        loss.gate.weight.mul_(100.0)
    out = loss(torch.randn(64, 3), torch.randn(64, 8), torch.rand(64, 3), torch.rand(64, 3))
    g = out["bias_scale"]
    assert g.shape == (64, 1) and (g >= 0).all()
    assert g.min() < 1e-3 < 10 < g.max()  # both signs of w·h + c were seen


def test_lmh_at_zero_scale_is_plain_bce():
    loss = LMHLoss(1, entropy_weight=0.36)
    with torch.no_grad():
        loss.gate.weight.zero_()
        loss.gate.bias.fill_(-200.0)  # softplus(-200) = 0 in float32
    out = loss(X_LMH, H_G12, PRIOR, TARGETS)
    plain = VQALoss()(X_LMH, TARGETS)
    assert (out["bias_scale"] == 0).all()
    assert torch.equal(out["logits_lmh"], X_LMH)
    assert out["vqa_loss"].item() == pytest.approx(plain.item(), rel=1e-7)
    assert out["entropy"].item() == pytest.approx(math.log(2.0), rel=1e-6)  # σ(0) = 1/2
    assert out["loss"].item() == pytest.approx(plain.item() + 0.36 * math.log(2.0), rel=1e-6)


def test_lmh_leaves_test_time_logits_alone():
    logits = X_LMH.clone().requires_grad_(True)
    loss = lmh(smooth=False)
    out = loss(logits, H_G12, torch.full((2, 3), 0.5), TARGETS)  # p = 1/2: b = 0
    out["loss"].backward()
    assert torch.equal(logits.detach(), X_LMH)
    assert torch.allclose(out["logits_lmh"], X_LMH)
    assert not torch.allclose(loss(X_LMH, H_G12, PRIOR, TARGETS)["logits_lmh"], X_LMH)


def test_lmh_stays_finite_on_hard_prior_without_smoothing():
    out = lmh(smooth=False)(X_LMH, H_G12, torch.tensor([[0.0, 1.0, 0.5]] * 2), TARGETS)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_binary_entropy_by_hand():
    z = torch.tensor([0.0, LN3, -LN4, 100.0])
    assert binary_entropy_with_logits(z).tolist() == pytest.approx(
        [math.log(2.0), h2(0.75), h2(0.2), 0.0], abs=1e-7)


# ---------------------------------------------------------------- question-only branch

def test_question_only_shapes_and_layers():
    branch = QuestionOnly(4, 3, hidden_dims=(6, 5), dropout=0.1)
    assert [m.out_features for m in branch.mlp if isinstance(m, nn.Linear)] == [6, 5, 3]
    assert branch(torch.randn(7, 4)).shape == (7, 3)
    assert QuestionOnly(4, 3, hidden_dims=())(torch.randn(2, 4)).shape == (2, 3)  # one Linear


# ---------------------------------------------------------------- answer prior

TYPES = [0, 1, 0, 0]  # type 2 has no question
DENSE = [[1.0, 0.0, 0.3], [0.0, 1.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]]
INDEX = [[0, 2], [1, -1], [0, -1], [-1, -1]]
SCORE = [[1.0, 0.3], [1.0, 0.0], [0.6, 0.0], [0.0, 0.0]]


def test_answer_prior_by_hand():
    got = answer_prior(torch.tensor(TYPES), torch.tensor(DENSE), num_types=3)
    # type 0: (1 + 0.6, 0, 0.3) / 3 questions;  type 1: one question;  type 2: none -> 0
    assert near(got, [[1.6 / 3, 0.0, 0.1], [0.0, 1.0, 0.0], [0.0] * 3])
    smooth = answer_prior(np.array(TYPES), np.array(DENSE), num_types=3, eps=0.5)
    # (sum + 0.5) / (n + 1)
    assert near(smooth, [[2.1 / 4, 0.5 / 4, 0.8 / 4], [0.25, 0.75, 0.25], [0.5, 0.5, 0.5]])
    assert answer_prior(TYPES, DENSE).shape == (2, 3)  # K from the largest id


def test_answer_prior_sparse_matches_dense():
    for eps in (0.0, 0.5):
        dense = answer_prior(np.array(TYPES), np.array(DENSE), num_types=3, eps=eps)
        sparse = answer_prior_sparse(np.array(TYPES), np.array(INDEX), np.array(SCORE), 3,
                                     num_types=3, eps=eps)
        assert torch.allclose(dense, sparse)
    torch.manual_seed(0)
    types = torch.randint(0, 5, (50,))
    index = torch.stack([torch.randperm(7)[:4] for _ in range(50)])
    index[torch.rand(50, 4) < 0.3] = -1
    score = torch.rand(50, 4)
    dense = torch.zeros(50, 7)
    for i in range(50):
        for j in range(4):
            if index[i, j] >= 0:
                dense[i, index[i, j]] = score[i, j]
    assert torch.allclose(answer_prior(types, dense, eps=0.1),
                          answer_prior_sparse(types, index, score, 7, eps=0.1))


def test_answer_prior_rejects_bad_ids():
    with pytest.raises(ValueError, match="num_types"):
        answer_prior(torch.tensor([0, 3]), torch.zeros(2, 3), num_types=3)
    with pytest.raises(ValueError, match=">= 0"):
        answer_prior(torch.tensor([0, -1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps"):
        answer_prior(torch.tensor([0]), torch.zeros(1, 3), eps=-1.0)


def test_soft_cross_entropy_by_hand():
    from pkd.train.losses.debias import soft_cross_entropy

    logits = torch.tensor([[0.0, LN3, 0.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # row 2: no scored answer
    # softmax row 1 = (1, 3, 1) / 5: -log(1/5); row 2 adds 0; mean over both questions
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(math.log(5) / 2, rel=1e-6)
    soft = torch.tensor([[0.3, 0.9, 0.0]])  # normalised to (1/4, 3/4, 0)
    want = -(0.25 * math.log(1 / 5) + 0.75 * math.log(3 / 5))
    assert soft_cross_entropy(logits[:1], soft).item() == pytest.approx(want, rel=1e-6)


def test_rubi_softmax_criterion_golden_values():
    from pkd.train.losses.debias import soft_cross_entropy

    rubi = RUBiLoss(3, question_loss_weight=0.5, end_classifier=False, criterion="softmax")
    out = rubi(X, Q, TARGETS)
    vqa = soft_cross_entropy(torch.tensor(X_RUBI), TARGETS).item()
    q = soft_cross_entropy(Q, TARGETS).item()
    assert out["vqa_loss"].item() == pytest.approx(vqa, rel=1e-6)
    assert out["loss"].item() == pytest.approx(vqa + 0.5 * q, rel=1e-6)
    with pytest.raises(ValueError, match="criterion"):
        RUBiLoss(3, criterion="mse")
