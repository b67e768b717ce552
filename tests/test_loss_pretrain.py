"""Pre-training losses by hand: CLIP's symmetric InfoNCE (soft targets) and BLIP's ITM with
hard negatives (:mod:`pkd.train.losses.pretrain`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pkd.train.losses.pretrain import (
    hard_negatives,
    itc_loss,
    itm_loss,
    sample_hard_negatives,
    swap_loss,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- ITC


def test_itc_loss_one_positive_each_by_hand():
    u = w = torch.eye(2)  # logits 2·I: each row and column is softmax(2, 0) on the right item
    got = itc_loss(u, w, torch.tensor(2.0), torch.eye(2, dtype=torch.bool))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_itc_loss_duplicate_caption_splits_the_target_by_hand():
    # logits log2 · I: exp -> [[2,1,1],[1,2,1],[1,1,2]]; images 0 and 1 share a caption text, so
    # rows / columns 0 and 1 each have the target (1/2, 1/2, 0):
    #   row 0: -(log 2/4 + log 1/4) / 2 = 1.5 log 2   row 1: the same   row 2: -log 2/4 = log 2
    # i2t = t2i (symmetric) = (1.5 + 1.5 + 1) / 3 · log 2
    u = w = torch.eye(3)
    positives = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    got = itc_loss(u, w, torch.tensor(math.log(2.0)), positives)
    assert got.item() == pytest.approx(4 / 3 * math.log(2), rel=1e-6)


def test_itc_loss_rows_and_columns_differ_by_hand():
    # 2 pairs, every text positive for every image: target 1/2 each way.
    u, w = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # logits [[1, 1], [0, 0]]: rows uniform -> i2t = log 2; columns: softmax(1, 0) -> t2i =
    # -(log σ(1) + log σ(-1)) / 2 for each column.
    t2i = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    got = itc_loss(u, w, torch.tensor(1.0), torch.ones(2, 2, dtype=torch.bool))
    assert got.item() == pytest.approx((math.log(2) + t2i) / 2, abs=1e-6)


def test_itc_loss_with_diagonal_positives_is_clip_cross_entropy():
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    w = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * u @ w.T
    labels = torch.arange(5)
    reference = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    got = itc_loss(u, w, scale, torch.eye(5, dtype=torch.bool))
    assert got.item() == pytest.approx(reference.item(), abs=1e-6)


def test_itc_loss_extra_negative_texts_join_the_image_rows_only_by_hand():
    # 2 pairs, logits 2·I; one extra negative text equal to image 0's feature (logit 2 for row
    # 0, 0 for row 1). Row 0: softmax over (2, 0, 2) -> -log(e²/(2e² + 1)); row 1 unchanged
    # -log(e²/(e² + 2)); columns unchanged: log(1 + e⁻²) each.
    u = w = torch.eye(2)
    got = itc_loss(u, w, torch.tensor(2.0), torch.eye(2, dtype=torch.bool),
                   torch.tensor([[1.0, 0.0]]))
    e2 = math.exp(2)
    i2t = (-math.log(e2 / (2 * e2 + 1)) - math.log(e2 / (e2 + 2))) / 2
    assert got.item() == pytest.approx((i2t + math.log(1 + math.exp(-2))) / 2, rel=1e-6)


def test_itc_loss_with_no_extra_negatives_is_unchanged():
    g = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    w = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    eye = torch.eye(4, dtype=torch.bool)
    empty = torch.zeros(0, 6)
    assert itc_loss(u, w, torch.tensor(5.0), eye, empty).item() == pytest.approx(
        itc_loss(u, w, torch.tensor(5.0), eye).item(), abs=1e-7)


def test_swap_loss_is_the_two_way_choice_by_hand():
    # image 0: positive logit 2·1, negative 2·0 -> -log(e²/(e² + 1)); image 1: positive 0,
    # negative 2 -> -log(1/(1 + e²)); mean of the two
    u = torch.eye(2)
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    e2 = math.exp(2)
    want = (-math.log(e2 / (e2 + 1)) - math.log(1 / (1 + e2))) / 2
    assert swap_loss(u, w, neg, torch.tensor(2.0)).item() == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------- hard negatives


def test_the_only_non_positive_is_always_drawn():
    positives = torch.ones(3, 3, dtype=torch.bool)
    positives[[0, 1, 2], [1, 2, 0]] = False  # row i: only column (i + 1) % 3 is a negative
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        got = sample_hard_negatives(torch.randn(3, 3), positives, g)
        assert got.tolist() == [1, 2, 0]


def test_hard_negatives_are_drawn_by_softmax_weight_by_hand():
    # similarity (0, 0, log 3): softmax (1/5, 1/5, 3/5); column 0 is the positive, so column 2
    # is drawn with (3/5 + 1e-4) / (4/5 + 2e-4)
    n = 4000
    similarity = torch.tensor([[0.0, 0.0, math.log(3.0)]]).repeat(n, 1)
    positives = torch.tensor([[True, False, False]]).repeat(n, 1)
    got = sample_hard_negatives(similarity, positives, torch.Generator().manual_seed(0))
    assert (got != 0).all()
    assert (got == 2).float().mean().item() == pytest.approx((0.6 + 1e-4) / (0.8 + 2e-4), abs=0.03)


def test_the_1e4_floor_keeps_a_vanishing_column_drawable():
    # softmax ≈ (1, e^-50, 0): the weights of the two negatives are ≈ 1e-4 each -> about 1/2
    n = 4000
    similarity = torch.tensor([[50.0, 0.0, -1000.0]]).repeat(n, 1)
    positives = torch.tensor([[True, False, False]]).repeat(n, 1)
    got = sample_hard_negatives(similarity, positives, torch.Generator().manual_seed(0))
    assert (got == 2).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_a_row_of_positives_draws_uniformly_from_the_others():
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = True
    positives[3] = True  # row 3: everything is a positive -> uniform over the others
    picks = torch.stack([sample_hard_negatives(torch.randn(4, 4), positives,
                                               torch.Generator().manual_seed(s))
                         for s in range(30)])  # (30, 4)
    assert not positives[:3].gather(1, picks[:, :3].T).any()
    assert (picks[:, 3] != 3).all()
    assert set(picks[:, 3].tolist()) == {0, 1, 2}


def test_hard_negatives_of_images_and_of_texts_by_hand():
    positives = torch.ones(3, 3, dtype=torch.bool)
    positives[[0, 1, 2], [1, 2, 0]] = False  # image i / text (i + 1) % 3 is the only mismatch
    neg_text, neg_image = hard_negatives(torch.zeros(3, 3), positives,
                                         torch.Generator().manual_seed(0))
    assert neg_text.tolist() == [1, 2, 0]  # image i -> text i + 1
    assert neg_image.tolist() == [2, 0, 1]  # text j -> image j - 1


def test_texts_are_drawn_before_images_from_one_generator():
    g = torch.Generator().manual_seed(0)
    similarity, positives = torch.randn(5, 5, generator=g), torch.eye(5, dtype=torch.bool)
    neg_text, neg_image = hard_negatives(similarity, positives, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(neg_text, sample_hard_negatives(similarity, positives, g))
    assert torch.equal(neg_image, sample_hard_negatives(similarity.T, positives.T, g))


# --------------------------------------------------------------------------- ITM


def test_itm_loss_by_hand():
    # (no match, match) logits; softmax of (0, log 3) = (1/4, 3/4), of (0, 0) = (1/2, 1/2)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [math.log(3.0), 0.0]])
    matched = torch.tensor([True, False, False])
    # -log 3/4 (match), -log 1/2 (no match), -log 3/4 (no match)
    want = (math.log(4 / 3) + math.log(2) + math.log(4 / 3)) / 3
    assert itm_loss(logits, matched).item() == pytest.approx(want, rel=1e-6)


def test_itm_gradient_raises_match_on_positives_and_lowers_it_on_negatives():
    logits = torch.zeros(2, 2, requires_grad=True)
    itm_loss(logits, torch.tensor([True, False])).backward()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # positive: push "match" up
    assert logits.grad[1, 0] < 0 < logits.grad[1, 1]  # negative: push "no match" up
