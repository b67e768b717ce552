"""UpDn and the transformer fusion model on tiny configs: shapes, masks, gradients, hooks."""

from __future__ import annotations

import pytest
import torch

from pkd.errors import PkdError
from pkd.train.config import ModelConfig
from pkd.train.models import FusionTransformer, UpDn, build_model

torch.set_num_threads(1)

WORDS, ANSWERS, REGION_DIM, FOUNDATION_DIM = 40, 9, 12, 5
B, L, N = 3, 6, 5


def tiny(arch: str, foundation: bool = False) -> ModelConfig:
    return ModelConfig(arch=arch, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
                       max_positions=32, word_dim=8, use_foundation_features=foundation)


def make(arch: str, foundation: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(tiny(arch, foundation), WORDS, ANSWERS, REGION_DIM, FOUNDATION_DIM).eval()


def make_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths, counts = torch.tensor([6, 3, 1]), torch.tensor([5, 2, 4])
    question_mask = torch.arange(L)[None] < lengths[:, None]  # (B, L)
    region_mask = torch.arange(N)[None] < counts[:, None]  # (B, N)
    tokens = torch.randint(2, WORDS, (B, L), generator=g) * question_mask
    return {
        "question_tokens": tokens,
        "question_mask": question_mask,
        "region_features": torch.randn(B, N, REGION_DIM, generator=g).half(),  # stores hold f16
        "region_geometry": torch.rand(B, N, 6, generator=g),
        "region_mask": region_mask,
        "image_embeds": torch.randn(B, FOUNDATION_DIM, generator=g),
        "text_embeds": torch.randn(B, FOUNDATION_DIM, generator=g),
    }


def pad_with_junk(batch: dict, extra_words: int, extra_regions: int) -> dict:
    """Append padded positions holding random junk (mask False) and scramble existing padding."""
    g = torch.Generator().manual_seed(7)
    out = dict(batch)
    qm = torch.cat([batch["question_mask"], torch.zeros(B, extra_words, dtype=torch.bool)], 1)
    tokens = torch.randint(2, WORDS, qm.shape, generator=g)
    out["question_mask"], out["question_tokens"] = qm, torch.where(
        qm, torch.nn.functional.pad(batch["question_tokens"], (0, extra_words)), tokens)
    rm = torch.cat([batch["region_mask"], torch.zeros(B, extra_regions, dtype=torch.bool)], 1)
    for key, size in (("region_features", REGION_DIM), ("region_geometry", 6)):
        junk = 100 * torch.randn(B, rm.shape[1], size, generator=g).to(batch[key].dtype)
        padded = torch.nn.functional.pad(batch[key], (0, 0, 0, extra_regions))
        out[key] = torch.where(rm[..., None], padded, junk)
    out["region_mask"] = rm
    return out


@pytest.mark.parametrize("foundation", [False, True])
@pytest.mark.parametrize("arch", ["updn", "fusion"])
def test_output_shapes(arch, foundation):
    model = make(arch, foundation)
    out = model(make_batch())
    hidden = 16
    assert out["logits"].shape == (B, ANSWERS) and out["joint"].shape == (B, hidden)
    assert out["word_features"].shape == (B, L, model.word_feature_dim)
    assert out["region_features_in"].shape == (B, N, model.region_feature_dim)
    assert model.joint_dim == hidden
    assert torch.isfinite(out["logits"]).all()
    if arch == "updn":
        assert out["question_features"].shape == (B, hidden) and out["attention"].shape == (B, N)
    else:
        assert out["token_mask"].shape == (B, 1 + L + 1 + N + (2 if foundation else 0))
        assert "attentions" not in out and "hidden_states" not in out


@pytest.mark.parametrize("arch", ["updn", "fusion"])
def test_padding_does_not_change_outputs(arch):
    model = make(arch, foundation=True)
    batch = make_batch()
    base = model(batch)
    padded = model(pad_with_junk(batch, extra_words=3, extra_regions=4))
    for key in ("logits", "joint"):
        torch.testing.assert_close(padded[key], base[key], rtol=0, atol=1e-6)
    # the junk would change the outputs if it were not masked (so this test can fail)
    unmasked = pad_with_junk(batch, 3, 4)
    unmasked["region_mask"] = torch.ones_like(unmasked["region_mask"])
    assert (model(unmasked)["joint"] - base["joint"]).abs().max() > 1e-4


def test_updn_attention_is_zero_on_padding_regions():
    out = make("updn")(make_batch())
    mask = make_batch()["region_mask"]
    assert (out["attention"][~mask] == 0).all()
    torch.testing.assert_close(out["attention"].sum(1), torch.ones(B))


def test_fusion_attention_maps_and_hidden_states():
    model = make("fusion")
    batch = make_batch()
    out = model(batch, output_attentions=True, output_hidden_states=True)
    t = 1 + L + 1 + N
    assert len(out["attentions"]) == 2 and len(out["hidden_states"]) == 3
    assert all(h.shape == (B, t, 16) for h in out["hidden_states"])
    torch.testing.assert_close(out["hidden_states"][-1][:, 0], out["joint"])
    key_mask = out["token_mask"][:, None, None, :].expand(B, 4, t, t)
    for att in out["attentions"]:
        assert att.shape == (B, 4, t, t)
        assert (att[~key_mask] == 0).all()
        torch.testing.assert_close(att.sum(-1), torch.ones(B, 4, t))


@pytest.mark.parametrize("arch", ["updn", "fusion"])
def test_gradients_reach_every_parameter(arch):
    model = make(arch, foundation=True).train()
    model(make_batch())["logits"].pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["updn", "fusion"])
