"""PKD's setting: D = the pre-trained VL model (tiny LXMERT) answering through its own heads."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import FEATURE_DIM, benchmark_and_regions, train_overrides

from pkd.data.cloze import MASK, answer_word, generic_prompt, synth_prompt
from pkd.data.synth_questions import EXIST_Q
from pkd.errors import PkdError
from pkd.train.models.verbalizer import NO, OUTSIDE, WORD, YES, Verbalizer
from pkd.train.wise_ft import interpolate


def _questions(data):
    out = []
    for split in ("train", "val", "test", "test_iid"):
        qs = json.loads((data / f"synth_{split}_questions.json").read_text())["questions"]
        anns = json.loads((data / f"synth_{split}_annotations.json").read_text())["annotations"]
        types = {a["question_id"]: a["question_type"] for a in anns}
        answers = {a["question_id"]: a["multiple_choice_answer"] for a in anns}
        out += [(q["question"], types[q["question_id"]], answers[q["question_id"]]) for q in qs]
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return benchmark_and_regions(tmp_path_factory, "vlm")


@pytest.fixture(scope="module")
def tiny_lxmert(tmp_path_factory, bench):
    """A tiny LxmertForPreTraining (random weights) whose tokenizer knows the benchmark's words
    (captions, questions, answers, attribute words) and the prompts'."""
    from pkd.hf.tiny_models import build_tiny_lxmert
    from pkd.train.pretrain.lxmert_data import caption_images, tokenizer_texts

    data, _ = bench
    texts = tokenizer_texts(data, caption_images(data)[1])
    prompts = [synth_prompt(q).text for q, _, _ in _questions(data)]
    return build_tiny_lxmert(tmp_path_factory.mktemp("lxmert"), [*texts, *prompts], hidden=32,
                             l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=FEATURE_DIM,
                             vocab_size=300)


def test_every_synth_question_has_a_prompt(bench):
    data, _ = bench
    for question, qtype, answer in _questions(data):
        prompt = synth_prompt(question)
        assert prompt.kind == ("match" if qtype == EXIST_Q else "mask"), question
        assert prompt.text.count(MASK) == (prompt.kind == "mask"), question
        assert "?" not in prompt.text and answer_word(answer)


def test_prompt_forms():
    assert synth_prompt("What color is the large circle?").text == \
        "one object: a large [MASK] circle."
    assert synth_prompt("What color is the circle?").text == "one object: a small [MASK] circle."
    assert synth_prompt("What shape is the red object?").text == "one object: a small red [MASK]."
    assert synth_prompt("What shape is the large red object?").text == \
        "one object: a large red [MASK]."
    assert synth_prompt("How many blue objects are there?").text == "[MASK] blue objects:"
    assert synth_prompt("Is there a red circle left of the square?").text == \
        "the red circle is left of the square."
    assert synth_prompt("What is the shape of the object above the blue object?").text == \
        "the [MASK] is above the blue object."
    assert generic_prompt("What is on the table?").text == "What is on the table? [MASK]"
    assert answer_word("2") == "two" and answer_word("red") == "red"
    with pytest.raises(PkdError, match="not a form of the synthetic benchmark"):
        synth_prompt("Why is the sky blue?")


class _Tok:
    """A stand-in tokenizer: one piece per word, "orange" two pieces."""
    unk_token_id = 1
    vocab = {"red": 5, "blue": 6, "yes": 7, "no": 8, "two": 9, "or": 10, "##ange": 11}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [9] if text == "two" else [10, 11] if text == "orange"
                else [self.vocab.get(text, 1)]}


def test_verbalizer_formula():
    """z = mean of the answer's pieces at the mask (cloze), ±s on statements, -C outside."""
    v = Verbalizer(["red", "orange", "2", "yes", "no"], _Tok(), match_yes_no=True)
    assert v.roles.tolist() == [WORD, WORD, WORD, YES, NO]
    mlm = torch.arange(24, dtype=torch.float).reshape(2, 12)
    s = torch.tensor([1.5, -2.0])
    z = v(mlm, s, torch.tensor([True, False]))
    assert z[0, :3].tolist() == [5.0, 10.5, 9.0]  # orange: (10 + 11) / 2
    assert z[0, 3:].tolist() == [-OUTSIDE, -OUTSIDE]
    assert z[1, :3].tolist() == [-OUTSIDE] * 3 and z[1, 3:].tolist() == [-2.0, 2.0]
    generic = Verbalizer(["yes", "no"], _Tok(), match_yes_no=False)
    assert generic(mlm, s, torch.tensor([True, True]))[0].tolist() == [7.0, 8.0]
    with pytest.raises(PkdError, match="not in the foundation model's vocabulary"):
        Verbalizer(["zebra"], _Tok(), match_yes_no=True)


