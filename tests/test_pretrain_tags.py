"""Caption tags (pkd.train.pretrain.tags): parsing, golden loss, and a tiny pre-training run
whose saved model holds no tag head."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pkd.errors import PkdError
from pkd.train import pretrain as P
from pkd.train.pretrain.tags import (
    COLORS,
    SHAPES,
    TAG_SCALE,
    TagHead,
    caption_tags,
    tag_loss,
)


def tag_index(color: str, shape: str) -> int:
    return COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)


def test_caption_tags_are_the_named_pairs_of_every_caption_of_an_image():
    tags = caption_tags([
        ["two objects: a small red circle and a large blue square.",
         "there are two objects: a large blue square and a small red circle."],
        ["one object: a small green diamond."],
        ["nothing to see here", "a reddish circle"],  # no pair: an all-zero row
    ])
    assert tags.shape == (3, len(COLORS) * len(SHAPES))
    assert {int(i) for i in tags[0].nonzero()} == {tag_index("red", "circle"),
                                                   tag_index("blue", "square")}
    assert {int(i) for i in tags[1].nonzero()} == {tag_index("green", "diamond")}
    assert tags[2].sum() == 0 and tags.max() == 1


def test_tag_loss_golden_value():
    head = TagHead(2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0] = torch.tensor([3.0, 0.0])  # cos(w_0, e) = e_0 whatever |w_0|
        head.weight[1] = torch.tensor([1.0, 1.0])  # cos = (e_0 + e_1) / sqrt(2)
        head.bias[1] = -1.0
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tags = torch.zeros(2, head.out_features)
    tags[0, 0] = 1.0  # image 0: tag 0, logit s; tag 1, logit s / sqrt 2 - 1 (target 0)
    tags[1, 1] = 1.0  # image 1: tag 0, logit 0 (target 0); tag 1, logit s / sqrt 2 - 1
    s, k = TAG_SCALE, head.out_features
    z1 = s / math.sqrt(2) - 1
    # the other tags have zero weight (cosine 0) and zero bias: logit 0, cost log 2 each
    expected = (math.log1p(math.exp(-s)) + math.log1p(math.exp(z1)) + math.log(2)
                + math.log1p(math.exp(-z1)) + 2 * (k - 2) * math.log(2)) / (2 * k)
    assert float(tag_loss(head, image, tags).detach()) == pytest.approx(expected, rel=1e-6)


@pytest.fixture
def data(caption_data):
    """The shared 24-caption-image benchmark (conftest)."""
    return caption_data


def test_pretrain_with_tags_saves_a_plain_model_and_changes_it(tmp_path, data):
    from safetensors.torch import load_file

    size = P.ModelSize(hidden=32, layers=1, heads=2, patch_size=8, proj_dim=16, vocab_size=200)
    cfg = P.PretrainConfig(data, tmp_path / "plain", size=size, epochs=2, batch_size=8,
                           eval_fraction=0.25, threads=1)
    P.pretrain(cfg)
    metrics = P.pretrain(replace(cfg, out_dir=tmp_path / "tagged", tag_weight=1.0))
    assert all("tag_loss" in e and e["tag_loss"] > 0 for e in metrics["epochs"])
    plain, tagged = load_file(tmp_path / "plain" / "model.safetensors"), load_file(
        tmp_path / "tagged" / "model.safetensors")
    assert plain.keys() == tagged.keys()  # the head is training-only
    assert any(not torch.equal(plain[k], tagged[k]) for k in plain)
    with pytest.raises(PkdError, match="tag_weight must be >= 0"):
        replace(cfg, tag_weight=-1.0).validate()


def test_cli_passes_the_objective_options_and_refuses_bad_ones(tmp_path, capsys, data):
    import json

    from pkd.cli import main

    args = ["pretrain", "--data", str(data), "--epochs", "1", "--batch-size", "8", "--hidden",
            "32", "--layers", "1", "--heads", "2", "--proj-dim", "16", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "m"), "--tag-weight", "0.5",
                 "--swap-negatives", "2", "--swap-weight", "0.25"]) == 0
    saved = json.loads((tmp_path / "m" / "pretrain_metrics.json").read_text())
    assert (saved["config"]["tag_weight"], saved["config"]["swap_negatives"],
            saved["config"]["swap_weight"]) == (0.5, 2, 0.25)
    assert {"tag_loss", "swap_loss"} <= set(saved["epochs"][0])
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "n"), "--tag-weight", "-1"]) == 2
    err = capsys.readouterr().err
    assert "tag_weight must be >= 0" in err and err.count("\n") == 1
    assert not (tmp_path / "n").exists()
