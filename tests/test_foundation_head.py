"""The trainer's frozen matching head equals the pipeline's reference and the full HF model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.pipeline.foundation import FoundationSpec, config_sha256, load_foundation, match_scores
from pkd.train.foundation_head import FoundationHead

torch.set_num_threads(1)

TEXTS = ["is there a red circle", "what color is the square?", "how many shapes are there",
         "a photo of a blue triangle next to a green square"]
L = 12


@pytest.fixture(scope="module")
def cached(model_dir):
    """(pipeline FoundationModel, cached f32 features as tensors, images)."""
    fm = load_foundation(FoundationSpec(str(model_dir), max_text_len=L, token_dtype="float32"))
    rng = np.random.default_rng(3)
    imgs = [Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8)) for _ in TEXTS]
    arrays = {**fm.encode_images(imgs), **fm.encode_texts(TEXTS)}
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    t["text_mask"] = torch.arange(L)[None] < t["num_tokens"][:, None]  # (B, L)
    return fm, t, imgs


@pytest.fixture(scope="module")
def head(model_dir):
    return FoundationHead.from_pretrained(model_dir)


def full_model_score(fm, imgs) -> torch.Tensor:
    """The HF model's own score on raw images + texts (CLIP logits diagonal, BLIP ITM logit)."""
    pixels = fm.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
    enc = fm.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=L,
                       return_tensors="pt")
    with torch.no_grad():
        if fm.family == "clip":
            return fm.model(pixel_values=pixels, **enc).logits_per_image.diagonal()
        z = fm.model(pixel_values=pixels, input_ids=enc["input_ids"],
                     attention_mask=enc["attention_mask"], use_itm_head=True).itm_score
    return z[:, 1] - z[:, 0]


def test_loaded_frozen(head, family, model_dir):
    assert head.family == family and not head.training
    assert (head.vision_dim, head.text_dim, head.embed_dim, head.vision_tokens) == (64, 64, 64, 65)
    assert all(not p.requires_grad for p in head.parameters())
    head.train()
    assert not head.training and not any(m.training for m in head.modules())
    from transformers import AutoConfig

    assert head.config_hash == config_sha256(AutoConfig.from_pretrained(model_dir))


def test_score_on_cached_features_equals_reference_and_full_model(head, cached):
    fm, t, imgs = cached
    with torch.no_grad():
        got = head(t["vision_tokens"], t["text_tokens"], t["text_mask"], t["input_ids"])
        reference = match_scores(fm, t["vision_tokens"], t["input_ids"], t["num_tokens"])
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, full_model_score(fm, imgs), rtol=1e-4, atol=1e-4)
    assert got.std() > 1e-4


def test_pooled_embeddings_equal_the_stores(head, cached):
    _, t, _ = cached
    with torch.no_grad():
        torch.testing.assert_close(head.embed_image(t["vision_tokens"]), t["image_embeds"],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head.embed_text(t["text_tokens"], t["text_mask"]),
                                   t["text_embeds"], rtol=1e-5, atol=1e-5)


def test_gradients_reach_inputs_not_weights(head, cached):
    _, t, _ = cached
    v = t["vision_tokens"].clone().requires_grad_(True)
    text = t["text_tokens"].clone().requires_grad_(True)
    head(v, text, t["text_mask"]).sum().backward()  # predicted-text path (no input_ids)
    assert v.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.parameters())


@pytest.mark.parametrize("entry", ["hidden", "embeddings"])
def test_blip_feature_entry_is_the_same_network(tiny_blip_dir, cached, entry):
    """Fed what the embedding layer (``hidden``) or the word table (``embeddings``) would give
    for the real ids, the predicted-text path reproduces the exact ITM score."""
    head = FoundationHead.from_pretrained(tiny_blip_dir, text_entry=entry)
    fm, t, _ = cached
    if fm.family != "blip":
        pytest.skip("BLIP only")
    ids, mask = t["input_ids"].long(), t["text_mask"]
    emb = head.text_encoder.embeddings
    with torch.no_grad():
        feats = emb(input_ids=ids) if entry == "hidden" else emb.word_embeddings(ids)
        before = feats.clone()
        got = head(t["vision_tokens"], feats, mask)
        want = head(t["vision_tokens"], t["text_tokens"], mask, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(feats, before)  # inputs are not modified in place


def test_check_producer(head, cached):
    head.check_producer({"config_hash": head.config_hash, "family": head.family}, "img.zarr")
    with pytest.raises(PkdError, match="img.zarr: extracted with foundation model 'x'"):
        head.check_producer({"config_hash": "0" * 64, "model": "x"}, "img.zarr")


def test_bad_directories(tmp_path, tiny_resnet_dir):
    with pytest.raises(PkdError, match="not a model directory"):
        FoundationHead.from_pretrained(tmp_path / "nope")
    with pytest.raises(PkdError, match="unsupported foundation model"):
        FoundationHead.from_pretrained(tiny_resnet_dir)
