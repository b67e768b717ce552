"""PKD memory: FIFO semantics, learnable slots, gated fusion formula, the model hook."""

from __future__ import annotations

import math

import torch

from pkd.train.config import ModelConfig
from pkd.train.models import build_model
from pkd.train.models.memory import FeatureMemory, GatedMemoryFusion, PKDFeatureFusion

torch.set_num_threads(1)


def rows(*values: float) -> torch.Tensor:
    return torch.tensor([[float(v), -float(v)] for v in values])  # (n, 2)


def test_fifo_wraps_around_and_keeps_the_newest():
    mem = FeatureMemory(4, 2)
    assert mem.content().shape == (0, 2)
    mem.write(rows(1, 2, 3))
    torch.testing.assert_close(mem.content(), rows(1, 2, 3))
    assert int(mem.queue.ptr) == 3 and int(mem.queue.count) == 3
    mem.write(rows(4, 5, 6))  # 5, 6 overwrite the oldest rows 0, 1
    torch.testing.assert_close(mem.content(), rows(5, 6, 3, 4))
    assert int(mem.queue.ptr) == 2 and int(mem.queue.count) == 4
    mem.write(rows(7, 8, 9, 10, 11))  # more than K: the last K, where sequential writes land
    torch.testing.assert_close(mem.content(), rows(9, 10, 11, 8))
    assert int(mem.queue.ptr) == 3


def test_no_padding_and_no_writes_outside_training():
    mem = FeatureMemory(4, 2)
    mem.write(rows(1, 2, 3), valid=torch.tensor([True, False, True]))
    torch.testing.assert_close(mem.content(), rows(1, 3))
    mem.eval()
    mem.write(rows(7))
    torch.testing.assert_close(mem.content(), rows(1, 3))
    assert set(dict(mem.named_buffers())) == {"queue.vectors", "queue.ptr", "queue.count"}


def test_learnable_slots_follow_the_queue_and_get_gradients():
    mem = FeatureMemory(3, 2, slots=2)
    assert mem.content().shape == (2, 2)
    mem.write(rows(1))
    content = mem.content()
    torch.testing.assert_close(content[:1], rows(1))
    content.sum().backward()
    assert mem.slots.grad is not None
    assert FeatureMemory(0, 2, slots=2).content().shape == (2, 2)  # slots only


def test_gated_fusion_formula_by_hand():
    torch.manual_seed(0)
    fusion = GatedMemoryFusion(3, 2)
    x, memory = torch.randn(2, 4, 3), torch.randn(5, 2)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    got = fusion(x, mask, memory)
    wq, wk, wv = fusion.query.weight.T, fusion.key.weight.T, fusion.value.weight.T
    attn = torch.softmax((x @ wq) @ (memory @ wk).T / math.sqrt(2), dim=-1)  # (B, T, M)
    gate = torch.sigmoid(x @ fusion.gate.weight.T + fusion.gate.bias)
    want = x + gate * (attn @ (memory @ wv))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1, :2], want[1, :2])
    torch.testing.assert_close(got[1, 2:], x[1, 2:])  # padded positions unchanged


def test_empty_memory_leaves_features_unchanged():
    fusion = GatedMemoryFusion(3, 2)
    x = torch.randn(2, 4, 3)
    assert fusion(x, torch.ones(2, 4, dtype=torch.bool), torch.zeros(0, 2)) is x


def test_hook_on_a_model_saves_the_memory_and_substitutes_inputs():
    cfg = ModelConfig(hidden_size=16, word_dim=8, dropout=0.0, classifier_dropout=0.0)
    model = build_model(cfg, 20, 5, 6)
    hook = PKDFeatureFusion(FeatureMemory(4, 3), model.word_feature_dim, model.region_feature_dim)
    model.feature_fusion = hook
    assert "feature_fusion.memory.queue.vectors" in model.state_dict()
    batch = {"question_tokens": torch.tensor([[3, 4, 0]]), "question_mask": torch.tensor(
        [[True, True, False]]), "region_features": torch.randn(1, 2, 6),
        "region_mask": torch.ones(1, 2, dtype=torch.bool)}
    model.eval()
    plain = model(batch)
    hook.memory.train()
    hook.memory.write(torch.randn(2, 3))
    fused = model(batch)
    assert not torch.allclose(plain["logits"], fused["logits"])
    words, regions = torch.randn(1, 3, 8), torch.randn(1, 2, 6)
    with hook.substitute(words, regions):
        sub = model(batch)
    memory = hook.memory.content()
    torch.testing.assert_close(sub["region_features_in"],
                               hook.region_fusion(regions, batch["region_mask"], memory))
    assert hook._substitute is None  # cleared after the block
