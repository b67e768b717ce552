"""Tag pre-training then a locked image tower (pkd.train.pretrain.tag_pretrain): the tags parsed
from captions, stage A learning them, stage B leaving the locked tower untouched, the options on
the CLI and in the config checks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from pkd.errors import PkdError
from pkd.train import pretrain as P
from pkd.train.pretrain.tag_pretrain import (
    COUNTS,
    N_PAIRS,
    N_TAGS,
    SHAPES,
    SIZES,
    object_tags,
    pair_index,
    tag_index,
)

TINY = P.ModelSize(hidden=32, layers=1, heads=2, patch_size=8, proj_dim=16, vocab_size=200)


@pytest.fixture
def data(caption_data):
    """The shared 24-caption-image benchmark (conftest)."""
    return caption_data


def count_tag(word: str) -> int:
    return N_TAGS - len(COUNTS) + COUNTS.index(word)


def test_object_tags_are_every_named_triple_and_the_count():
    tags = object_tags([
        ["two objects: a small red circle and a large blue square.",
         "there are two objects: a large blue square and a small red circle."],
        ["one object: a small green diamond."],
        ["nothing here", "a red circle"],  # no size: no triple, no count word: an all-zero row
    ])
    assert tags.shape == (3, 6 * len(SHAPES) * (1 + len(SIZES)) + len(COUNTS)) == (3, N_TAGS)
    assert {int(i) for i in tags[0].nonzero()} == {
        pair_index("red", "circle"), pair_index("blue", "square"),
        tag_index("small", "red", "circle"), tag_index("large", "blue", "square"),
        count_tag("two")}
    assert {int(i) for i in tags[1].nonzero()} == {pair_index("green", "diamond"),
                                                   tag_index("small", "green", "diamond"),
                                                   count_tag("one")}
    assert tags[2].sum() == 0 and tags.max() == 1
    colors = P.PROBE_WORDS["color"]
    columns = ({pair_index(c, s) for c in colors for s in SHAPES}
               | {tag_index(z, c, s) for z in SIZES for c in colors for s in SHAPES})
    assert len(columns) == N_TAGS - len(COUNTS) and max(columns) < N_TAGS - len(COUNTS)
    assert max(pair_index(c, s) for c in colors for s in SHAPES) < N_PAIRS


def test_corpus_captions_yield_one_count_and_a_triple_per_object(data):
    corpus = P.load_corpus(data)
    tags = object_tags(corpus.captions)
    assert (tags[:, -len(COUNTS):].sum(1) == 1).all()  # every caption states its count
    counts = tags[:, -len(COUNTS):].argmax(1) + 1  # "one" .. "four"
    triples = tags[:, N_PAIRS:-len(COUNTS)].sum(1)
    assert (triples <= counts).all() and (triples >= 1).all()  # equal objects share a triple
    assert (tags[:, :N_PAIRS].sum(1) <= triples).all()  # small and large red circles: one pair


def tiny(data, out, **changes) -> P.PretrainConfig:
    cfg = P.PretrainConfig(data, out, size=TINY, epochs=1, batch_size=8, lr=2e-3,
                           eval_fraction=0.25, threads=1)
    return replace(cfg, **changes)


def tower(folder, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(folder / "model.safetensors").items()
            if k.startswith(prefix)}


def test_stage_a_learns_the_tags_and_the_locked_tower_stays_put(tmp_path, data):
    one = P.pretrain(tiny(data, tmp_path / "one", tag_epochs=12, lock_vision=True, epochs=1))
    two = P.pretrain(tiny(data, tmp_path / "two", tag_epochs=12, lock_vision=True, epochs=3))
    P.pretrain(tiny(data, tmp_path / "free", tag_epochs=12, epochs=1))
    losses = [e["tag_loss"] for e in one["tag_pretraining"]]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]  # 18 images: it fits them
    assert one["tag_pretraining"] == two["tag_pretraining"]  # stage A: seeded, same config
    v1, v2, vf = (tower(tmp_path / name, "vision_model.") for name in ("one", "two", "free"))
    assert all(torch.equal(v1[k], v2[k]) for k in v1)  # locked whatever stage B's length
    assert any(not torch.equal(v1[k], vf[k]) for k in v1)  # unlocked: the ITC moves it
    t1, t2 = (tower(tmp_path / name, "text_model.") for name in ("one", "two"))
    assert any(not torch.equal(t1[k], t2[k]) for k in t1)  # while the text tower trains
    plain = P.pretrain(tiny(data, tmp_path / "plain"))
    assert plain["tag_pretraining"] == []
    assert (load_file(tmp_path / "plain" / "model.safetensors").keys()
            == load_file(tmp_path / "one" / "model.safetensors").keys())  # no head saved


def test_stage_a_decays_matrices_not_gains(tmp_path, data):
    """Stage A's AdamW is the ITC's: weight decay on matrices only (a huge decay shrinks the
    tower's weight matrices while the layer-norm gains, initialised at 1, stay there)."""
    P.pretrain(tiny(data, tmp_path / "wd", tag_epochs=3, lock_vision=True, weight_decay=50.0))
    vision = tower(tmp_path / "wd", "vision_model.")
    gains = [v for k, v in vision.items()
             if k.endswith(".weight") and ("layer_norm" in k or "layrnorm" in k)]
    assert gains and all((g - 1).abs().max() < 0.05 for g in gains)
    fresh = P.pretrain(tiny(data, tmp_path / "no-wd", tag_epochs=3, lock_vision=True,
                            weight_decay=0.0))
    assert fresh["tag_pretraining"]
    q_wd, q_free = (tower(tmp_path / n, "vision_model.")[
        "vision_model.encoder.layers.0.self_attn.q_proj.weight"] for n in ("wd", "no-wd"))
    assert q_wd.norm() < 0.9 * q_free.norm()  # the decay did act on the matrices


def test_stage_a_runs_for_blip(tmp_path, data):
    metrics = P.pretrain(tiny(data, tmp_path / "blip", family="blip", tag_epochs=1,
                              lock_vision=True))
    assert metrics["tag_pretraining"][0]["tag_loss"] > 0


@pytest.mark.parametrize(("changes", "problem"), [
    ({"tag_epochs": -1}, "tag_epochs must be >= 0"),
    ({"lock_vision": True}, "lock_vision needs tag_epochs > 0"),
])
def test_bad_stage_settings_are_refused(tmp_path, data, changes, problem):
    with pytest.raises(PkdError, match=problem):
        tiny(data, tmp_path / "m", **changes).validate()


def test_cli_passes_the_stage_options_and_refuses_a_lone_lock(tmp_path, capsys, data):
    from pkd.cli import main

    args = ["pretrain", "--data", str(data), "--epochs", "1", "--batch-size", "8", "--hidden",
            "32", "--layers", "1", "--heads", "2", "--proj-dim", "16", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "m"), "--tag-epochs", "2",
                 "--lock-vision"]) == 0
    saved = json.loads((tmp_path / "m" / "pretrain_metrics.json").read_text())
    assert (saved["config"]["tag_epochs"], saved["config"]["lock_vision"]) == (2, True)
    assert len(saved["tag_pretraining"]) == 2
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "n"), "--lock-vision"]) == 2
    err = capsys.readouterr().err
    assert "lock_vision needs tag_epochs > 0" in err and err.count("\n") == 1
    assert not (tmp_path / "n").exists()
