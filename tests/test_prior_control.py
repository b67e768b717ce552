"""The blind "least frequent training answer" control on hand-made annotations (golden values)."""

from __future__ import annotations

import pytest

from pkd.data.prior import constant_answer_accuracy, least_frequent_answers
from pkd.data.vqa import Annotation


def ann(qid: int, qtype: str, answer: str, answers: tuple[str, ...] | None = None) -> Annotation:
    atype = "yes/no" if answer in ("yes", "no") else "other"
    return Annotation(qid, qid, qtype, atype, answer, answers or (answer,) * 10)


TRAIN = [ann(1, "is there", "yes"), ann(2, "is there", "Yes."), ann(3, "is there", "no"),
         ann(4, "what color", "red"), ann(5, "what color", "blue"), ann(6, "what color", "green"),
         ann(7, "what color", "red")]


def test_least_frequent_answers_preprocess_and_break_ties_by_name():
    least = least_frequent_answers(TRAIN)
    assert least["is there"] == ("no", pytest.approx(100 / 3))  # "Yes." folds into "yes"
    assert least["what color"] == ("blue", 25.0)  # blue and green tie at 1: sorted first


def test_constant_answer_accuracy_by_hand():
    test = [ann(11, "is there", "no"), ann(12, "is there", "yes"),
            ann(13, "is there", "no", ("no",) * 2 + ("yes",) * 8),  # 2 of 10 say "no"
            ann(14, "what color", "blue"), ann(15, "how many", "2")]
    least = {t: a for t, (a, _) in least_frequent_answers(TRAIN).items()}
    got = constant_answer_accuracy(least, test)
    # official accuracy of "no" with 2 matching annotators: mean over leave-one-out of
    # min(1, matches / 3) = (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert got["perQuestionType"]["is there"]["accuracy"] == pytest.approx(100 * 1.6 / 3)
    assert got["perQuestionType"]["what color"] == {"answer": "blue", "accuracy": 100.0,
                                                    "questions": 1}
    assert got["perQuestionType"]["how many"]["accuracy"] == 0.0  # no training answer: scores 0
    assert got["accuracy"] == pytest.approx(100 * (1 + 0 + 0.6 + 1 + 0) / 5)
    assert got["questions"] == 5
