"""``pkd pretrain``: tiny runs on a tiny synthetic benchmark, save/load through the foundation
loader, determinism, and hand-computed retrieval values (the losses: test_loss_pretrain.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pkd.errors import PkdError
from pkd.train import pretrain as P

TINY = P.ModelSize(hidden=32, layers=1, heads=2, patch_size=8, proj_dim=16, vocab_size=200)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """40 caption images (80 captions) plus a few VQA questions, 64 px."""
    from pkd.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(train_images=4, val_images=2, test_images=2, test_iid_images=2,
                         caption_images=40, pilot_scenes=100), out)
    return out


def tiny_config(data: Path, out: Path, **changes) -> P.PretrainConfig:
    cfg = P.PretrainConfig(data, out, size=TINY, epochs=3, batch_size=16, lr=2e-3,
                           eval_fraction=0.25, threads=1)
    return replace(cfg, **changes)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


# --------------------------------------------------------------------------- hand-computed


def test_retrieval_recall_hand_computed():
    # 6 images (rows) x 6 texts (columns); the correct text of image i is text i. Rank of the
    # diagonal value within its row (i2t) and within its column (t2i), no ties anywhere:
    sim = torch.tensor([
        [0.90, 0.11, 0.22, 0.33, 0.44, 0.55],  # row 1st of 6 | column .90 .81 .12 .13 .01 .61: 1st
        [0.81, 0.21, 0.72, 0.63, 0.54, 0.45],  # row 6th      | column .11 .21 .32 .23 .14 .52: 4th
        [0.12, 0.32, 0.50, 0.93, 0.04, 0.35],  # row 2nd      | column .22 .72 .50 .34 .24 .42: 2nd
        [0.13, 0.23, 0.34, 0.40, 0.51, 0.66],  # row 3rd      | column .33 .63 .93 .40 .30 .36: 3rd
        [0.01, 0.14, 0.24, 0.30, 0.95, 0.46],  # row 1st      | column .44 .54 .04 .51 .95 .25: 1st
        [0.61, 0.52, 0.42, 0.36, 0.25, 0.15],  # row 6th      | column .55 .45 .35 .66 .46 .15: 6th
    ])
    # i2t ranks 1 6 2 3 1 6 -> R@1 2/6, R@5 4/6; t2i ranks 1 4 2 3 1 6 -> R@1 2/6, R@5 5/6
    got = P.retrieval_recall(sim)
    assert got["i2t_r1"] == pytest.approx(100 * 2 / 6)
    assert got["i2t_r5"] == pytest.approx(100 * 4 / 6)
    assert got["t2i_r1"] == pytest.approx(100 * 2 / 6)
    assert got["t2i_r5"] == pytest.approx(100 * 5 / 6)


def test_retrieval_recall_counts_duplicate_captions_as_hits():
    sim = torch.tensor([[0.1, 0.9], [0.2, 0.8]])  # both images prefer text 1
    assert P.retrieval_recall(sim, ks=(1,))["i2t_r1"] == pytest.approx(50.0)
    both = torch.ones(2, 2, dtype=torch.bool)  # texts 0 and 1 are the same caption
    got = P.retrieval_recall(sim, both, ks=(1,))
    assert got["i2t_r1"] == pytest.approx(100.0) and got["t2i_r1"] == pytest.approx(100.0)


def test_probe_variants_replace_one_occurrence_at_a_time():
    caption = "two objects: a small red circle and a large blue square."
    groups = P.probe_variants(caption, ("red", "blue", "green"))
    assert [true for _, true in groups] == [0, 1]
    texts, true = groups[1]
    assert texts[true] == caption
    assert texts[2] == "two objects: a small red circle and a large green square."
    assert P.probe_variants("no colour here.", ("red",)) == []


def test_relation_and_count_probes_replace_their_words():
    from pkd.train.pretrain.evaluate import ZERO_SHOT_PROBES as PROBE_WORDS

    caption = ("two objects: a small red circle and a large blue square. the blue square is left "
               "of the red circle.")
    (texts, true), = P.probe_variants(caption, PROBE_WORDS["relation"])
    assert (true, texts[0]) == (0, caption) and len(texts) == 4  # left of, right of, above, below
    assert texts[1].endswith("the blue square is right of the red circle.")
    assert texts[3].endswith("the blue square is below the red circle.")
    (counts, k), = P.probe_variants(caption, PROBE_WORDS["count"])
    assert counts[k] == caption and counts[0].startswith("one objects:")


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("family", ["clip", "blip"])
def test_pixel_normalizer_equals_image_processor(synth_dir, tmp_path, family):
    from pkd.data.images import load_rgb

    corpus = P.load_corpus(synth_dir)
    assert corpus.pixels.shape == (40, 3, 64, 64) and corpus.pixels.dtype == torch.uint8
    assert corpus.questions and len(corpus.captions[0]) == 2
    cfg = tiny_config(synth_dir, tmp_path / "m", family=family)
    _, _, processor = P.build_model(cfg, ["a red circle"], 64, tmp_path / "init")
    files = sorted((synth_dir / "images").glob("0000050000*.png"))[:3]
    expected = processor(images=[load_rgb(f) for f in files], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(P.PixelNormalizer(processor)(corpus.pixels[:3]), expected,
                               atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("family", ["clip", "blip"])
def test_saved_model_loads_as_foundation_with_same_scores(synth_dir, tmp_path, family):
    from pkd.pipeline.foundation import FoundationSpec, load_foundation, match_scores

    cfg = tiny_config(synth_dir, tmp_path / "model", family=family, epochs=1)
    corpus = P.load_corpus(synth_dir)
    texts = [c for caps in corpus.captions for c in caps] + corpus.questions
    model, tokenizer, processor = P.build_model(cfg, texts, 64, tmp_path / "init")
    tokens = P.tokenize_captions(corpus, tokenizer, TINY.max_positions)
    P.fit_epochs(model, cfg, corpus.pixels, tokens, torch.arange(40),
                 P.PixelNormalizer(processor))
    P.save_model(model, tmp_path / "init", tmp_path / "staging", cfg.out_dir, {"x": 1})
    assert not (tmp_path / "staging").exists()

    fm = load_foundation(FoundationSpec(str(cfg.out_dir), token_dtype="float32"))
    assert fm.family == family
    captions = [caps[0] for caps in corpus.captions[:6]][::-1]  # mismatched and matched pairs
    captions[5] = corpus.captions[5][0]
    images = fm.encode_images([processor_image(synth_dir, i) for i in corpus.image_ids[:6]])
    encoded = fm.encode_texts(captions)
    cached = match_scores(fm, torch.from_numpy(images["vision_tokens"]),
                          torch.from_numpy(encoded["input_ids"]),
                          torch.from_numpy(encoded["num_tokens"]))
    enc = tokenizer(captions, padding="longest", return_tensors="pt")
    live = P.pair_scores(model.eval(), family, P.PixelNormalizer(processor)(corpus.pixels[:6]),
                         enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(cached, live, atol=1e-4, rtol=1e-4)


def processor_image(data: Path, image_id: int):
    from pkd.data.images import load_rgb

    return load_rgb(data / "images" / f"{image_id:012d}.png")


def test_pretrain_run_metrics_loss_and_determinism(synth_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from pkd.cli.pretrain import register

    cfg = tiny_config(synth_dir, tmp_path / "a")
    metrics = P.pretrain(cfg)
    saved = json.loads((cfg.out_dir / P.METRICS_FILE).read_text())
    assert saved["retrieval"] == metrics["retrieval"] and saved["family"] == "clip"
    assert set(saved["retrieval"]) >= {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "chance_r1"}
    assert set(saved["probes"]) == {"color", "shape", "size", "count", "relation"}
    assert saved["probes"]["relation"]["n"] == 0  # this corpus states no relation
    assert saved["probes"]["color"]["n"] > 0 and saved["probes"]["color"]["chance"] == 100 / 6
    assert saved["data"]["heldout_images"] == 10 and saved["seconds"] > 0
    assert saved["config"]["size"]["hidden"] == 32
    losses = [e["loss"] for e in saved["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not list(tmp_path.glob(".a.*"))  # staging folders removed

    app = typer.Typer()
    register(app)
    args = ["--data", str(synth_dir), "--out", str(tmp_path / "b"), "--epochs", "3",
            "--batch-size", "16", "--lr", "0.002", "--hidden", "32", "--layers", "1",
            "--heads", "2", "--proj-dim", "16", "--threads", "1"]
    # the CLI has no --eval-fraction / --vocab-size: compare with a run on those defaults
    result = CliRunner().invoke(app, ["pretrain", *args])  # `pkd pretrain` is a group
    assert result.exit_code == 0, result.output
    assert "image->text R@1" in result.output and "color probe" in result.output
    cli_cfg = replace(cfg, out_dir=tmp_path / "c", eval_fraction=0.1,
                      size=replace(TINY, vocab_size=P.ModelSize().vocab_size))
    P.pretrain(cli_cfg)
    a, b, c = (weights(tmp_path / name) for name in "abc")
    assert all(torch.equal(b[k], c[k]) for k in b)  # same config and seed: identical weights
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)
    P.pretrain(replace(cfg, seed=1))  # replaces the earlier output in place
    assert any(not torch.equal(weights(cfg.out_dir)[k], a[k]) for k in a)


def test_bad_output_folder_and_config_are_user_errors(synth_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(PkdError, match="busy: folder is not empty"):
        P.pretrain(tiny_config(synth_dir, tmp_path / "busy"))
    with pytest.raises(PkdError, match="family"):
        P.pretrain(tiny_config(synth_dir, tmp_path / "m", family="vilt"))
    with pytest.raises(PkdError, match="captions.json: file not found"):
        P.pretrain(tiny_config(tmp_path / "busy", tmp_path / "m"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "captions.json").write_text(json.dumps(
        {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "a red circle."}]}))
    with pytest.raises(PkdError, match="captions.json: malformed image or caption record"):
        P.load_corpus(bad)


# --------------------------------------------------------------------------- package


def test_package_exports_what_callers_import():
    import pkd.train.pretrain as package
    from pkd.train.pretrain import ModelSize, PretrainConfig, pretrain  # pkd.demo, pkd.cli

    assert (ModelSize, PretrainConfig, pretrain) == (P.ModelSize, P.PretrainConfig, P.pretrain)
    assert all(hasattr(package, name) for name in package.__all__)


def test_blip_itm_batch_labels_positives_and_hard_negatives():
    """The 3B ITM rows: B positives (match), then (image, hard text), (hard image, text)."""
    from types import SimpleNamespace

    class Encoder:  # CLS state = (image id, text id); ITM logit says match iff they agree
        def __call__(self, input_ids, attention_mask, encoder_hidden_states,
                     encoder_attention_mask):
            cls = torch.stack([encoder_hidden_states[:, 0, 0], input_ids[:, 0].float()], 1)
            return SimpleNamespace(last_hidden_state=cls[:, None, :])

    def head(cls):  # (no match, match) = (0, log 3) on agreement, (log 3, 0) otherwise
        same = (cls[:, 0] == cls[:, 1]).float()[:, None]
        return math.log(3.0) * torch.cat([1 - same, same], 1)

    model = SimpleNamespace(text_encoder=Encoder(), itm_head=head)
    ids = torch.arange(4)[:, None]  # (B, 1): text j has token j
    vision = ids.float()[:, :, None].expand(4, 2, 3)  # (B, P, d): image i is all i
    got = P.blip_itm_loss(model, vision, ids, torch.ones(4, 1, dtype=torch.long),
                          torch.randn(4, 4), torch.eye(4, dtype=torch.bool),
                          torch.Generator().manual_seed(0))
    # every row is scored right with probability 3/4 only if positives are labelled "match"
    # and the 2B hard negatives (never a positive) "no match"
    assert got.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
