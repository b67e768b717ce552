"""``model.encoder: hf:PATH``: a transformers BERT checkpoint as the fusion model's encoder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pkd.errors import PkdError
from pkd.hf.tiny_models import build_tiny_bert
from pkd.train.config import ModelConfig
from pkd.train.models import build_model
from pkd.train.models.hf_encoder import hf_source

SIZES = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


def fusion(bert_dir, **over) -> torch.nn.Module:
    cfg = ModelConfig(arch="fusion", encoder=f"hf:{bert_dir}", dropout=0.0, **{**SIZES, **over})
    return build_model(cfg, num_words=20, num_answers=7, region_dim=8)


def batch(b: int = 3, words: int = 5, regions: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 20, (b, words), generator=g)
    tokens[0, 3:] = 0  # a short question
    region_mask = torch.ones(b, regions, dtype=torch.bool)
    region_mask[1, 2:] = False
    return {"question_tokens": tokens, "question_mask": tokens > 0,
            "region_features": torch.randn(b, regions, 8, generator=g),
            "region_geometry": torch.rand(b, regions, 6, generator=g), "region_mask": region_mask}


def test_pretrained_weights_are_loaded_not_reinitialised(bert_dir):
    model = fusion(bert_dir)
    saved = load_file(str(bert_dir / "model.safetensors"))
    mine = {k.removeprefix("hf_encoder.model."): v for k, v in model.state_dict().items()
            if k.startswith("hf_encoder.model.")}
    shared = [k for k in saved if k in mine]
    assert len(shared) > 10 and all(torch.equal(saved[k], mine[k]) for k in shared)
    assert len(model.layers) == 0 and model.num_layers == 2 and model.num_heads == 4


def test_outputs_attentions_and_gradients(bert_dir):
    model = fusion(bert_dir).eval()
    b = batch()
    out = model(b, output_attentions=True, output_hidden_states=True)
    t = 1 + 5 + 1 + 4
    assert out["logits"].shape == (3, 7) and out["token_mask"].shape == (3, t)
    assert len(out["attentions"]) == 2 and out["attentions"][0].shape == (3, 4, t, t)
    assert len(out["hidden_states"]) == 3 and out["hidden_states"][-1].shape == (3, t, 32)
    probs = out["attentions"][1]
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, t))
    padded = ~out["token_mask"]  # padded keys get (numerically) no attention
    assert probs.permute(0, 2, 1, 3)[padded[:, None, None, :].expand(3, t, 4, t)].abs().max() < 1e-6
    # padding does not change the valid tokens' output
    b2 = {k: v.clone() for k, v in b.items()}
    b2["region_features"][1, 2:] = 99.0
    again = model(b2)["logits"]
    torch.testing.assert_close(again, out["logits"])
    out["logits"].sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("hf_encoder.")}
    # every encoder weight is trained (the unused pooler is dropped); word embeddings are BERT's
    # vocabulary, which inputs_embeds bypasses
    missing = [n for n, g in grads.items() if g is None and "word_embeddings" not in n]
    assert grads and not missing, missing
    assert not model.hf_encoder.model.get_input_embeddings().weight.requires_grad
    assert sum(float(g.abs().sum()) for g in grads.values() if g is not None) > 0


def test_sizes_must_match_the_checkpoint(bert_dir):
    with pytest.raises(PkdError, match=r"config says hidden_size 48 \(the checkpoint has 32\)"):
        fusion(bert_dir, hidden_size=48, num_heads=4)
    with pytest.raises(PkdError, match=r"num_layers 3 \(the checkpoint has 2\); set them"):
        fusion(bert_dir, num_layers=3)


def test_bad_encoder_values_are_one_line_errors(tmp_path):
    assert hf_source("native") is None and hf_source("hf:bert-base-uncased") == "bert-base-uncased"
    for bad in ("bert", "hf:"):
        with pytest.raises(PkdError, match="expected 'native' or 'hf:PATH'"):
            hf_source(bad)
    with pytest.raises(PkdError, match="not a model directory") as err:
        fusion(tmp_path / "nowhere" / "deep" / "path")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkdError, match=r"hf:.*empty: cannot load the encoder") as err:
        fusion(tmp_path / "empty")
    assert "\n" not in str(err.value)
    with pytest.raises(PkdError, match="needs model.arch=fusion"):
        build_model(ModelConfig(arch="updn", encoder="hf:x"), 20, 7, 8)
