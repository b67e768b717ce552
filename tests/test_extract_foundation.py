"""``pkd extract foundation`` on the synthetic benchmark: every stored row equals a direct forward
pass of the Hugging Face model on the same image / text (float16 storage tolerance), keyed by id."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pkd.data.images import load_rgb
from pkd.stores import FeatureStore

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import SHARD, extract_foundation  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, ... (session fixtures)

F16 = {"rtol": 2e-3, "atol": 2e-3}  # float16 storage (and batch vs single-image) tolerance
L = 32  # the CLI's default --max-text-len


@pytest.fixture(scope="module")
def extracted(family, request, synth_data, tmp_path_factory):
    """(model dir, output folder) of one extraction of images, questions and captions."""
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    out = tmp_path_factory.mktemp(f"foundation_{family}")
    assert extract_foundation(synth_data, model_dir, out, "--captions", "--batch-size", "8") == 0
    return model_dir, out


@pytest.fixture(scope="module")
def reference(family, extracted):
    """The HF model, tokenizer and image processor, loaded independently of pkd."""
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval, CLIPModel

    model_dir = extracted[0]
    cls = CLIPModel if family == "clip" else BlipForImageTextRetrieval
    model = cls.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
    return (model.eval(), AutoTokenizer.from_pretrained(model_dir, local_files_only=True),
            AutoImageProcessor.from_pretrained(model_dir, local_files_only=True))


@torch.no_grad()
def direct_image(family, reference, image):
    """(vision tokens (P, d_v), unit image embedding (d_e,)) of one image."""
    model, _, processor = reference
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    if family == "clip":
        out = model.get_image_features(pixel_values=pixels)
        tokens, embeds = out.last_hidden_state, out.pooler_output
    else:
        tokens = model.vision_model(pixel_values=pixels).last_hidden_state
        embeds = model.vision_proj(tokens[:, 0])
    return tokens[0].numpy(), F.normalize(embeds, dim=-1)[0].numpy()


@torch.no_grad()
def direct_text(family, reference, text):
    """(input ids (L,), num tokens, text tokens (L, d_t) zero past num tokens, embedding)."""
    model, tokenizer, _ = reference
    enc = tokenizer([text], padding="max_length", truncation=True, max_length=L,
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if family == "clip":
        out = model.get_text_features(input_ids=ids, attention_mask=mask)
        tokens, embeds = out.last_hidden_state, out.pooler_output
    else:
        tokens = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        embeds = model.text_proj(tokens[:, 0])
    tokens = tokens * mask[..., None]
    embeds = F.normalize(embeds, dim=-1)
    return ids[0].numpy(), int(mask.sum()), tokens[0].numpy(), embeds[0].numpy()


def random_ids(store: FeatureStore, n: int, seed: int = 0) -> np.ndarray:
    """``n`` ids of the store in random order (not row order)."""
    return np.random.default_rng(seed).permutation(store.ids)[:n]


def test_image_store_equals_direct_forward(family, extracted, reference, synth_data):
    store = FeatureStore.open(extracted[1] / "foundation_images.zarr", kind="foundation_image")
    assert store.complete and store.ok.all() and store.n_items == 48 + 8  # VQA + caption images
    assert store.spec.producer["family"] == family
    assert len(store.spec.producer["weights_sha256"]) == 64
    ids = random_ids(store, 6)
    got = store.read(store.rows_of(ids))
    for i, image_id in enumerate(ids):
        image = load_rgb(synth_data / "images" / f"{image_id:012d}.png")
        tokens, embeds = direct_image(family, reference, image)
        np.testing.assert_allclose(got["vision_tokens"][i].astype(np.float32), tokens, **F16)
        np.testing.assert_allclose(got["image_embeds"][i], embeds, **F16)


def test_question_store_equals_direct_forward(family, extracted, reference, synth_data):
    store = FeatureStore.open(extracted[1] / "foundation_questions.zarr", kind="foundation_text")
    questions = {q["question_id"]: q["question"] for split in ("train", "val", "test", "test_iid")
                 for q in json.loads((synth_data / f"synth_{split}_questions.json").read_text())
                 ["questions"]}
    assert sorted(store.ids.tolist()) == sorted(questions) and store.ok.all()
    assert store.spec.key == "question_id" and store.spec.dims["max_text_len"] == L
    ids = random_ids(store, 5, seed=1)
    got = store.read(store.rows_of(ids))
    for i, qid in enumerate(ids):
        input_ids, n, tokens, embeds = direct_text(family, reference, questions[int(qid)])
        np.testing.assert_array_equal(got["input_ids"][i], input_ids)
        assert got["num_tokens"][i] == n
        np.testing.assert_allclose(got["text_tokens"][i].astype(np.float32), tokens, **F16)
        np.testing.assert_allclose(got["text_embeds"][i], embeds, **F16)


def test_caption_store_keyed_by_caption_id(family, extracted, reference, synth_data):
    store = FeatureStore.open(extracted[1] / "foundation_captions.zarr")
    captions = {a["id"]: a["caption"]
                for a in json.loads((synth_data / "captions.json").read_text())["annotations"]}
    assert store.ids.tolist() == sorted(captions) and store.n_items == 16
    qid = int(random_ids(store, 1, seed=2)[0])
    got = store.read(store.rows_of([qid]))
    _, n, _, embeds = direct_text(family, reference, captions[qid])
    assert got["num_tokens"][0] == n
    np.testing.assert_allclose(got["text_embeds"][0], embeds, **F16)


def test_rerun_skips_every_shard(family, extracted, synth_data, capsys):
    model_dir, out = extracted
    capsys.readouterr()
    assert extract_foundation(synth_data, model_dir, out, "--captions", "--batch-size", "8") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(" 0 shards run" in line for line in lines), lines
    assert f"{-(-56 // int(SHARD))} skipped (done)" in lines[0]
