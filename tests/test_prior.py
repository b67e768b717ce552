"""The training-prior diagnostic on hand-made annotations."""

from __future__ import annotations

import pytest

from pkd.data.prior import dominant_answers, prior_agreement
from pkd.data.vqa import Annotation


def ann(qid: int, qtype: str, answer: str) -> Annotation:
    atype = "yes/no" if answer in ("yes", "no") else "other"
    return Annotation(qid, qid, qtype, atype, answer, (answer,) * 10)


TRAIN = [ann(1, "what color", "Red"), ann(2, "what color", "red."), ann(3, "what color", "blue"),
         ann(4, "is there", "yes"), ann(5, "is there", "no"), ann(6, "is there", "yes"),
         ann(7, "is there", "yes")]
TEST = [ann(11, "what color", "blue"), ann(12, "what color", "red"), ann(13, "what color", "blue"),
        ann(14, "is there", "no"), ann(15, "how many", "2")]


def test_dominant_answers_are_preprocessed_and_shared():
    dom = dominant_answers(TRAIN)
    assert dom["what color"] == ("red", pytest.approx(200 / 3))  # "Red" and "red." are one answer
    assert dom["is there"] == ("yes", 75.0)


def test_prior_agreement_by_hand():
    dom = dominant_answers(TRAIN)
    preds = {11: "red", 12: "red", 13: "blue", 14: "yes"}  # 15 has no type favourite: ignored
    got = prior_agreement(preds, TEST, dom)
    assert got["questions"] == 4
    assert got["perQuestionType"]["what color"] == {
        "answer": "red", "prior": pytest.approx(200 / 3), "gold": pytest.approx(100 / 3),
        "questions": 3}
    assert got["perQuestionType"]["is there"]["prior"] == 100.0
    assert got["perQuestionType"]["is there"]["gold"] == 0.0
    assert got["prior"] == 75.0 and got["gold"] == 25.0  # weighted by questions: 3/4, 1/4
    assert prior_agreement({}, TEST, dom)["prior"] == 0.0  # missing predictions never hit
