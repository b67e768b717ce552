"""Answer vocabulary (bottom-up-attention-vqa convention) and soft-score targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pkd.data.answers import AnswerVocab, soft_score
from pkd.data.metric import question_accuracy
from pkd.data.vqa import Annotation
from pkd.errors import PkdError


def _ann(qid: int, mc: str, answers: list[str] | None = None) -> Annotation:
    return Annotation(qid, qid, "what", "other", mc, tuple(answers or [mc] * 10))


def _train() -> list[Annotation]:
    # "2" answers 3 questions (as "2", "Two", "two."), "yes" 2, "red" 1
    return [_ann(1, "2"), _ann(2, "Two"), _ann(3, "two."), _ann(4, "yes"), _ann(5, "Yes"),
            _ann(6, "red")]


def test_build_counts_normalized_multiple_choice_answers():
    vocab = AnswerVocab.build(_train(), min_count=2)
    assert vocab.answers == ["2", "yes"]  # most frequent first; "red" (1 question) dropped
    assert vocab.counts == [3, 2]
    assert len(vocab) == 2
    assert AnswerVocab.build(_train(), min_count=1).answers == ["2", "yes", "red"]
    assert AnswerVocab.build(_train()).answers == []  # default min_count 9


def test_build_counts_distinct_questions():
    anns = [_ann(1, "cat"), _ann(1, "cat"), _ann(2, "dog"), _ann(3, "dog")]
    assert AnswerVocab.build(anns, min_count=2).answers == ["dog"]


def test_ties_are_alphabetical():
    anns = [_ann(1, "y"), _ann(2, "x"), _ann(3, "z"), _ann(4, "z")]
    assert AnswerVocab.build(anns, min_count=1).answers == ["z", "x", "y"]


def test_index_normalizes():
    vocab = AnswerVocab.build(_train(), min_count=2)
    assert vocab.index("TWO") == 0
    assert vocab.index("Yes.") == 1
    assert vocab.index("red") is None
    assert "two" in vocab and "red" not in vocab
    assert vocab.answer(1) == "yes"


@pytest.mark.parametrize(("count", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                              (10, 1.0)])
def test_soft_score_table(count, score):
    assert soft_score(count) == score


def test_soft_scores_of_an_annotation():
    vocab = AnswerVocab(["2", "yes", "no", "red"])
    # "two"/"2"/"Two" all have key "2" (4 -> 1.0); "yes" 3 -> 0.9; "no" 2 -> 0.6; "blue" unknown
    answers = ["two", "2", "Two", "2", "yes", "yes", "Yes!", "no", "no", "blue"]
    ann = _ann(1, "2", answers)
    assert vocab.soft_scores(ann) == {0: 1.0, 1: 0.9, 2: 0.6}
    target = vocab.target(ann)
    assert target.dtype == np.float32 and target.shape == (4,)
    np.testing.assert_array_equal(target, np.array([1.0, 0.9, 0.6, 0.0], dtype=np.float32))
    assert vocab.soft_scores(_ann(2, "red", ["red"] + ["blue"] * 9)) == {3: 0.3}


def test_soft_score_equals_official_accuracy_for_ten_answers():
    # with 10 answers the bottom-up table is the official leave-one-out average
    for m in range(11):
        answers = ["cat"] * m + ["dog"] * (10 - m)
        assert question_accuracy(answers, "cat") == pytest.approx(soft_score(m), abs=1e-12)


def test_save_load_round_trip(tmp_path):
    vocab = AnswerVocab.build(_train(), min_count=1)
    path = vocab.save(tmp_path / "run" / "answers.json")
    back = AnswerVocab.load(path)
    assert (back.answers, back.counts, back.min_count) == (vocab.answers, vocab.counts, 1)
    assert back.index("two") == vocab.index("two")


@pytest.mark.parametrize(("content", "message"), [
    ("[]", "not a pkd answer vocabulary"),
    ('{"format": "pkd-answer-vocab", "version": 2}', "version 2"),
    ('{"format": "pkd-answer-vocab", "version": 1, "answers": [1], "counts": [1]}',
     "answers: expected a list of strings"),
    ('{"format": "pkd-answer-vocab", "version": 1, "answers": ["a"], "counts": []}',
     "counts: expected a list as long as answers"),
    ('{"format": "pkd-answer-vocab", "version": 1, "answers": ["a", "a"], "counts": [1, 1]}',
     "duplicate answers"),
])
def test_load_errors(tmp_path, content, message):
    path = tmp_path / "answers.json"
    path.write_text(content)
    with pytest.raises(PkdError, match=message) as err:
        AnswerVocab.load(path)
    assert str(err.value).startswith(str(path))


def test_saved_file_is_plain_json(tmp_path):
    path = AnswerVocab(["yes", "no"], [5, 4], 3).save(tmp_path / "a.json")
    assert json.loads(path.read_text()) == {"format": "pkd-answer-vocab", "version": 1,
                                            "min_count": 3, "answers": ["yes", "no"],
                                            "counts": [5, 4]}