def _fit(bench, tiny_lxmert, out, **extra):
    from pkd.train.config_load import load_config
    from pkd.train.loop import fit

    data, regions = bench
    over = {"model.arch": "vlm", "model.foundation": tiny_lxmert, "data.max_question_length": 20,
            "optim.lr": 1e-3, **extra}
    return fit(load_config(None, train_overrides(data, regions, out, **over)))


def test_vlm_trains_and_evaluates(bench, tiny_lxmert, tmp_path):
    from pkd.train.predict import evaluate_checkpoint

    run = tmp_path / "run"
    _fit(bench, tiny_lxmert, run)
    words = json.loads((run / "words.json").read_text())
    assert words["format"] == "pkd.prompt_tokenizer" and words["style"] == "synth"
    from pkd.train.models.vlm import foundation_tokenizer
    from pkd.train.prompts import PromptTokenizer

    broken = tmp_path / "words.json"
    broken.write_text('{"format": "pkd.prompt_tokenizer", ')  # a truncated file
    with pytest.raises(PkdError, match="words.json: not valid JSON"):
        PromptTokenizer.load(broken, foundation_tokenizer(str(tiny_lxmert)))
    metrics, path = evaluate_checkpoint(run, "test")
    assert metrics["missing"] == 0 and 0.0 <= metrics["overall"] <= 100.0
    data, _ = bench
    asked = {q["question_id"]: q["question"] for q in json.loads(
        (data / "synth_test_questions.json").read_text())["questions"]}
    for row in json.loads(path.read_text()):  # a prompt's kind fixes its answer space
        yes_no = synth_prompt(asked[row["question_id"]]).kind == "match"
        assert (row["answer"] in ("yes", "no")) == yes_no, row


def test_vlm_heads_and_scratch_differ(bench, tiny_lxmert):
    from pkd.train.models.vlm import FoundationVQA, load_foundation

    _, tokenizer = load_foundation(str(tiny_lxmert))
    answers = ["red", "blue", "2", "yes", "no"]
    pre, _ = load_foundation(str(tiny_lxmert))
    scratch, _ = load_foundation(str(tiny_lxmert), init="scratch")
    assert not torch.equal(pre.cls.seq_relationship.weight, scratch.cls.seq_relationship.weight)
    model = FoundationVQA(pre, tokenizer, answers, "mlm").eval()
    ids = tokenizer(["a [MASK] circle.", "the red circle is left of the square."],
                    padding=True, return_tensors="pt")["input_ids"]
    batch = {"question_tokens": ids, "question_mask": ids > 0,
             "region_features": torch.randn(2, 3, FEATURE_DIM),
             "region_geometry": torch.rand(2, 3, 6), "region_mask": torch.ones(2, 3, dtype=bool)}
    out = model(batch)
    assert out["logits"].shape == (2, 5) and out["match_logodds"].shape == (2,)
    assert (out["logits"][0, 3:] == -OUTSIDE).all() and (out["logits"][1, :3] == -OUTSIDE).all()
    assert torch.allclose(out["logits"][1, 3], -out["logits"][1, 4])
    new = FoundationVQA(pre, tokenizer, answers, "new").eval()
    assert new(batch)["logits"].shape == (2, 5)


def test_vlm_config_rules(tmp_path):
    from pkd.train.config_load import load_config

    with pytest.raises(PkdError, match="model.foundation"):
        load_config(None, ["model.arch=vlm", f"run.out_dir={tmp_path}"])


