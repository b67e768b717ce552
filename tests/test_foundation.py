"""The frozen foundation model: cached features equal the HF model's own forward pass, and the
matching head on cached features equals the full model's ITM / CLIP score."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pkd.errors import PkdError
from pkd.pipeline.foundation import (
    FoundationSpec,
    config_sha256,
    load_foundation,
    match_scores,
    resolve_model,
)

torch.set_num_threads(1)

TEXTS = ["what color is the square?", "is there a red circle", "how many",
         "a photo of a blue triangle next to a green square left right top bottom center"]
L = 12  # max_text_len: the last text is truncated
F16 = {"rtol": 2e-3, "atol": 2e-3}  # float16 storage tolerance


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 70, 3), dtype=np.uint8))
            for i in range(n)]


@pytest.fixture(scope="module")
def foundation(model_dir):
    return load_foundation(FoundationSpec(str(model_dir), max_text_len=L))


@pytest.fixture(scope="module")
def foundation32(model_dir):
    return load_foundation(FoundationSpec(str(model_dir), max_text_len=L, token_dtype="float32"))


@pytest.fixture(scope="module")
def reference(model_dir, family):
    """An independently loaded HF model with its own tokenizer / image processor."""
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval, CLIPModel

    cls = CLIPModel if family == "clip" else BlipForImageTextRetrieval
    model = cls.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
    return (model.eval(), AutoTokenizer.from_pretrained(model_dir, local_files_only=True),
            AutoImageProcessor.from_pretrained(model_dir, local_files_only=True))


def test_loaded_frozen_with_family_and_dims(foundation, family):
    assert foundation.family == family
    assert foundation.dims == {"vision_tokens": 65, "vision_dim": 64, "text_dim": 64,
                               "embed_dim": 64, "max_text_len": L}
    assert not foundation.model.training
    assert not any(p.requires_grad for p in foundation.model.parameters())
    assert foundation.model.config._attn_implementation == "eager"
    prov = foundation.provenance()
    assert prov["family"] == family and prov["dtype"] == "float32"
    assert len(prov["config_hash"]) == 64 and prov["info"]["transformers_version"]


def test_encode_images_equals_direct_forward(foundation, reference, family):
    model, _, processor = reference
    got = foundation.encode_images(images(3))
    pixels = processor(images=images(3), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=pixels).last_hidden_state  # (B, P, d_v)
        if family == "clip":
            embeds = model.get_image_features(pixel_values=pixels).pooler_output
        else:
            embeds = model.vision_proj(tokens[:, 0])
    assert got["vision_tokens"].dtype == np.float16 and got["vision_tokens"].shape == (3, 65, 64)
    assert got["image_embeds"].dtype == np.float32 and got["image_embeds"].shape == (3, 64)
    np.testing.assert_allclose(got["vision_tokens"], tokens.numpy(), **F16)
    np.testing.assert_allclose(got["image_embeds"], F.normalize(embeds, dim=-1).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got["image_embeds"], axis=-1), 1.0, rtol=1e-6)


def test_encode_texts_equals_direct_forward(foundation, reference, family):
    model, tokenizer, _ = reference
    got = foundation.encode_texts(TEXTS)
    enc = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
    mask = enc["attention_mask"]  # (B, L)
    with torch.no_grad():
        if family == "clip":
            out = model.get_text_features(**enc)
            tokens, embeds = out.last_hidden_state, out.pooler_output
        else:
            tokens = model.text_encoder(**enc).last_hidden_state
            embeds = model.text_proj(tokens[:, 0])
    np.testing.assert_array_equal(got["input_ids"], enc["input_ids"].numpy())
    np.testing.assert_array_equal(got["num_tokens"], mask.sum(-1).numpy())
    assert got["num_tokens"][-1] == L and got["num_tokens"][2] < L  # truncated / padded rows
    assert got["input_ids"].dtype == got["num_tokens"].dtype == np.int32
    assert got["text_tokens"].dtype == np.float16 and got["text_tokens"].shape == (4, L, 64)
    np.testing.assert_allclose(got["text_tokens"], (tokens * mask[..., None]).numpy(), **F16)
    assert not got["text_tokens"][2, got["num_tokens"][2]:].any()  # padding rows are zero
    np.testing.assert_allclose(got["text_embeds"], F.normalize(embeds, dim=-1).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_batch_of_one_equals_batch_of_four(foundation32):
    imgs = images(4)
    four_i, four_t = foundation32.encode_images(imgs), foundation32.encode_texts(TEXTS)
    for i in range(4):
        one_i, one_t = foundation32.encode_images([imgs[i]]), foundation32.encode_texts([TEXTS[i]])
        for name in one_i:
            np.testing.assert_allclose(one_i[name][0], four_i[name][i], rtol=1e-5, atol=1e-5)
        for name in one_t:
            np.testing.assert_allclose(one_t[name][0], four_t[name][i], rtol=1e-5, atol=1e-5)


def test_empty_batches_keep_shapes(foundation):
    full = {**foundation.encode_images(images(1)), **foundation.encode_texts(TEXTS[:1])}
    empty = {**foundation.encode_images([]), **foundation.encode_texts([])}
    assert {k: (v.shape[1:], v.dtype) for k, v in empty.items()} == {
        k: (v.shape[1:], v.dtype) for k, v in full.items()}
    assert all(len(v) == 0 for v in empty.values())


def full_model_score(foundation, imgs, texts) -> torch.Tensor:
    """The HF model's own pairwise score on raw inputs: CLIP logits_per_image diagonal, BLIP
    ITM logit difference (match - no match)."""
    model, tok = foundation.model, foundation.tokenizer
    pixels = foundation.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
    enc = tok(texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
    with torch.no_grad():
        if foundation.family == "clip":
            return model(pixel_values=pixels, **enc).logits_per_image.diagonal()
        z = model(pixel_values=pixels, input_ids=enc["input_ids"],
                  attention_mask=enc["attention_mask"], use_itm_head=True).itm_score
    assert torch.allclose(torch.sigmoid(z[:, 1] - z[:, 0]), z.softmax(-1)[:, 1])
    return z[:, 1] - z[:, 0]


@pytest.mark.parametrize("tokens_dtype", ["float32", "float16"])
def test_match_scores_from_cache_equal_full_model(foundation, foundation32, tokens_dtype):
    fm = foundation32 if tokens_dtype == "float32" else foundation
    imgs = images(4, seed=1)
    texts = TEXTS[::-1]  # mismatched pairs too
    cached = {**fm.encode_images(imgs), **fm.encode_texts(texts)}
    t = {k: torch.from_numpy(v) for k, v in cached.items()}
    want = full_model_score(fm, imgs, texts)
    tol = {"rtol": 1e-5, "atol": 1e-5} if tokens_dtype == "float32" else {"rtol": 0, "atol": 2e-2}
    with torch.no_grad():
        got = match_scores(fm, t["vision_tokens"], t["input_ids"], t["num_tokens"])
        torch.testing.assert_close(got, want, **tol)
        if fm.family == "clip":  # pooled from the cached text tokens instead of the text tower
            pooled = match_scores(fm, t["vision_tokens"], t["input_ids"], t["num_tokens"],
                                  t["text_tokens"])
            torch.testing.assert_close(pooled, want, **tol)
    assert want.std() > 1e-4  # the pairs really score differently


def test_match_scores_pass_gradients_to_inputs(foundation32):
    cached = {**foundation32.encode_images(images(2)), **foundation32.encode_texts(TEXTS[:2])}
    v = torch.from_numpy(cached["vision_tokens"]).requires_grad_(True)
    s = match_scores(foundation32, v, torch.from_numpy(cached["input_ids"]),
                     torch.from_numpy(cached["num_tokens"]))
    s.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is None for p in foundation32.model.parameters())


def test_bfloat16_autocast_is_close(model_dir, foundation32):
    fm = load_foundation(FoundationSpec(str(model_dir), max_text_len=L, dtype="bfloat16"))
    got = fm.encode_texts(TEXTS)["text_embeds"]
    want = foundation32.encode_texts(TEXTS)["text_embeds"]
    assert fm.provenance()["dtype"] == "bfloat16"
    np.testing.assert_allclose(got, want, atol=0.1)
    assert (got * want).sum(-1).min() > 0.95  # cosine of unit vectors


def test_sdpa_attention_gives_the_eager_features(model_dir, foundation32, family):
    """``attn="sdpa"`` (fused kernels; extraction needs no attention maps) computes the same
    features as eager attention, and is recorded in the provenance (so a resume cannot mix).
    transformers has no fused BLIP attention: refused in one line."""
    if family == "blip":
        with pytest.raises(PkdError, match=r"attn='sdpa' is not available for BLIP models"):
            load_foundation(FoundationSpec(str(model_dir), attn="sdpa"))
        return
    fm = load_foundation(FoundationSpec(str(model_dir), max_text_len=L, token_dtype="float32",
                                        attn="sdpa"))
    assert fm.provenance()["attn"] == "sdpa" and foundation32.provenance()["attn"] == "eager"
    for got, want in ((fm.encode_images(images(3)), foundation32.encode_images(images(3))),
                      (fm.encode_texts(TEXTS), foundation32.encode_texts(TEXTS))):
        for name in got:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(PkdError, match=r"attn 'flash' is not one of eager, sdpa"):
        load_foundation(FoundationSpec(str(model_dir), attn="flash"))


def test_config_hash_ignores_location_not_content(model_dir, foundation, tmp_path, family):
    copy = shutil.copytree(model_dir, tmp_path / "moved")
    moved = load_foundation(FoundationSpec(str(copy), max_text_len=L))
    assert moved.provenance()["config_hash"] == foundation.provenance()["config_hash"]
    config = foundation.model.config.__class__.from_dict(foundation.model.config.to_dict())
    config.text_config.layer_norm_eps *= 2
    assert config_sha256(config) != foundation.provenance()["config_hash"]


def test_directory_without_tokenizer(model_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, tmp_path / name)
    with pytest.raises(PkdError, match="no tokenizer/image processor found"):
        load_foundation(FoundationSpec(str(tmp_path)))


@pytest.mark.parametrize("other", ["tiny_resnet_dir", "tiny_detr_dir"])
def test_unsupported_architecture(other, request):
    where = str(request.getfixturevalue(other))
    with pytest.raises(PkdError, match="unsupported foundation model .*supported: CLIPModel"):
        load_foundation(FoundationSpec(where))


def edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return str(dst)


def test_blip_without_itm_head_is_refused(tiny_blip_dir, tmp_path):
    def captioner(c):
        c["architectures"] = ["BlipForConditionalGeneration"]

    with pytest.raises(PkdError, match="unsupported foundation model BlipForConditionalGeneration"):
        load_foundation(FoundationSpec(edited_copy(tiny_blip_dir, tmp_path / "m", captioner)))


def test_clip_eos_id_that_disagrees_with_tokenizer(tiny_clip_dir, tmp_path):
    def wrong_eos(c):
        c["text_config"]["eos_token_id"] = 3  # <|unk|>: pooling would pick position 0

    fm = load_foundation(FoundationSpec(edited_copy(tiny_clip_dir, tmp_path / "m", wrong_eos)))
    with pytest.raises(PkdError, match="eos_token_id 3"):
        fm.encode_texts(TEXTS)


def test_bad_specs(tiny_clip_dir, tmp_path):
    cases = [(FoundationSpec(str(tmp_path / "nope")), "not a model directory"),
             (FoundationSpec(str(tiny_clip_dir), max_text_len=33), "exceeds the model's 32"),
             (FoundationSpec(str(tiny_clip_dir), dtype="int8"), "dtype 'int8'"),
             (FoundationSpec(str(tiny_clip_dir), device="gpu9"), "bad device")]
    for spec, message in cases:
        with pytest.raises(PkdError, match=message):
            load_foundation(spec)


def test_hub_ids_honour_hf_hub_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someone/clip-model") == ("someone/clip-model", True)
    with pytest.raises(PkdError, match="someone/clip-model: cannot load a model config"):
        load_foundation(FoundationSpec("someone/clip-model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("someone/clip-model") == ("someone/clip-model", False)
