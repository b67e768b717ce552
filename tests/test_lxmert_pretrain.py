"""LXMERT pre-training of F0 (``pkd pretrain --family lxmert``): the tiny builder, masking, hard
negatives, the loss by hand, a short run (loss, saved folder, reproducible held-out metrics,
determinism, the CLI) and the missing-regions error, on a tiny synthetic benchmark whose regions
store encodes each object's colour / shape / size (``train_fixtures.make_regions_store``)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import FEATURE_DIM, make_regions_store

from pkd.errors import PkdError
from pkd.train.pretrain import lxmert as L
from pkd.train.pretrain import lxmert_data as D

TINY = L.LxmertSize(hidden=32, l_layers=1, x_layers=1, r_layers=1, heads=2, vocab_size=200)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def regions(caption_data, tmp_path_factory) -> Path:
    """A regions store of every image of the shared tiny benchmark (24 caption images)."""
    return make_regions_store(caption_data, tmp_path_factory.mktemp("lxmert") / "regions.zarr")


def tiny_config(data: Path, regions: Path, out: Path, **changes) -> L.LxmertPretrainConfig:
    cfg = L.LxmertPretrainConfig(data, regions, out, size=TINY, epochs=4, batch_size=8, lr=2e-3,
                                 eval_fraction=0.25, threads=1)
    return replace(cfg, **changes)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


# --------------------------------------------------------------------------- builder


def test_tiny_lxmert_round_trips(tmp_path):
    from transformers import AutoTokenizer, LxmertForPreTraining

    from pkd.hf.tiny_models import build_tiny_lxmert

    folder = build_tiny_lxmert(tmp_path, hidden=32, l_layers=1, x_layers=1, r_layers=1,
                               heads=2, visual_feat_dim=8)
    model = LxmertForPreTraining.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.mask_token == "[MASK]" and model.config.vocab_size == len(tokenizer)
    assert model.config.intermediate_size == 128 and not model.config.task_qa
    enc = tokenizer(["what color is the [MASK] ?", "a red circle"], padding=True,
                    return_tensors="pt")
    assert (enc["input_ids"] == tokenizer.mask_token_id).sum() == 1
    g = torch.Generator().manual_seed(0)
    visual = {"visual_feats": torch.randn(2, 3, 8, generator=g),
              "visual_pos": torch.rand(2, 3, 4, generator=g)}
    with torch.no_grad():
        out = model(**enc, **visual)
        model.save_pretrained(tmp_path / "again")
        again = LxmertForPreTraining.from_pretrained(tmp_path / "again").eval()(**enc, **visual)
    assert out.prediction_logits.shape == (2, enc["input_ids"].shape[1], len(tokenizer))
    assert out.cross_relationship_score.shape == (2, 2)
    assert torch.equal(out.prediction_logits, again.prediction_logits)
    assert torch.equal(out.cross_relationship_score, again.cross_relationship_score)


# --------------------------------------------------------------------------- losses by hand


def test_loss_formula_hand_computed():
    logits = torch.zeros(2, 2, 3)  # (B, L, V)
    logits[0, 1] = torch.tensor([0.0, math.log(2), 0.0])  # label 1: p = 2/4 -> CE = log 2
    labels = torch.tensor([[-100, 1], [2, -100]])  # [1, 0]: uniform, label 2 -> CE = log 3
    score = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # row 1 label 0: p = 3/4
    matched = torch.tensor([True, False])
    got = L.lxmert_losses(logits, score, labels, matched, itm_weight=0.5)
    mlm = (math.log(2) + math.log(3)) / 2
    itm = (math.log(2) + math.log(4 / 3)) / 2
    assert got["mlm_loss"].item() == pytest.approx(mlm, abs=1e-6)
    assert got["itm_loss"].item() == pytest.approx(itm, abs=1e-6)
    assert got["loss"].item() == pytest.approx(mlm + 0.5 * itm, abs=1e-6)
    logits.requires_grad_(True)
    none = L.lxmert_losses(logits, score, torch.full((2, 2), -100), matched)
    none["loss"].backward()  # no labelled token: L_mlm = 0, still differentiable
    assert none["mlm_loss"].item() == 0.0 and logits.grad is not None


def test_itm_metrics_hand_computed():
    true = torch.tensor([2.0, -1.0, 0.5, 3.0])  # ITM margins s_1 - s_0 of the true captions
    false = torch.tensor([-1.0, -2.0, 1.0, 0.0])  # ... and of their swapped copies
    named = torch.tensor([False, True, True, False])
    got = L.itm_metrics(true, false, named)
    # true > 0: 3 of 4; false <= 0: 3 of 4 -> 6 / 8; true > false: rows 0, 1, 3
    assert got["itm_accuracy"] == pytest.approx(75.0)
    assert got["itm_pairwise"] == pytest.approx(75.0)
    assert got["heldout_pairs"] == pytest.approx(50.0) and got["heldout_pairs_n"] == 2
    assert L.itm_metrics(true, false, torch.zeros(4, dtype=torch.bool))["heldout_pairs"] is None


# --------------------------------------------------------------------------- masking, pairs


def test_masking_labels_only_on_masked_matched_positions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (400, 12), generator=g)
    maskable = torch.rand(ids.shape, generator=g) < 0.8
    attribute = torch.rand(ids.shape, generator=g) < 0.3
    matched = torch.arange(400) % 2 == 0
    masking = D.Masking(1.0, 1.0, mask_id=4, first_word_id=5, vocab_size=50)
    masked, labels = D.mask_tokens(ids, maskable, attribute, matched, masking, g)
    labelled = labels != -100
    assert torch.equal(labelled, maskable & matched[:, None])  # p = 1: every maskable token
    assert torch.equal(labels[labelled], ids[labelled])
    assert torch.equal(masked[~maskable], ids[~maskable])  # protected / specials untouched
    chosen = masked[maskable]
    share_mask = (chosen == 4).float().mean().item()
    assert 0.75 < share_mask < 0.85  # 80% [MASK], the rest random or kept
    assert ((chosen >= 5) & (chosen < 50)).sum() + (chosen == 4).sum() == len(chosen)
    only_attributes = D.Masking(0.0, 1.0, mask_id=4, first_word_id=5, vocab_size=50)
    _, labels = D.mask_tokens(ids, maskable, attribute, matched, only_attributes, g)
    assert torch.equal(labels != -100, maskable & attribute & matched[:, None])


def test_hard_negatives_differ_in_exactly_one_attribute_word(caption_data, tmp_path):
    from transformers import AutoTokenizer

    from pkd.hf.tiny_models import build_tiny_lxmert

    _, captions = D.caption_images(caption_data)
    texts = [c for caps in captions for c in caps]
    g = torch.Generator().manual_seed(0)
    pairs, matched, spans = D.itm_pairs(texts, [set()] * len(texts), texts, 0.999, 1.0, g)
    assert not matched.any()
    group_of = {w: name for name, words in D.ATTRIBUTE_GROUPS.items() for w in words}
    new_words = []
    for caption, negative, (start, end) in zip(texts, pairs, spans, strict=True):
        a, b = re.findall(r"\w+|\S", caption), re.findall(r"\w+|\S", negative)
        differ = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        assert len(differ) == 1 and group_of[differ[0][0]] == group_of[differ[0][1]] != "count"
        word = [m for m in re.finditer(r"\w+", negative) if m.start() <= start < m.end()]
        assert word[0].group() == differ[0][1] and end <= word[0].end()  # span in the new word
        new_words.append(differ[0][1])
    own = [set(captions[i // 2]) for i in range(len(texts))]
    easy, _, none = D.itm_pairs(texts, own, texts, 0.999, 0.0, g)
    assert all(e not in mine for e, mine in zip(easy, own, strict=True)) and none == [None] * 48
    folder = build_tiny_lxmert(tmp_path, D.tokenizer_texts(
        caption_data, captions), hidden=32, l_layers=1, x_layers=1, r_layers=1, heads=2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    attribute_ids = torch.cat(list(D.group_token_ids(tokenizer).values()))
    enc = D.encode_texts(tokenizer, pairs[:4], spans[:4], attribute_ids, 64)
    for b in range(4):  # the swapped word is the one attribute token never masked
        kept = enc["attribute"][b] & ~enc["maskable"][b] & (enc["attention_mask"][b] == 1)
        assert kept.sum() == 1
        assert tokenizer.convert_ids_to_tokens(int(enc["input_ids"][b][kept])) == new_words[b]
    assert not enc["maskable"][:, 0].any()  # [CLS] never masked


# --------------------------------------------------------------------------- the stage


def test_short_pretraining_saves_loadable_reproducible_model(caption_data, regions, tmp_path):
    import typer
    from transformers import AutoTokenizer, LxmertForPreTraining
    from typer.testing import CliRunner

    from pkd.cli.pretrain import register

    cfg = tiny_config(caption_data, regions, tmp_path / "a")
    metrics = L.pretrain_lxmert(cfg)
    losses = [e["loss"] for e in metrics["epochs"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    saved = json.loads((cfg.out_dir / "pretrain_metrics.json").read_text())
    assert saved["heldout"] == metrics["heldout"] and saved["family"] == "lxmert"
    h = saved["heldout"]
    assert h["images"] == 6 and h["captions"] == 12 and h["mlm_color_n"] > 0
    assert h["heldout_combos"] and h["heldout_pairs_n"] >= 0
    assert set(h) >= {"itm_accuracy", "itm_pairwise", "heldout_pairs", "mlm_shape_accuracy",
                      "mlm_count_accuracy"}
    config = json.loads((cfg.out_dir / "config.json").read_text())
    assert config["pkd_lxmert_pretrain"]["heldout_split"] == {"seed": 0, "eval_fraction": 0.25}
    assert not list(tmp_path.glob(".a.*"))  # staging folder removed

    model = LxmertForPreTraining.from_pretrained(cfg.out_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cfg.out_dir, local_files_only=True)
    heldout = L.load_heldout_captions(caption_data, regions, cfg.seed, cfg.eval_fraction)
    again = L.caption_metrics(model, tokenizer, heldout)
    assert again == h  # a later stage reproduces the held-out numbers
    train_ids, heldout_ids = L.heldout_split(caption_data, cfg.seed, cfg.eval_fraction)
    assert heldout.images.image_ids == heldout_ids and not set(train_ids) & set(heldout_ids)

    L.pretrain_lxmert(replace(cfg, out_dir=tmp_path / "b"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, one thread: identical weights

    app = typer.Typer()
    register(app)
    args = ["--family", "lxmert", "--regions", str(regions), "--data", str(caption_data),
            "--out", str(tmp_path / "c"), "--epochs", "1", "--batch-size", "8", "--hidden", "32",
            "--heads", "2", "--l-layers", "1", "--x-layers", "1", "--r-layers", "1",
            "--threads", "1", "--seed", "1"]
    result = CliRunner().invoke(app, ["pretrain", *args])
    assert result.exit_code == 0, result.output
    assert "ITM caption vs swapped" in result.output and "MLM color word" in result.output
    c = weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)
    result = CliRunner().invoke(app, ["pretrain", *args[2:]])
    assert result.exit_code != 0 and "--regions" in result.output  # clip reads no regions


def test_heldout_split_depends_on_data_seed_and_fraction_only(caption_data):
    first = L.heldout_split(caption_data, 3, 0.25)
    assert first == L.heldout_split(caption_data, 3, 0.25)
    assert first != L.heldout_split(caption_data, 4, 0.25)
    ids, _ = D.caption_images(caption_data)
    assert sorted(first[0] + first[1]) == sorted(ids) and len(first[1]) == 6


def write_store(path: Path, ids: list[int], ok: np.ndarray | None = None) -> Path:
    from pkd.stores import ArraySpec, StoreSpec, StoreWriter

    spec = StoreSpec(kind="regions", key="image_id",
                     arrays=(ArraySpec("region_features", (2, FEATURE_DIM), "float16"),
                             ArraySpec("region_geometry", (2, 6), "float32"),
                             ArraySpec("num_regions", (), "int32")),
                     items_per_chunk=8, items_per_shard=32)
    with StoreWriter(path, spec, ids) as writer:
        for k in range(writer.n_shards):
            n = len(writer.shard_ids(k))
            arrays = {a.name: np.ones((n, *a.item_shape), a.dtype) for a in spec.arrays}
            writer.write_shard(k, arrays, ok=None if ok is None else ok[:n])
    return path


def test_missing_or_failed_caption_regions_are_one_line_errors(caption_data, tmp_path):
    ids, _ = D.caption_images(caption_data)
    partial = write_store(tmp_path / "partial.zarr", ids[:20])
    cfg = tiny_config(caption_data, partial, tmp_path / "out")
    with pytest.raises(PkdError) as err:
        L.pretrain_lxmert(cfg)
    message = str(err.value)
    assert "\n" not in message and str(partial) in message
    assert "4 of 24 caption images missing" in message and "--captions" in message
    failed = write_store(tmp_path / "failed.zarr", ids, ok=np.arange(len(ids)) != 3)
    with pytest.raises(PkdError, match=r"failed.zarr: 1 of 24 caption images"):
        L.pretrain_lxmert(replace(cfg, regions=failed))
    assert not (tmp_path / "out").exists()


def test_config_problems_are_one_line_errors(caption_data, regions, tmp_path):
    for change in ({"itm_negative_share": 1.0}, {"hard_negative_share": 1.5},
                   {"mlm_probability": -0.1}, {"size": replace(TINY, heads=3)}):
        with pytest.raises(PkdError, match=r"^LxmertPretrainConfig: [^\n]+$"):
            L.pretrain_lxmert(tiny_config(caption_data, regions, tmp_path / "x", **change))
