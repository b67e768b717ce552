"""The one multi-head attention: unit checks, and golden values of the two models that use it.

The golden values were recorded from the code *before* the fusion model's ``SelfAttention`` and
the predictors' ``Attention`` were merged into :class:`MultiHeadAttention`: same state_dict keys
and shapes (checkpoints saved before still load), same parameters after a seeded init (same RNG
consumption), same outputs, attention maps and gradients. Values are fingerprints (a plain and a
cosine-weighted sum over the concatenated tensors, float64), compared with a tight tolerance so
that they hold on any CPU; on the recording machine they were bit-identical.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from pkd.train.config import ModelConfig
from pkd.train.models.attention import MultiHeadAttention
from pkd.train.models.fusion import FusionTransformer
from pkd.train.models.predictors import CrossModalPredictors

torch.set_num_threads(1)

WORDS, ANSWERS, REGION_DIM, FOUNDATION_DIM = 40, 9, 12, 5
B, L, N = 3, 6, 5


def make_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    question_mask = torch.arange(L)[None] < torch.tensor([6, 3, 1])[:, None]  # (B, L)
    region_mask = torch.arange(N)[None] < torch.tensor([5, 2, 4])[:, None]  # (B, N)
    return {
        "question_tokens": torch.randint(2, WORDS, (B, L), generator=g) * question_mask,
        "question_mask": question_mask,
        "region_features": torch.randn(B, N, REGION_DIM, generator=g),
        "region_geometry": torch.rand(B, N, 6, generator=g),
        "region_mask": region_mask,
        "image_embeds": torch.randn(B, FOUNDATION_DIM, generator=g),
        "text_embeds": torch.randn(B, FOUNDATION_DIM, generator=g),
    }


def build_fusion(foundation: bool) -> FusionTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="fusion", hidden_size=16, num_layers=2, num_heads=4,
                      intermediate_size=32, max_positions=32, dropout=0.1,
                      use_foundation_features=foundation)
    return FusionTransformer(WORDS, ANSWERS, REGION_DIM, cfg, FOUNDATION_DIM)


def build_predictors() -> CrossModalPredictors:
    torch.manual_seed(0)
    return CrossModalPredictors(WORDS, L, REGION_DIM, vision_tokens=7, vision_dim=10,
                                text_tokens=9, text_dim=11, hidden=16, heads=2, layers=2)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad for p in model.parameters()]


def run_fusion(model: FusionTransformer) -> list[torch.Tensor]:
    """[draw after init, eval outputs + maps + hidden states, train outputs + maps, grads]."""
    after_init = [torch.rand(3)]  # the next draw shows how much RNG the init consumed
    batch = make_batch()
    with torch.no_grad():
        out = model.eval()(batch, output_attentions=True, output_hidden_states=True)
    evaluated = [out["logits"], out["joint"], *out["attentions"], *out["hidden_states"]]
    torch.manual_seed(5)  # dropout draws
    out = model.train()(batch, output_attentions=True)
    trained = [out["logits"], *out["attentions"]]
    return after_init + evaluated + [t.detach() for t in trained] + _grads(
        model, out["logits"].pow(2).sum() + sum(a.pow(2).sum() for a in out["attentions"]))


def run_predictors(model: CrossModalPredictors) -> list[torch.Tensor]:
    """[draw after init, eval outputs, train outputs, grads]."""
    after_init = [torch.rand(3)]
    batch = make_batch()
    with torch.no_grad():
        evaluated = list(model.eval()(batch).values())
    out = list(model.train()(batch).values())
    return after_init + evaluated + [t.detach() for t in out] + _grads(
        model, sum(t.pow(2).sum() for t in out))


def fingerprint(tensors: list[torch.Tensor]) -> list[float]:
    """(sum, cosine-weighted sum) of the tensors flattened and concatenated, in float64."""
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    weights = torch.cos(torch.arange(flat.numel(), dtype=torch.float64))
    return [flat.sum().item(), (flat * weights).sum().item()]


def layout_hash(state: dict) -> str:
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# name -> (builder, runner, number of state_dict entries, layout hash, parameter fingerprint,
#          output fingerprint), recorded from the code before the merge
GOLDEN = {
    "fusion": (lambda: build_fusion(False), run_fusion, 48, "fe6443dbe7a9cb3f",
               [125.75876355637774, 3.0658259209952305], [658.3962210548746, -10.530592428668388]),
    "fusion_foundation": (lambda: build_fusion(True), run_fusion, 54, "c38912c60ff796e7",
                          [142.1909032141184, -8.691455775679737],
                          [743.320954514194, -25.71754698497371]),
    "predictors": (build_predictors, run_predictors, 120, "faf5f42bf39e6958",
                   [305.3788608222676, -43.501917643460985],
                   [605.3530216640465, 562.8037644505002]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_models_match_the_values_recorded_before_the_merge(name):
    build, run, count, layout, params, outputs = GOLDEN[name]
    model = build()
    state = model.state_dict()
    assert len(state) == count and layout_hash(state) == layout, list(state)
    torch.testing.assert_close(fingerprint(list(state.values())), params, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(fingerprint(run(model)), outputs, rtol=1e-6, atol=1e-4)


def test_matches_torch_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    x, context = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    key_mask = torch.tensor([[True, True, False, True, False], [True] * 5])  # (B, S)
    out, probs = attn(x, context, key_mask)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, -1, 4, 4).transpose(1, 2)  # (B, heads, T, dh)

    ref = torch.nn.functional.scaled_dot_product_attention(
        heads(attn.query(x)), heads(attn.key(context)), heads(attn.value(context)),
        attn_mask=key_mask[:, None, None, :])  # (B, heads, T, dh)
    ref = attn.output(ref.transpose(1, 2).reshape(2, 3, 16))
    torch.testing.assert_close(out, ref)
    assert probs.shape == (2, 4, 3, 5) and (probs[0, ..., [2, 4]] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 3))


def test_a_query_without_valid_keys_gets_zeros_not_nan():
    attn = MultiHeadAttention(8, 2)
    out, probs = attn(torch.randn(1, 2, 8), torch.randn(1, 3, 8),
                      torch.zeros(1, 3, dtype=torch.bool))
    assert (probs == 0).all()
    torch.testing.assert_close(out, attn.output.bias.expand(1, 2, 8))  # only W_o's bias is left


def test_maps_are_returned_before_dropout():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, dropout=0.5)
    x, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    eval_out, eval_probs = attn.eval()(x, x, mask)
    train_out, train_probs = attn.train()(x, x, mask)
    torch.testing.assert_close(train_probs, eval_probs)
    assert not torch.allclose(train_out, eval_out)


@pytest.mark.parametrize("out_name", ["output", "out"])
def test_out_name_names_the_output_projection(out_name):
    attn = MultiHeadAttention(8, 2, out_name=out_name)
    prefixes = [k.rsplit(".", 1)[0] for k in attn.state_dict()]
    assert prefixes == ["query", "query", "key", "key", "value", "value", out_name, out_name]
    assert attn.projection is getattr(attn, out_name)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
