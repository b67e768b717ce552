"""The reference debiasing methods as pkd methods: question-only, RUBi and LMH on UpDn.

Task outputs and their weighted sums, eval logits = the VQA model's own, RUBi's stop-gradient,
LMH's prior from the training questions only (by hand), the ``question_type`` batch key, config
refusals, and a tiny ``pkd train`` + ``pkd evaluate`` for each method.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    benchmark_and_regions,
    train_overrides,
)

from pkd.cli import main
from pkd.errors import PkdError
from pkd.train import checkpoint as ck
from pkd.train.config import LMHConfig, ModelConfig
from pkd.train.config_load import load_config
from pkd.train.data import SplitData, VQABatches, question_type_ids
from pkd.train.losses.debias import LMHLoss, RUBiLoss
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.question_only import QuestionOnlyVQA
from pkd.train.models.updn import UpDn
from pkd.train.tasks.lmh import LMHTask, training_prior
from pkd.train.tasks.question_only import QuestionOnlyTask
from pkd.train.tasks.rubi import RUBiTask

A, WORDS, DR = 5, 12, 6  # answers, words, region feature dim


def tiny_updn(seed: int = 0) -> UpDn:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_size=8, word_dim=4, dropout=0.0, classifier_dropout=0.0)
    return UpDn(WORDS, A, DR, cfg)


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, WORDS, (3, 4), generator=g)
    tokens[1, 2:] = 0  # a shorter question
    targets = torch.zeros(3, A)
    targets[0, 1], targets[1, 3], targets[2, 0], targets[2, 4] = 1.0, 0.6, 0.3, 1.0
    return {"question_tokens": tokens, "question_mask": tokens > 0,
            "region_features": torch.randn(3, 2, DR, generator=g),
            "region_mask": torch.tensor([[True, True], [True, False], [True, True]]),
            "targets": targets, "question_type": torch.tensor([0, 2, 1])}


# ---------------------------------------------------------------- question-only

def test_question_only_model_is_updns_question_path_and_reads_no_regions():
    updn = tiny_updn()
    model = QuestionOnlyVQA(updn).eval()
    batch = tiny_batch()
    blind = {k: batch[k] for k in ("question_tokens", "question_mask", "targets")}
    out = model(blind)  # no region key at all
    q = updn.encode_question(updn.embed_question(batch), batch["question_mask"])
    assert torch.allclose(out["question_features"], q)
    assert torch.allclose(out["logits"], updn.classify(updn.q_net(q)))  # joint without v
    names = {k.split(".")[0] for k in model.state_dict()}
    assert names == {"word_embedding", "question_rnn", "q_net", "classifier"}
    task_out = QuestionOnlyTask(model)(blind)
    assert set(task_out) == {"loss", "vqa_loss", "logits"}
    assert task_out["loss"].item() == pytest.approx(
        VQALoss()(out["logits"], batch["targets"]).item(), rel=1e-6)


# ---------------------------------------------------------------- RUBi

def rubi_task(q_weight: float = 0.3) -> RUBiTask:
    return RUBiTask(tiny_updn(), A, q_weight=q_weight, branch_dims=(7,))


def test_rubi_task_loss_is_the_weighted_sum_and_eval_logits_are_updns():
    task, batch = rubi_task(0.3), tiny_batch()
    out = task(batch)
    assert set(out) == {"loss", "vqa_loss", "q_loss", "logits"}
    own = task.model(batch)
    ref = RUBiLoss(A, 0.3)
    ref.load_state_dict(task.rubi.state_dict())
    parts = ref(own["logits"], task.question_branch(own["question_features"]), batch["targets"])
    assert out["vqa_loss"].item() == pytest.approx(parts["vqa_loss"].item(), rel=1e-6)
    assert out["q_loss"].item() == pytest.approx(parts["q_loss"].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["vqa_loss"].item() + 0.3 * out["q_loss"].item(),
                                               rel=1e-6)
    assert out["q_loss"].item() != pytest.approx(out["vqa_loss"].item(), rel=1e-3)
    task.eval()
    assert torch.equal(task(batch)["logits"], task.model(batch)["logits"])


def encoder_grads(task: RUBiTask, loss: torch.Tensor) -> list[torch.Tensor | None]:
    encoder = [*task.model.word_embedding.parameters(), *task.model.question_rnn.parameters()]
    return list(torch.autograd.grad(loss, encoder, retain_graph=True, allow_unused=True))


def test_rubi_branch_sends_no_gradient_into_updns_question_encoder():
    task, batch = rubi_task(1.0), tiny_batch()
    out = task(batch)
    assert all(g is None or not g.any() for g in encoder_grads(task, out["q_loss"]))
    # the masked term reaches the encoder only through x: as if the mask were a constant
    own = task.model(batch)
    mask = torch.sigmoid(task.question_branch(own["question_features"]).detach())
    constant_mask = VQALoss()(own["logits"] * mask, batch["targets"])
    for got, want in zip(encoder_grads(task, out["loss"]), encoder_grads(task, constant_mask),
                         strict=True):
        assert got is not None and got.abs().sum() > 0
        assert torch.allclose(got, want, atol=1e-7)


# ---------------------------------------------------------------- LMH

def hand_split(types: list[str], index: list[list[int]], score: list[list[float]]) -> SplitData:
    n = len(types)
    return SplitData(name="train", question_ids=np.arange(n), image_ids=np.arange(n),
                     tokens=np.ones((n, 2), dtype=np.int64),
                     answer_index=np.array(index, dtype=np.int64),
                     answer_score=np.array(score, dtype=np.float32),
                     answer_types=["other"] * n, question_types=types)


TRAIN = hand_split(["what color", "is the", "what color", "how many"],
                   [[0, 2], [1, -1], [0, -1], [3, 4]], [[1.0, 0.3], [1.0, 0.0], [0.6, 0.0],
                                                        [0.9, 0.3]])


def test_training_prior_by_hand():
    vocab, prior = training_prior(TRAIN, A)
    assert vocab == ["how many", "is the", "what color"]  # sorted: ids 0, 1, 2; 3 = no bias
    expected = [[0, 0, 0, 0.9, 0.3],  # how many: one question
                [0, 1, 0, 0, 0],  # is the: one question
                [1.6 / 2, 0, 0.3 / 2, 0, 0],  # what color: two questions
                [0.5] * 5]  # a type training never saw: b = 0
    assert torch.allclose(prior, torch.tensor(expected), atol=1e-7)
    _, smooth = training_prior(TRAIN, A, eps=0.5)
    assert smooth[1].tolist() == pytest.approx([0.25, 0.75, 0.25, 0.25, 0.25])  # (s + ε)/(n + 2ε)
    ids = question_type_ids(["is the", "why", "how many"], vocab)
    assert ids.tolist() == [1, 3, 0] and ids.dtype == np.int64


def test_lmh_task_loss_is_the_weighted_sum_and_eval_logits_are_the_models():
    _, prior = training_prior(TRAIN, A)
    task = LMHTask(tiny_updn(), prior, LMHConfig(entropy_weight=0.2))
    batch = tiny_batch()
    out = task(batch)
    assert set(out) == {"loss", "vqa_loss", "entropy_loss", "logits"}
    own = task.model(batch)
    ref = LMHLoss(8, entropy_weight=0.2)
    ref.load_state_dict(task.lmh.state_dict())
    rows = prior[torch.tensor([0, 2, 1])]  # the batch's question_type
    parts = ref(own["logits"], own["joint"], rows, batch["targets"])
    assert out["vqa_loss"].item() == pytest.approx(parts["vqa_loss"].item(), rel=1e-6)
    assert out["entropy_loss"].item() == pytest.approx(parts["entropy"].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(
        out["vqa_loss"].item() + 0.2 * out["entropy_loss"].item(), rel=1e-6)
    assert "prior" not in task.state_dict()  # rebuilt from the training split, not saved
    task.eval()
    assert torch.equal(task(batch)["logits"], task.model(batch)["logits"])


def test_lmh_no_bias_row_leaves_the_logits_alone():
    _, prior = training_prior(TRAIN, A)
    task = LMHTask(tiny_updn(), prior, LMHConfig(entropy_weight=0.0))
    batch = {**tiny_batch(), "question_type": torch.full((3,), 3)}  # all unseen types
    own = task.model(batch)
    plain = VQALoss()(own["logits"], batch["targets"])
    assert task(batch)["loss"].item() == pytest.approx(plain.item(), rel=1e-6)


# ---------------------------------------------------------------- on the synthetic benchmark

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return benchmark_and_regions(tmp_path_factory)


def test_lmh_prior_is_built_from_the_trained_questions_only(bench, tmp_path):
    from pkd.train.models import build_model
    from pkd.train.prepare import open_stores, split_batches, vocabs
    from pkd.train.splits import val_split_name
    from pkd.train.tasks import METHODS

    data, regions = bench
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "r", **{
        "method.name": "lmh", "data.val_fraction": 0.3}))
    v, stores = vocabs(cfg, tmp_path / "r", create=True), open_stores(cfg)
    train, batches = split_batches(cfg, cfg.data.train_split, v, stores, teacher=True)
    val, _ = split_batches(cfg, val_split_name(cfg), v, stores)
    model = build_model(cfg.model, len(v.words), len(v.answers), 16)
    task = METHODS["lmh"].build_task(cfg, model, v, stores)
    vocab, want = training_prior(train, len(v.answers))
    assert torch.equal(task.prior, want)
    both = SplitData(  # the carved share must not leak in: the prior of train + val differs
        "all", np.concatenate([train.question_ids, val.question_ids]),
        np.concatenate([train.image_ids, val.image_ids]),
        np.concatenate([train.tokens, val.tokens]),
        np.concatenate([train.answer_index, val.answer_index]),
        np.concatenate([train.answer_score, val.answer_score]),
        train.answer_types + val.answer_types, train.question_types + val.question_types)
    leaked = training_prior(both, len(v.answers))[1]
    assert not torch.allclose(leaked[:len(vocab)], want[:len(vocab)])
    # the batches' question_type is the training vocabulary's id (unseen -> the no-bias row)
    got = batches[np.arange(5)]["question_type"]
    assert got.dtype == torch.int64
    assert got.tolist() == [vocab.index(t) for t in train.question_types[:5]]
    other = VQABatches(train, batches.stores, batches.rows, len(v.answers), type_vocab=vocab[1:])
    first = vocab[0]
    ids = other[np.arange(len(train))]["question_type"].tolist()
    assert all((i == len(vocab) - 1) == (t == first) for i, t in zip(ids, train.question_types,
                                                                     strict=True))


@pytest.mark.parametrize("method", ["question-only", "rubi", "lmh"])
def test_cli_train_then_evaluate(bench, tmp_path, method):
    data, regions = bench
    run = tmp_path / method
    extra = {"method.name": method, "run.max_steps": 4, "method.rubi.branch_dims": "[16]"}
    assert main(["train", *train_overrides(data, regions, run, **extra)]) == 0
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    terms = {"question-only": {"vqa_loss"}, "rubi": {"vqa_loss", "q_loss"},
             "lmh": {"vqa_loss", "entropy_loss"}}[method]
    assert terms | {"loss"} <= set(logged)
    best = load_file(str(ck.resolve_checkpoint(run / "best") / "model.safetensors"))
    parts = {k.split(".")[0] for k in best}
    if method == "question-only":
        assert parts == {"word_embedding", "question_rnn", "q_net", "classifier"}
    else:  # UpDn alone: the branch, c_q and the gate stay in the task
        assert parts == {k.split(".")[0] for k in tiny_updn().state_dict()}
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["missing"] == 0 and 0.0 <= metrics["overall"] <= 100.0


@pytest.mark.parametrize("override, message", [
    ("method.lmh.entropy_weight=-1", "method.lmh.entropy_weight: -1.0 is not >= 0"),
    ("method.lmh.constant_smooth=2", "method.lmh.constant_smooth: 2.0 is not in [0, 1]"),
    ("method.lmh.prior_eps=-0.5", "method.lmh.prior_eps: -0.5 is not >= 0"),
    ("method.rubi.q_weight=-1", "method.rubi.q_weight: -1.0 is not >= 0"),
    ("method.rubi.branch_dims=[8, 0]", "method.rubi.branch_dims[1]: 0 is not >= 1"),
])
def test_config_ranges_are_refused_in_one_line(override, message):
    with pytest.raises(PkdError) as err:
        load_config(None, [override])
    assert str(err.value) == f"override '{override}': {message}"


@pytest.mark.parametrize("method", ["question-only", "rubi"])
def test_methods_that_need_updn_refuse_fusion_in_one_line(method):
    with pytest.raises(PkdError) as err:
        load_config(None, [f"method.name={method}", "model.arch=fusion"])
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("override 'model.arch=fusion': model.arch: 'fusion' is not 'updn' "
                           f"(method.name={method} ")


def test_lmh_accepts_fusion():
    cfg = load_config(None, ["method.name=lmh", "model.arch=fusion"])
    assert cfg.method.lmh.entropy_weight == 0.36


# ---------------------------------------------------------------- inverted-prior control

def ann(qid: int, qtype: str, answer: str, answers: list[str] | None = None,
        answer_type: str = "other"):
    from pkd.data.vqa import Annotation

    return Annotation(qid, qid, qtype, answer_type, answer, tuple(answers or [answer] * 10))


HAND_TRAIN = [ann(1, "what color", "red"), ann(2, "what color", "red"),
              ann(3, "what color", "blue"), ann(4, "what color", "green"),
              ann(5, "what color", "green"),
              *[ann(10 + i, "is there a", "yes", answer_type="yes/no") for i in range(3)],
              ann(13, "is there a", "no", answer_type="yes/no"),
              ann(14, "is there a", "2", answer_type="number"),  # a stray rare answer
              ann(20, "is it", "yes", answer_type="yes/no"), ann(21, "is it", "yes",
                                                                  answer_type="yes/no")]
HAND_TEST = [ann(101, "what color", "blue"),
             ann(102, "what color", "red", ["blue"] * 2 + ["red"] * 8),
             ann(103, "is there a", "no", answer_type="yes/no"),
             ann(104, "is it", "yes", answer_type="yes/no"),
             ann(105, "how many", "3", answer_type="number")]  # a type training never saw


def test_inverted_prior_answers_by_hand():
    from pkd.data.prior import inverted_prior_answers, least_frequent_answers

    least = least_frequent_answers(HAND_TRAIN)
    assert least["what color"] == ("blue", 20.0)
    assert least["is there a"][0] == "2"  # ties (2, no: once each) go to the sorted first
    inverted = inverted_prior_answers(HAND_TRAIN)
    assert inverted == {"what color": "blue", "is there a": "no", "is it": "no"}  # yes/no: minority


def test_inverted_prior_accuracy_by_hand():
    from pkd.data.prior import constant_answer_accuracy, inverted_prior_answers

    got = constant_answer_accuracy(inverted_prior_answers(HAND_TRAIN), HAND_TEST)
    # 101: 10 x blue -> 100; 102: 2 of 10 blue -> mean over the 10 leave-one-out sets of
    # min(1, matches / 3) = (2 * 1/3 + 8 * 2/3) / 10 = 60; 103: no -> 100; 104: "no" vs yes -> 0;
    # 105: no training type -> 0
    assert got["perQuestionType"]["what color"]["accuracy"] == pytest.approx(80.0)
    assert got["accuracy"] == pytest.approx((100 + 60 + 100 + 0 + 0) / 5)
    assert got["questions"] == 5


def test_demo_inverted_prior_rows_match_the_control_accuracy(bench, tmp_path):
    from pkd.data.prior import constant_answer_accuracy, inverted_prior_answers
    from pkd.data.vqa import dataset_files, load_annotations
    from pkd.demo import DemoConfig, Paths, control_rows

    data, _ = bench
    rows = control_rows(DemoConfig(out=tmp_path), Paths(data, tmp_path, tmp_path),
                        "inverted-prior", 0)
    assert [r["split"] for r in rows] == ["test", "test_comp", "test_iid"]
    answers = inverted_prior_answers(load_annotations(dataset_files(data, "synth", "train")[1]))
    for r in rows:
        anns = load_annotations(dataset_files(data, "synth", r["split"])[1])
        want = constant_answer_accuracy(answers, anns)["accuracy"]
        assert r["overall"] == pytest.approx(want, abs=0.01)  # official metric rounds to 2 places
        assert r["prior"] == 0.0  # the inverted answer is never the training favourite


def test_rubi_config_reaches_the_task():
    from pkd.train.losses.debias import soft_cross_entropy
    from pkd.train.tasks import METHODS

    cfg = load_config(None, ["method.name=rubi", "method.rubi.q_weight=0.25",
                             "method.rubi.criterion=softmax", "method.rubi.branch_dims=[3]",
                             "method.rubi.end_classifier=false"])
    task = METHODS["rubi"].task(cfg, tiny_updn())
    assert task.rubi.question_loss_weight == 0.25 and task.rubi.bce is soft_cross_entropy
    assert isinstance(task.rubi.c_q, torch.nn.Identity)
    linears = [m for m in task.question_branch.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [3, A]


def test_lmh_task_runs_on_the_fusion_transformer():
    from pkd.train.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="fusion", hidden_size=8, num_layers=1, num_heads=2,
                      intermediate_size=16, max_positions=16, dropout=0.0, classifier_dropout=0.0)
    model = build_model(cfg, WORDS, A, DR)
    _, prior = training_prior(TRAIN, A)
    batch = {**tiny_batch(), "region_geometry": torch.rand(3, 2, 6)}
    out = LMHTask(model, prior)(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.equal(out["logits"], model(batch)["logits"])


def test_validation_question_types_index_the_training_vocabulary(tmp_path):
    """The trainer's validation batches number question types like the training split (the LMH
    prior's rows), not by their own sorted types: a type validation lacks shifts no id."""
    from train_fixtures import make_benchmark, make_regions_store, train_overrides

    from pkd.train.config_load import load_config
    from pkd.train.loop import Trainer

    data = make_benchmark(tmp_path / "data")
    regions = make_regions_store(data, tmp_path / "regions.zarr")
    val = json.loads((data / "synth_val_questions.json").read_text())
    anns = json.loads((data / "synth_val_annotations.json").read_text())
    drop = {a["question_id"] for a in anns["annotations"] if a["question_type"] == "how many"}
    val["questions"] = [q for q in val["questions"] if q["question_id"] not in drop]
    anns["annotations"] = [a for a in anns["annotations"] if a["question_id"] not in drop]
    (data / "synth_val_questions.json").write_text(json.dumps(val))
    (data / "synth_val_annotations.json").write_text(json.dumps(anns))
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "run",
                                            **{"method.name": "lmh"}))
    t = Trainer(cfg, resume=False)
    vocab = t.train.type_vocab
    assert "how many" in vocab and t.val.type_vocab == vocab
    types = [vocab[i] for i in t.val.question_type.tolist()]
    assert types == t.val.split.question_types  # each id names its own type in the train vocab
