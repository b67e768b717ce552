"""Post-hoc prior controls: golden values by hand, their invariants, and a tiny trained run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pkd.cli import main
from pkd.data.vqa import Annotation
from pkd.errors import PkdError
from pkd.train.prior_adjust import (
    EPS,
    adjust_logits,
    check_adjust,
    mask_favourite,
    prior_correct,
    prior_table,
)


def ann(qid: int, qtype: str, answer: str) -> Annotation:
    return Annotation(qid, qid, qtype, "other", answer, (answer,) * 10)


ANSWERS = ["yes", "no", "red"]  # the run's vocabulary: index -> answer
# "is it": yes 3, no 1 -> p = (3/4, 1/4, 0), favourite yes
# "what color": red 3, blue 1 (blue outside the vocabulary) -> p = (0, 0, 3/4), favourite red
TRAIN = [ann(1, "is it", "Yes"), ann(2, "is it", "yes"), ann(3, "is it", "yes."),
         ann(4, "is it", "no"), ann(5, "what color", "red"), ann(6, "what color", "red"),
         ann(7, "what color", "blue"), ann(8, "what color", "red")]
LOGITS = torch.tensor([[2.0, 1.0, -3.0],  # "is it"
                       [0.0, -1.0, 1.0],  # "what color"
                       [0.0, 1.0, 2.0]])  # a type never seen in training


def log_sigmoid(z: float) -> float:
    return -math.log(1 + math.exp(-z))


def test_table_by_hand():
    table = prior_table(TRAIN, ANSWERS)
    assert table.types == ("is it", "what color")
    expected = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.75]]
    assert torch.allclose(table.log_prior, torch.log(torch.tensor(expected) + EPS))
    assert table.favourite.tolist() == [[True, False, False], [False, False, True]]
    assert table.type_index(["what color", "how many", "is it"]).tolist() == [1, -1, 0]


def test_mask_favourite_by_hand():
    table = prior_table(TRAIN, ANSWERS)
    types = table.type_index(["is it", "what color", "how many"])
    scores = mask_favourite(LOGITS, table.favourite, types)
    inf = float("-inf")
    assert scores.tolist() == [[inf, 1.0, -3.0], [0.0, -1.0, inf], [0.0, 1.0, 2.0]]
    assert scores.argmax(-1).tolist() == [1, 0, 2]  # no, yes, unseen type: unadjusted


def test_prior_correction_by_hand():
    table = prior_table(TRAIN, ANSWERS)
    types = table.type_index(["is it", "what color", "how many"])
    scores = prior_correct(LOGITS, table.log_prior, types)
    p = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.75]]
    expected = [[log_sigmoid(z) - math.log(p[t][a] + 1e-3) for a, z in enumerate(row)]
                for t, row in enumerate(LOGITS[:2].tolist())]
    expected.append([log_sigmoid(z) for z in LOGITS[2].tolist()])  # unseen type: log σ(z)
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-5)
    # "is it": red, never a training answer of the type, is boosted by -log(1e-3) = 6.91 past
    # yes (log σ(2) - log 0.751 = 0.16): 3.86
    assert scores[0, 2].item() == pytest.approx(-3.048587 + 6.907755, abs=1e-5)
    assert scores.argmax(-1).tolist() == [2, 0, 2]
    half = prior_correct(LOGITS, table.log_prior, types, tau=0.5)
    assert half[1, 0].item() == pytest.approx(log_sigmoid(0.0) - 0.5 * math.log(1e-3), abs=1e-5)


def test_mask_never_returns_the_favourite():
    g = torch.Generator().manual_seed(0)
    table = prior_table(TRAIN, ANSWERS)
    types = torch.randint(0, 2, (200,), generator=g)  # (B,)
    logits = torch.randn(200, 3, generator=g)
    logits[types == 0, 0] += 5.0  # the favourite usually wins the plain argmax
    logits[types == 1, 2] += 5.0
    best = adjust_logits(logits, table, types, "mask-favourite").argmax(-1)
    assert not table.favourite[types, best].any()
    plain = logits.argmax(-1)
    kept = ~table.favourite[types, plain]  # a non-favourite winner stays the winner
    assert torch.equal(best[kept], plain[kept])


def test_uniform_prior_is_plain_argmax():
    uniform = [ann(10 * t + a, qtype, answer) for t, qtype in enumerate(("is it", "what color"))
               for a, answer in enumerate(ANSWERS)]
    table = prior_table(uniform, ANSWERS)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(100, 3, generator=g)
    types = torch.randint(-1, 2, (100,), generator=g)
    scores = adjust_logits(logits, table, types, "prior-correction")
    assert torch.equal(scores.argmax(-1), logits.argmax(-1))
    assert torch.equal(adjust_logits(logits, table, types, "none"), logits)


def test_unknown_adjustment():
    with pytest.raises(PkdError, match="expected one of none, mask-favourite, prior-correction"):
        check_adjust("mask")
    assert check_adjust("prior-correction") == "prior-correction"


def test_cli_unknown_adjust_is_one_line(capsys):
    assert main(["evaluate", "--checkpoint", "run", "--adjust", "divide"]) == 2
    assert capsys.readouterr().err == ("error: --adjust 'divide': expected one of none, "
                                       "mask-favourite, prior-correction\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny UpDn run trained on the synthetic benchmark (tests/train_fixtures.py)."""
    from train_fixtures import benchmark_and_regions, train_overrides

    data, regions = benchmark_and_regions(tmp_path_factory, "prior_adjust")
    out = data.parent / "run"
    assert main(["train", *train_overrides(data, regions, out)]) == 0
    return out