def test_zero_shot_row_saves_the_loaded_model(bench, tiny_lxmert, tmp_path):
    """run.epochs=0 on a pre-trained vlm: no step, best/ holds exactly F0's weights."""
    from pkd.train import checkpoint as ck
    from pkd.train.models.vlm import load_foundation

    run = tmp_path / "zero"
    result = _fit(bench, tiny_lxmert, run, **{"run.epochs": 0, "run.max_steps": 0})
    assert result.steps == 0
    weights, _ = ck.load_checkpoint(ck.latest_checkpoint(run / "best"))
    f0, _ = load_foundation(str(tiny_lxmert))
    for name, value in f0.state_dict().items():
        assert torch.equal(weights[f"backbone.{name}"], value), name


def test_kd_id_lp_and_lp_ft(bench, tiny_lxmert, tmp_path):
    """kd-id logs its two KL terms; lp trains only the head; lp-ft starts from lp's best."""
    from pkd.train import checkpoint as ck
    from pkd.train.models.vlm import load_foundation

    kd = _fit(bench, tiny_lxmert, tmp_path / "kd", **{"method.name": "kd-id"}).run_dir
    rows = [json.loads(x) for x in (kd / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert {"mlm_loss", "itm_loss", "vqa_loss"} <= set(train[0]) and train[0]["mlm_loss"] >= 0
    lp = _fit(bench, tiny_lxmert, tmp_path / "lp", **{"model.answer_head": "new",
                                                      "model.trainable": "heads"}).run_dir
    weights, _ = ck.load_checkpoint(ck.latest_checkpoint(lp / "ckpt"))
    f0, _ = load_foundation(str(tiny_lxmert))
    body = {k: v for k, v in f0.state_dict().items() if not k.startswith("cls.")}
    assert all(torch.equal(weights[f"model.backbone.{k}"], v) for k, v in body.items())
    ft = _fit(bench, tiny_lxmert, tmp_path / "lpft", **{"model.answer_head": "new",
                                                        "model.init_from": lp,
                                                        "run.max_steps": 1}).run_dir
    assert ft.is_dir()
    with pytest.raises(PkdError, match="no best/ checkpoint"):
        _fit(bench, tiny_lxmert, tmp_path / "bad", **{"model.init_from": tmp_path / "nowhere"})


def test_interpolate_formula():
    f0 = {"w": torch.tensor([0.0, 2.0])}
    tuned = {"backbone.w": torch.tensor([4.0, 6.0]), "answer_head.b": torch.tensor([1.0])}
    mixed = interpolate(f0, tuned, 0.25)
    assert mixed["backbone.w"].tolist() == [1.0, 3.0] and mixed["answer_head.b"].tolist() == [1.0]


def test_wise_ft_run_evaluates(bench, tiny_lxmert, tmp_path):
    """α=0 gives F0's weights (the zero-shot model), α=1 the fine-tuned ones; both evaluate."""
    from pkd.train import checkpoint as ck
    from pkd.train.models.vlm import load_foundation
    from pkd.train.predict import evaluate_checkpoint
    from pkd.train.wise_ft import wise_ft

    run = _fit(bench, tiny_lxmert, tmp_path / "ft").run_dir
    tuned, _ = ck.load_checkpoint(ck.latest_checkpoint(run / "best"))
    zero = wise_ft(run, 0.0, tmp_path / "w0")
    one = wise_ft(run, 1.0, tmp_path / "w1")
    w0, _ = ck.load_checkpoint(ck.latest_checkpoint(zero / "best"))
    w1, _ = ck.load_checkpoint(ck.latest_checkpoint(one / "best"))
    f0, _ = load_foundation(str(tiny_lxmert))
    key = "backbone.cls.seq_relationship.weight"
    assert torch.equal(w0[key], f0.state_dict()["cls.seq_relationship.weight"])
    assert torch.equal(w1[key], tuned[key]) and not torch.equal(w0[key], w1[key])
    metrics, _ = evaluate_checkpoint(zero, "val")
    assert metrics["missing"] == 0
    with pytest.raises(PkdError, match="not in"):
        wise_ft(run, 1.5, tmp_path / "bad")


def test_cli_wise_ft_refuses_a_non_vlm_run(tmp_path, capsys):
    from pkd.cli import main

    assert main(["wise-ft", str(tmp_path), "--alpha", "0.5"]) == 2
    assert "not a pkd run of model.arch=vlm" in capsys.readouterr().err


def test_lwf_oracle_distils_on_training_captions(bench, tiny_lxmert, tmp_path):
    """lwf-oracle reads caption-image pairs (masked, matched or not) and logs both KL terms."""
    from pkd.train.caption_pairs import CaptionPairs
    from pkd.train.models.vlm import foundation_tokenizer

    data, regions = bench
    pairs = CaptionPairs(str(data), str(regions), str(tiny_lxmert),
                         foundation_tokenizer(str(tiny_lxmert)), seed=0)
    batch = pairs.batch(8)
    assert batch["input_ids"].shape[0] == 8 and batch["visual_feats"].shape[-1] == FEATURE_DIM
    assert batch["masked"].any()
    run = _fit(bench, tiny_lxmert, tmp_path / "lwf", **{
        "method.name": "lwf-oracle", "method.lwf.caption_regions": regions,
        "method.lwf.caption_batch": 4}).run_dir
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"mlm_loss", "itm_loss"} <= set(rows[0])
    with pytest.raises(PkdError, match="caption_regions"):
        _fit(bench, tiny_lxmert, tmp_path / "bad", **{"method.name": "lwf-oracle"})


def test_pkd_vlm_two_stages(bench, tiny_lxmert, tmp_path):
    """Stage 1 trains only the predictors through the frozen F0 (L_itm + L_div); stage 2 trains
    D with its memory (saved in best/, used at evaluation) and L_mkd on its own ITM head."""
    from pkd.train import checkpoint as ck
    from pkd.train.predict import evaluate_checkpoint

    stage1 = _fit(bench, tiny_lxmert, tmp_path / "pred",
                  **{"method.name": "pkd-vlm-predictors", "method.pkd.predictor_hidden": 16,
                     "method.pkd.predictor_layers": 1}).run_dir
    rows = [json.loads(x) for x in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert {"itm_loss", "div_loss"} <= set(rows[0]) and not (stage1 / "best").exists()
    weights, _ = ck.load_checkpoint(ck.latest_checkpoint(stage1 / "ckpt"))
    assert weights and all(k.startswith("predictors.") for k in weights)
    run = _fit(bench, tiny_lxmert, tmp_path / "pkd",
               **{"method.name": "pkd-vlm", "method.pkd.predictors": stage1,
                  "method.pkd.predictor_hidden": 16, "method.pkd.predictor_layers": 1,
                  "method.pkd.memory_size": 32}).run_dir
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["mkd_loss"] >= 0 and "mkd_mlm_loss" not in rows[0]
    both = _fit(bench, tiny_lxmert, tmp_path / "pkd-mlm",
                **{"method.name": "pkd-vlm", "method.pkd.predictors": stage1,
                   "method.pkd.predictor_hidden": 16, "method.pkd.predictor_layers": 1,
                   "method.pkd.mkd_heads": "itm+mlm", "run.max_steps": 2}).run_dir
    rows = [json.loads(x) for x in (both / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["mkd_mlm_loss"] >= 0 and rows[0]["mkd_loss"] >= rows[0]["mkd_mlm_loss"]
    real = _fit(bench, tiny_lxmert, tmp_path / "pkd-real",
                **{"method.name": "pkd-vlm", "method.pkd.predictors": stage1,
                   "method.pkd.predictor_hidden": 16, "method.pkd.predictor_layers": 1,
                   "method.pkd.mkd_heads": "itm+mlm", "method.pkd.mkd_vision": "real",
                   "run.max_steps": 2}).run_dir
    rows = [json.loads(x) for x in (real / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["mkd_mlm_loss"] >= 0
    best, _ = ck.load_checkpoint(ck.latest_checkpoint(run / "best"))
    assert int(best["feature_fusion.memory.queue.count"]) > 0  # the memory is D's own state
    metrics, _ = evaluate_checkpoint(run, "test")
    assert metrics["missing"] == 0
    with pytest.raises(PkdError, match="method.pkd.predictors"):
        _fit(bench, tiny_lxmert, tmp_path / "bad", **{"method.name": "pkd-vlm"})
