"""L_div options (kl / cosine / mse / mmd), masking and pooling, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.train.losses.divergence import FeatureDivergence, pool_tokens

torch.set_num_threads(1)


def one(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)[None, None]  # (1, 1, d)


def test_kl_by_hand():
    target, pred = one([0.0, math.log(3.0)]), one([0.0, 0.0])  # softmax [1/4, 3/4] vs [1/2, 1/2]
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert FeatureDivergence("kl")(pred, target).item() == pytest.approx(want, rel=1e-5)
    a = 1 / (1 + math.sqrt(3))  # τ = 2: softmax([0, ln 3] / 2) = [a, 1 - a]
    want_t2 = 4 * (a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a)))
    got = FeatureDivergence("kl", temperature=2.0)(pred, target).item()
    assert got == pytest.approx(want_t2, rel=1e-5)
    assert FeatureDivergence("kl")(target, target).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_is_over_the_feature_axis_of_each_token():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    got = FeatureDivergence("kl")(pred, target)
    p, q = target.softmax(-1), pred.softmax(-1)
    want = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(got, want)


def test_cosine_and_mse_by_hand():
    pred, target = one([1.0, 0.0]), one([1.0, 1.0])
    assert FeatureDivergence("cosine")(pred, target).item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert FeatureDivergence("mse")(pred, target).item() == pytest.approx(0.5)


def test_mask_ignores_padded_tokens():
    pred = torch.tensor([[[1.0, 0.0], [9.0, 9.0]]])  # token 1 is padding
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    assert FeatureDivergence("mse")(pred, target, mask).item() == pytest.approx(0.5)
    assert FeatureDivergence("mse")(pred, target).item() == pytest.approx((0.5 + 81) / 2)


def test_pool_tokens_and_target_detached():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(pool_tokens(x, torch.tensor([[True, True, False]])),
                               torch.tensor([[[2.0, 3.0]]]))
    assert pool_tokens(x).shape == (1, 1, 2)
    target = torch.randn(1, 2, 3, requires_grad=True)
    pred = torch.randn(1, 2, 3, requires_grad=True)
    FeatureDivergence("cosine")(pred, target).backward()
    assert pred.grad is not None and target.grad is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="one of kl, cosine, mse"):
        FeatureDivergence("l1")
    with pytest.raises(ValueError, match="pool them first"):
        FeatureDivergence()(torch.zeros(1, 2, 3), torch.zeros(1, 4, 3))


def test_mmd_by_hand_and_blind_to_which_item_is_which():
    """Y = {0, 2}: σ² = 4 / 2 = 2; X = {0, 0}: MMD² = 1 + (1 + k₄)/2 - (1 + k₄) = (1 - k₄)/2
    with k₄ = (e^{-4/2} + e^{-4/4} + e^{-4/8}) / 3 (bandwidths σ² · {1/2, 1, 2})."""
    target = torch.tensor([[[0.0]], [[2.0]]])  # (B=2, T=1, d=1)
    pred = torch.zeros(2, 1, 1, requires_grad=True)
    k4 = (math.exp(-2) + math.exp(-1) + math.exp(-0.5)) / 3
    got = FeatureDivergence("mmd")(pred, target)
    assert got.item() == pytest.approx((1 - k4) / 2, rel=1e-5)
    got.backward()
    assert pred.grad is not None
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 4), torch.randn(6, 3, 4)
    mmd, mse = FeatureDivergence("mmd"), FeatureDivergence("mse")
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    torch.testing.assert_close(mmd(x[perm], y), mmd(x, y))  # pairs nothing
    assert abs(mse(x[perm], y).item() - mse(x, y).item()) > 1e-3  # item-wise does
    assert mmd(y[perm], y).item() == pytest.approx(0.0, abs=1e-6)
    assert mmd(x, y).item() > 0.01