def test_same_seed_same_model_and_outputs(arch):
    a, b, c = make(arch, seed=3), make(arch, seed=3), make(arch, seed=4)
    batch = make_batch()
    assert torch.equal(a(batch)["logits"], b(batch)["logits"])
    assert not torch.equal(a(batch)["logits"], c(batch)["logits"])
    a.train(), b.train()
    torch.manual_seed(11)
    first = a(batch)["logits"]
    torch.manual_seed(11)
    assert torch.equal(first, b(batch)["logits"])  # dropout draws from the seeded generator


@pytest.mark.parametrize("arch", ["updn", "fusion"])
def test_feature_fusion_hook_sees_and_replaces_features(arch):
    model = make(arch)
    seen = {}

    def fusion(words, word_mask, regions, region_mask):
        seen.update(words=words.shape, word_mask=word_mask, regions=regions.shape)
        return words * 0.5, regions + 1.0

    batch = make_batch()
    before = model(batch)
    model.feature_fusion = fusion
    after = model(batch)
    assert seen["words"] == (B, L, model.word_feature_dim)
    assert seen["regions"] == (B, N, model.region_feature_dim)
    assert torch.equal(seen["word_mask"], batch["question_mask"])
    torch.testing.assert_close(after["word_features"], before["word_features"] * 0.5)
    assert not torch.allclose(after["logits"], before["logits"])


def test_direct_classes_and_errors():
    assert isinstance(make("updn"), UpDn) and isinstance(make("fusion"), FusionTransformer)
    with pytest.raises(ValueError, match="divisible"):
        FusionTransformer(WORDS, ANSWERS, REGION_DIM, ModelConfig(hidden_size=10, num_heads=4))
    with pytest.raises(PkdError, match="model.encoder"):
        FusionTransformer(WORDS, ANSWERS, REGION_DIM, ModelConfig(encoder="hf:bert"))
    with pytest.raises(ValueError, match="foundation_dim"):
        UpDn(WORDS, ANSWERS, REGION_DIM, tiny("updn", foundation=True))
    batch = make_batch()
    del batch["image_embeds"]
    with pytest.raises(PkdError, match="image_embeds"):
        make("updn", foundation=True)(batch)


@pytest.mark.parametrize("arch", ["updn", "fusion"])
def test_predicted_foundation_inputs_are_read_instead_of_the_real_ones(arch):
    """``foundation_inputs=predicted``: the same weights read ``predicted_image_embed`` /
    ``predicted_text_embed`` (PKD's e_v, e_t); the real embeddings are then ignored."""
    real = make(arch, foundation=True)
    cfg = tiny(arch, foundation=True)
    cfg.foundation_inputs = "predicted"
    item = build_model(cfg, WORDS, ANSWERS, REGION_DIM, FOUNDATION_DIM).eval()
    item.load_state_dict(real.state_dict())  # same parameters: only the inputs differ
    batch = make_batch()
    swapped = {**{k: v for k, v in batch.items() if k not in ("image_embeds", "text_embeds")},
               "predicted_image_embed": batch["image_embeds"],
               "predicted_text_embed": batch["text_embeds"]}
    with torch.no_grad():
        torch.testing.assert_close(item(swapped)["logits"], real(batch)["logits"])
        junk = {**swapped, "image_embeds": 100 + batch["image_embeds"]}  # not read
        torch.testing.assert_close(item(junk)["logits"], real(batch)["logits"])
        moved = {**swapped, "predicted_image_embed": batch["image_embeds"] + 1}
        assert not torch.allclose(item(moved)["logits"], real(batch)["logits"])
    with pytest.raises(PkdError, match="batch has no 'predicted_image_embed'"):
        item(batch)
