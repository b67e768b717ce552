"""L_itm (BCE on frozen-head ITM logits) and in-batch negative sampling, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.train.losses.itm import MatchingBCE, negative_partners

torch.set_num_threads(1)


def test_matching_bce_by_hand():
    pos = torch.tensor([0.0, math.log(3.0)])  # σ = 1/2, 3/4
    neg = torch.tensor([0.0, math.log(3.0)])
    got = MatchingBCE()(pos, neg, torch.tensor([True, False]))
    # positives: (-log 1/2 - log 3/4) / 2; the only valid negative: -log(1 - 1/2)
    want = (math.log(2) + math.log(4 / 3)) / 2 + math.log(2)
    assert got.item() == pytest.approx(want, rel=1e-6)
    all_valid = MatchingBCE()(pos, neg)
    assert all_valid.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2
                                             + (math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_matching_bce_without_valid_negatives_is_the_positive_term():
    pos, neg = torch.tensor([2.0]), torch.tensor([5.0])
    got = MatchingBCE()(pos, neg, torch.tensor([False]))
    assert got.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))), rel=1e-6)


def test_gradient_signs():
    pos = torch.zeros(3, requires_grad=True)
    neg = torch.zeros(3, requires_grad=True)
    MatchingBCE()(pos, neg).backward()
    assert (pos.grad < 0).all() and (neg.grad > 0).all()  # raise positives, lower negatives


def test_partners_never_share_image_or_text():
    # items 0,1 share an image; items 2,3 share a question text
    images = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0.5, 0.5], [2.0, 2.0]])
    texts = torch.tensor([[1.0], [2.0], [3.0], [3.0], [4.0]])
    seen = set()
    for seed in range(40):
        pi, valid = negative_partners(images, texts, torch.Generator().manual_seed(seed))
        assert valid.all()
        for i, j in enumerate(pi.tolist()):
            assert not torch.equal(images[i], images[j]) and not torch.equal(texts[i], texts[j])
            seen.add((i, j))
    assert (0, 2) in seen and (0, 3) in seen  # random, not a fixed shift


def test_partners_invalid_when_everything_matches():
    images = torch.ones(3, 4)
    pi, valid = negative_partners(images, None)
    assert not valid.any() and pi.tolist() == [0, 1, 2]
    pi, valid = negative_partners(torch.tensor([[0.0], [0.0], [1.0]]))
    assert valid.tolist() == [True, True, True] and pi.tolist() == [2, 2, pi[2].item()]
    assert pi[2].item() in (0, 1)


def test_partners_compare_whole_rows_of_token_keys():
    """(B, T, d) keys: items are the same image only when every token is equal."""
    keys = torch.zeros(3, 2, 2)
    keys[1, 1, 0] = 1.0  # item 1 differs from item 0 in its second token only
    keys[2] = keys[0]  # item 2 is item 0's image
    pi, valid = negative_partners(keys)
    assert valid.all() and pi.tolist() == [1, pi[1].item(), 1]
    assert pi[1].item() in (0, 2)
