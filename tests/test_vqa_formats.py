"""VQA v2 / VQA-CP v2 readers: both layouts, the join, and one-line errors for bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pkd.data.vqa import (
    Annotation,
    Question,
    dataset_files,
    load_annotations,
    load_questions,
    load_split,
)
from pkd.errors import PkdError


def _answers(words: list[str]) -> list[dict]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1}
            for i, w in enumerate(words)]


def _question(qid: int, image_id: int, **extra) -> dict:
    return {"image_id": image_id, "question": f"question {qid}?", "question_id": qid, **extra}


def _annotation(qid: int, image_id: int, **extra) -> dict:
    return {"question_id": qid, "image_id": image_id, "question_type": "what color is the",
            "answer_type": "other", "multiple_choice_answer": "red",
            "answers": _answers(["red"] * 9 + ["blue"]), **extra}


def _vqa2(tmp_path: Path, questions: list[dict], annotations: list[dict]) -> tuple[Path, Path]:
    q = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
         "license": {}, "questions": questions}
    a = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014",
         "annotations": annotations}
    qp, ap = tmp_path / "q.json", tmp_path / "a.json"
    qp.write_text(json.dumps(q))
    ap.write_text(json.dumps(a))
    return qp, ap


def test_vqa2_layout(tmp_path):
    qp, ap = _vqa2(tmp_path, [_question(5, 42), _question(3, 7)],
                   [_annotation(3, 7), _annotation(5, 42)])
    assert load_questions(qp) == [Question(5, 42, "question 5?", None),
                                  Question(3, 7, "question 3?", None)]
    ann = load_annotations(ap)[0]
    assert ann == Annotation(3, 7, "what color is the", "other", "red", ("red",) * 9 + ("blue",))
    pairs = load_split(qp, ap)
    assert [(q.question_id, a.question_id) for q, a in pairs] == [(5, 5), (3, 3)]  # question order


def test_vqacp2_layout_is_a_plain_list(tmp_path):
    qp, ap = tmp_path / "vqacp_v2_test_questions.json", tmp_path / "vqacp_v2_test_annotations.json"
    qp.write_text(json.dumps([_question(1, 9, coco_split="val2014")]))
    ap.write_text(json.dumps([_annotation(1, 9, coco_split="val2014")]))
    (q, a), = load_split(qp, ap)
    assert q == Question(1, 9, "question 1?", "val2014")
    assert a.answers[-1] == "blue"


def test_split_without_annotations(tmp_path):
    qp, _ = _vqa2(tmp_path, [_question(1, 2)], [])
    assert load_split(qp) == [(Question(1, 2, "question 1?"), None)]


def _error(fn, path) -> str:
    with pytest.raises(PkdError) as err:
        fn(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


@pytest.mark.parametrize(("questions", "message"), [
    ("[{", "not valid JSON"),
    ("", r"empty file \(expected JSON\)$"),
    ("[]", r"no questions \(an empty list\)$"),
    ('{"questions": []}', r"no questions \(an empty list\)$"),
    ('"text"', "expected a JSON object with 'questions' or a list"),
    ('{"info": {}}', "no 'questions' field"),
    ('{"questions": {}}', "questions: expected a list, got dict"),
    ('{"questions": [3]}', r"questions\[0\]: expected an object, got int"),
    ('[{"image_id": 1, "question": "q"}]', r"\[0\].question_id: missing field"),
    ('[{"question_id": "1", "image_id": 1, "question": "q"}]',
     r'\[0\].question_id: expected an integer, got "1"'),
    ('[{"question_id": 1, "image_id": 1.5, "question": "q"}]', r"\[0\].image_id: expected an int"),
    ('[{"question_id": 1, "image_id": true, "question": "q"}]', r"\[0\].image_id: expected an int"),
    ('[{"question_id": 1, "image_id": 1, "question": 7}]', r"\[0\].question: expected a string"),
    ('[{"question_id": 1, "image_id": 1, "question": "q", "coco_split": 2014}]',
     r"\[0\].coco_split: expected a string"),
    ('{"questions": [{"question_id": 1, "image_id": 1, "question": "q"},'
     ' {"question_id": 1, "image_id": 2, "question": "r"}]}',
     r"questions\[1\].question_id: duplicate id 1 \(first at questions\[0\]\)"),
])
def test_question_errors(tmp_path, questions, message):
    path = tmp_path / "q.json"
    path.write_text(questions)
    assert re.search(message, _error(load_questions, path))


def _bad_annotation(tmp_path: Path, **change) -> Path:
    rec = _annotation(1, 2)
    rec.update(change)
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"annotations": [_annotation(0, 2), rec]}))
    return path


def test_annotation_errors(tmp_path):
    msg = _error(load_annotations, _bad_annotation(tmp_path, answers=_answers(["red"] * 9)))
    assert msg.endswith("a.json: annotations[1].answers: expected a list of 10 answers, got 9")
    msg = _error(load_annotations, _bad_annotation(tmp_path, answers="red"))
    assert "annotations[1].answers: expected a list" in msg
    bad = _answers(["red"] * 10)
    bad[4] = {"answer": 4}
    msg = _error(load_annotations, _bad_annotation(tmp_path, answers=bad))
    assert "annotations[1].answers[4].answer: expected a string, got 4" in msg
    msg = _error(load_annotations, _bad_annotation(tmp_path, answer_type=None))
    assert "annotations[1].answer_type: expected a string, got null" in msg
    path = _bad_annotation(tmp_path)
    rec = json.loads(path.read_text())
    del rec["annotations"][1]["multiple_choice_answer"]
    path.write_text(json.dumps(rec))
    assert "annotations[1].multiple_choice_answer: missing field" in _error(load_annotations, path)
    msg = _error(load_annotations, _bad_annotation(tmp_path, question_id=0))
    assert "annotations[1].question_id: duplicate id 0 (first at annotations[0])" in msg


def test_missing_file(tmp_path):
    assert _error(load_questions, tmp_path / "nope.json").endswith("nope.json: file not found")


def test_join_errors(tmp_path):
    qp, ap = _vqa2(tmp_path, [_question(1, 2)], [_annotation(1, 2), _annotation(9, 2)])
    with pytest.raises(PkdError, match=r"a\.json: question_id 9 has no question in q\.json"):
        load_split(qp, ap)
    qp, ap = _vqa2(tmp_path, [_question(1, 2), _question(3, 4)], [_annotation(1, 2)])
    with pytest.raises(PkdError, match=r"a\.json: no annotation for question_id 3 of q\.json"):
        load_split(qp, ap)
    qp, ap = _vqa2(tmp_path, [_question(1, 2)], [_annotation(1, 5)])
    with pytest.raises(PkdError, match=r"a\.json: question_id 1: image_id 5, but q\.json says 2"):
        load_split(qp, ap)


def test_dataset_files(tmp_path):
    assert dataset_files(tmp_path, "vqa2", "val") == (
        tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
        tmp_path / "v2_mscoco_val2014_annotations.json")
    train = dataset_files(tmp_path, "vqa2", "train2014")[1]
    assert train.name == "v2_mscoco_train2014_annotations.json"
    assert dataset_files(tmp_path, "vqa2", "test-dev") == (
        tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", None)
    assert dataset_files(tmp_path, "vqacp2", "train") == (
        tmp_path / "vqacp_v2_train_questions.json", tmp_path / "vqacp_v2_train_annotations.json")
    assert dataset_files(tmp_path, "synth", "test_iid") == (
        tmp_path / "synth_test_iid_questions.json", tmp_path / "synth_test_iid_annotations.json")
    for dataset, split, message in [("vqa2", "dev", "vqa2 has no split 'dev'"),
                                    ("vqacp2", "val", "vqacp2 has no split 'val'"),
                                    ("synth", "../x", "bad split name"),
                                    ("coco", "train", "unknown dataset 'coco'")]:
        with pytest.raises(PkdError, match=message):
            dataset_files(tmp_path, dataset, split)
