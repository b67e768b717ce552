"""Tiny models from configs: offline tokenizers, save -> reload fidelity, seeds, EOS pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pkd.hf.tiny_models import (
    BERT_SPECIALS,
    CLIP_SPECIALS,
    DEFAULT_TEXTS,
    build_tiny_clip,
    train_tokenizer,
)

torch.set_num_threads(1)

TEXTS = ["What color is the square?", "zebra XYLOPHONE!", "how many shapes are there " * 4, ""]


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 70, 3), dtype=np.uint8))
            for i in range(n)]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_tokenizer_reloads_with_identical_ids(tmp_path, kind):
    from transformers import AutoTokenizer

    trained = train_tokenizer(DEFAULT_TEXTS, tmp_path, kind=kind, vocab_size=200)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    kw = {"padding": "max_length", "truncation": True, "max_length": 12}
    assert trained(TEXTS, **kw)["input_ids"] == reloaded(TEXTS, **kw)["input_ids"]
    assert len(reloaded) == len(trained)
    assert reloaded.pad_token_id == trained.pad_token_id


def test_wordpiece_is_bert_style(tmp_path):
    tok = train_tokenizer(DEFAULT_TEXTS, tmp_path, kind="wordpiece")
    assert [tok.convert_tokens_to_ids(t) for t in BERT_SPECIALS.values()] == [0, 1, 2, 3, 4]
    ids = tok("What color is the square?")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "what", "color", "is", "the", "square",
                                              "?", "[SEP]"]
    truncated = tok("what color is the square", truncation=True, max_length=4)["input_ids"]
    assert tok.convert_ids_to_tokens(truncated) == ["[CLS]", "what", "color", "[SEP]"]


def test_bpe_is_clip_style(tmp_path):
    tok = train_tokenizer(DEFAULT_TEXTS, tmp_path, kind="bpe")
    assert [tok.convert_tokens_to_ids(t) for t in CLIP_SPECIALS.values()] == [0, 1, 2, 3]
    enc = tok(["is there a red circle", "is"], padding="max_length", truncation=True, max_length=5)
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "<|startoftext|>", "is</w>", "there</w>", "a</w>", "<|endoftext|>"]
    assert enc["input_ids"][1] == [0, tok.convert_tokens_to_ids("is</w>"), 1, 2, 2]
    assert enc["attention_mask"][1] == [1, 1, 1, 0, 0]
    assert tok.unk_token_id in tok("ζ")["input_ids"]  # never-seen characters map to <|unk|>


def test_unknown_tokenizer_kind(tmp_path):
    with pytest.raises(ValueError, match="wordpiece"):
        train_tokenizer(DEFAULT_TEXTS, tmp_path, kind="sentencepiece")


def fresh_twin(model_dir, cls):
    """The model a builder made, rebuilt in memory from the reloaded config with seed 0."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True,
                                        attn_implementation="eager")
    torch.manual_seed(0)
    return cls(config).eval()


def assert_same_outputs(a, b):
    for name in a:
        if isinstance(a[name], torch.Tensor):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_clip_reload_matches_in_memory_model(tiny_clip_dir):
    from transformers import AutoProcessor, CLIPModel

    processor = AutoProcessor.from_pretrained(tiny_clip_dir, local_files_only=True)
    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True,
                                      attn_implementation="eager").eval()
    inputs = processor(text=TEXTS, images=images(4), return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (4, 3, 64, 64)
    with torch.no_grad():
        assert_same_outputs(model(**inputs), fresh_twin(tiny_clip_dir, CLIPModel)(**inputs))
    text = model.config.text_config
    tok = processor.tokenizer
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert text.vocab_size == len(tok)


def test_clip_pools_text_at_the_eos_token(tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    tok = AutoTokenizer.from_pretrained(tiny_clip_dir, local_files_only=True)
    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True).eval()
    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=10, return_tensors="pt")
    eos_at = enc["attention_mask"].sum(-1) - 1  # (B,) EOS is the last real token
    assert (enc["input_ids"][torch.arange(4), eos_at] == tok.eos_token_id).all()
    with torch.no_grad():
        out = model.text_model(**enc)
    hidden = out.last_hidden_state  # (B, L, d)
    torch.testing.assert_close(out.pooler_output, hidden[torch.arange(4), eos_at], rtol=0, atol=0)
    assert not torch.allclose(out.pooler_output, hidden[:, 0])  # not the silent position-0 pool


def test_blip_reload_matches_in_memory_model(tiny_blip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

    tok = AutoTokenizer.from_pretrained(tiny_blip_dir, local_files_only=True)
    pixels = AutoImageProcessor.from_pretrained(tiny_blip_dir, local_files_only=True)(
        images=images(4), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (4, 3, 64, 64)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    model = BlipForImageTextRetrieval.from_pretrained(tiny_blip_dir, local_files_only=True,
                                                      attn_implementation="eager").eval()
    twin = fresh_twin(tiny_blip_dir, BlipForImageTextRetrieval)
    with torch.no_grad():
        for itm in (True, False):
            args = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                    "pixel_values": pixels, "use_itm_head": itm}
            assert_same_outputs(model(**args), twin(**args))
    assert model.config.text_config.pad_token_id == tok.pad_token_id == 0


def test_builders_are_deterministic_for_a_seed(tmp_path):
    a = load_file(build_tiny_clip(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_clip(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_clip(tmp_path / "c", seed=4) / "model.safetensors")
    name = "vision_model.embeddings.patch_embedding.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[name], c[name])


@pytest.mark.parametrize("arch", ["detr", "yolos"])
def test_detectors_reload_and_detect(arch, request):
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    assert type(processor).__name__.endswith("Pil")
    model = AutoModelForObjectDetection.from_pretrained(model_dir, local_files_only=True,
                                                        attn_implementation="eager").eval()
    twin = fresh_twin(model_dir, type(model))
    inputs = processor(images=images(2), return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        assert_same_outputs(out, twin(**inputs))
    assert out.logits.shape == (2, 10, 6)  # 10 queries / detection tokens, 5 labels + no-object
    assert out.pred_boxes.shape == (2, 10, 4)
    found = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(40, 70)] * 2)
    assert found[0]["boxes"].shape[1] == 4


def test_resnet_backbone_feature_map(tiny_resnet_dir):
    from transformers import AutoImageProcessor, ResNetModel

    processor = AutoImageProcessor.from_pretrained(tiny_resnet_dir, local_files_only=True)
    model = ResNetModel.from_pretrained(tiny_resnet_dir, local_files_only=True).eval()
    inputs = processor(images=images(2), return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        assert_same_outputs(out, fresh_twin(tiny_resnet_dir, ResNetModel)(**inputs))
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    assert out.last_hidden_state.shape == (2, 32, 8, 8)  # stride 8, 2 * hidden channels