def test_mask_favourite_run_never_answers_the_favourite(run):
    from pkd.data.prior import dominant_answers
    from pkd.data.vqa import load_annotations
    from pkd.train.predict import evaluate_checkpoint

    plain, plain_path = evaluate_checkpoint(run, "test_iid")
    saved = {p: p.read_bytes() for p in (plain_path, run / "metrics_test_iid.json")}
    metrics, path = evaluate_checkpoint(run, "test_iid", adjust="mask-favourite")
    assert path == run / "results_test_iid_mask-favourite.json"
    assert json.loads((run / "metrics_test_iid_mask-favourite.json").read_text()) == metrics
    assert metrics["prior"]["prior"] == 0 <= plain["prior"]["prior"]  # golden: test_mask_*
    assert metrics["prior"]["gold"] == plain["prior"]["gold"]
    assert metrics["adjust"] == {"method": "mask-favourite", "tau": 1.0, "eps": EPS}
    assert {p: p.read_bytes() for p in saved} == saved  # the plain files stay as they were
    # masking removes one candidate: a question not answered with its favourite keeps its answer
    favourite = {q: a for q, (a, _) in dominant_answers(
        load_annotations(run.parent / "data" / "synth_train_annotations.json")).items()}
    types = {a.question_id: a.question_type
             for a in load_annotations(run.parent / "data" / "synth_test_iid_annotations.json")}
    masked = {r["question_id"]: r["answer"] for r in json.loads(path.read_text())}
    for r in json.loads(plain_path.read_text()):
        if r["answer"] != favourite[types[r["question_id"]]]:
            assert masked[r["question_id"]] == r["answer"]


def test_cli_prior_correction_and_demo_rows(run, capsys):
    from pkd.demo.controls import POSTHOC, posthoc_rows

    assert main(["evaluate", "--checkpoint", str(run), "--adjust", "prior-correction"]) == 0
    metrics = json.loads((run / "metrics_test_prior-correction.json").read_text())
    assert metrics["adjust"]["method"] == "prior-correction"
    assert (run / "results_test_prior-correction.json").is_file()
    out = capsys.readouterr().out
    assert "post-hoc control: prior-correction" in out
    assert "metrics_test_prior-correction.json" in out.replace("\n", "")
    assert POSTHOC["baseline-masked"] == ("baseline", "mask-favourite")
    rows = posthoc_rows(run, "baseline-prior-corrected", 3, "prior-correction", ("test",))
    assert [set(r) for r in rows] == [{"method", "seed", "split", "overall", "perAnswerType",
                                       "perQuestionType", "ms_per_question", "prior",
                                       "prior_gold"}]
    assert rows[0]["overall"] == metrics["overall"] and rows[0]["seed"] == 3
    assert rows[0]["prior"] == metrics["prior"]["prior"]
