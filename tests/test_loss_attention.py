"""Attention distillation: layer mapping and the masked MSE on hand-computed maps."""

from __future__ import annotations

import pytest
import torch

from pkd.train.losses.attention import AttentionMSE, layer_pairs, teacher_layers_needed

torch.set_num_threads(1)


def test_last_mapping_pairs_last_layers():
    assert layer_pairs(3, 12, "last") == [(2, 11)]
    assert teacher_layers_needed(3, 12, "last") == [11]


@pytest.mark.parametrize("ls, lt, expected", [
    (6, 12, [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]),
    (3, 4, [(0, 0), (1, 2), (2, 3)]),  # 4/3+1/2 -> 1, 8/3+1/2 -> 3, 4 -> 4 (minus 1)
    (4, 2, [(0, 0), (1, 0), (2, 1), (3, 1)]),  # deeper student: floor(0.5 + 0.5) - 1 = 0
    (2, 2, [(0, 0), (1, 1)]),
])
def test_uniform_mapping(ls, lt, expected):
    assert layer_pairs(ls, lt, "uniform") == expected
    assert teacher_layers_needed(ls, lt, "uniform") == sorted({t for _, t in expected})


def test_unknown_mapping_raises():
    with pytest.raises(ValueError, match="mapping"):
        layer_pairs(2, 2, "every")


def maps(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_one_map_with_padding_by_hand():
    # T = 3, token 2 is padding; its row and column hold junk that must not count.
    s = maps([[0.5, 0.5, 99.0], [1.0, 0.0, 99.0], [7.0, 7.0, 7.0]])[None, None]  # (1,1,3,3)
    t = maps([[1.0, 0.0, -5.0], [0.5, 0.5, -5.0], [3.0, 3.0, 3.0]])[None, None]
    mask = torch.tensor([[True, True, False]])
    # valid entries: (0,0) -.5, (0,1) .5, (1,0) .5, (1,1) -.5 -> 4 * 0.25 / 4
    loss = AttentionMSE()([s], [t], mask)
    assert loss.item() == pytest.approx(0.25)


def test_normalised_by_valid_entries_of_the_batch():
    # question 0 has 1 valid token (1 entry, squared error 1); question 1 has 2 (4 entries, 0)
    s = torch.zeros(2, 1, 2, 2)
    t = torch.zeros(2, 1, 2, 2)
    s[0, 0, 0, 0], t[0, 0, 0, 0] = 1.0, 0.0
    s[0, 0, 1, :], s[0, 0, :, 1] = 5.0, 5.0  # junk on padding of question 0
    s[1], t[1] = 0.5, 0.5
    mask = torch.tensor([[True, False], [True, True]])
    assert AttentionMSE()([s], [t], mask).item() == pytest.approx(1 / 5)  # not (1 + 0) / 2


def test_same_head_count_compares_head_by_head():
    eye, swap = maps([[1, 0], [0, 1]]), maps([[0, 1], [1, 0]])
    s = torch.stack([eye, eye])[None]  # (1, 2, 2, 2)
    t = torch.stack([eye, swap])[None]
    mask = torch.ones(1, 2, dtype=torch.bool)
    # head 0: 0; head 1: four squared errors of 1 -> 4 / (2 heads * 4 entries)
    assert AttentionMSE()([s], [t], mask).item() == pytest.approx(0.5)


def test_different_head_counts_compare_head_averages():
    eye, swap = maps([[1, 0], [0, 1]]), maps([[0, 1], [1, 0]])
    s = torch.stack([eye, swap])[None]  # (1, 2, 2, 2): mean is 0.5 everywhere
    t = maps([[1, 0], [1, 0]])[None, None]  # (1, 1, 2, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    # diff [[-.5, .5], [-.5, .5]] -> 4 * 0.25 / 4; head-by-head would be impossible here
    assert AttentionMSE()([s], [t], mask).item() == pytest.approx(0.25)
    t4 = t.expand(1, 4, 2, 2)  # 4 teacher heads, same average
    assert AttentionMSE()([s], [t4], mask).item() == pytest.approx(0.25)


def test_pairs_are_averaged():
    eye, swap = maps([[1, 0], [0, 1]]), maps([[0, 1], [1, 0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    first = (eye[None, None], maps([[0.5, 0.5], [0.5, 0.5]])[None, None])  # 0.25
    second = (eye[None, None], swap[None, None])  # 1.0
    loss = AttentionMSE()([first[0], second[0]], [first[1], second[1]], mask)
    assert loss.item() == pytest.approx((0.25 + 1.0) / 2)


def test_gradient_only_on_valid_entries():
    s = torch.rand(1, 1, 3, 3, requires_grad=True)
    t = torch.rand(1, 1, 3, 3)
    AttentionMSE()([s], [t], torch.tensor([[True, False, True]])).backward()
    grad = s.grad[0, 0]
    assert (grad[1] == 0).all() and (grad[:, 1] == 0).all()
    assert (grad[[0, 2]][:, [0, 2]] != 0).all()


def test_mismatched_inputs_raise():
    a = torch.rand(1, 1, 3, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="as many"):
        AttentionMSE()([a, a], [a], mask)
    with pytest.raises(ValueError, match="line up"):
        AttentionMSE()([a], [torch.rand(1, 1, 4, 4)], mask)
