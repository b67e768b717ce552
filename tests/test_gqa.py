"""GQA questions as ``--dataset gqa``: reading the real layout and GQA accuracy in evaluate.

The files are small generated ones in the exact layout of GQA's ``*_balanced_questions.json``
(the real train file holds 943k questions, ~1.3 GB) and GQA-OOD's ``ood_testdev_tail.json``.
"""

from __future__ import annotations

import json

import pytest

from pkd.data.metric import evaluate_files, gqa_accuracy
from pkd.data.vqa import dataset_files, load_annotations, load_questions, load_split
from pkd.errors import PkdError
from pkd.train.config import DataConfig


def _record(image: str, question: str, answer: str, structural: str, detailed: str) -> dict:
    """One GQA question record with every field of the real files."""
    return {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "table (1)"}],
        "entailed": [], "equivalent": [], "question": question, "imageId": image,
        "isBalanced": True, "groups": {"global": None, "local": "10c-table_color"},
        "answer": answer, "semanticStr": "select: table (1)->query: color [0]",
        "annotations": {"answer": {}, "question": {"2": "1"}, "fullAnswer": {}},
        "types": {"detailed": detailed, "semantic": "attr", "structural": structural},
        "fullAnswer": f"The answer is {answer}.",
    }


GQA = {
    "02930152": _record("2354786", "What color is the table?", "brown", "query", "colorObject"),
    "201307251": _record("n161313", "Is the cup on the left?", "yes", "verify", "relVerify"),
    "201640614": _record("2354786", "How many legs?", "two", "query", "numberObject"),
}


@pytest.fixture
def gqa_root(tmp_path):
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(GQA))
    (tmp_path / "ood_testdev_tail.json").write_text(json.dumps({"02930152": GQA["02930152"]}))
    test = {k: {f: v[f] for f in ("question", "imageId", "isBalanced")} for k, v in GQA.items()}
    (tmp_path / "test_balanced_questions.json").write_text(json.dumps(test))
    return tmp_path


def test_reads_gqa_questions_and_answers(gqa_root):
    qpath, apath = dataset_files(gqa_root, "gqa", "testdev")
    assert qpath == apath == gqa_root / "testdev_balanced_questions.json"
    pairs = load_split(qpath, apath)
    assert [(q.question_id, q.image_id, q.question) for q, _ in pairs] == [
        (2930152, 2354786, "What color is the table?"),
        (201307251, 161313, "Is the cup on the left?"),
        (201640614, 2354786, "How many legs?")]
    a = pairs[0][1]
    assert (a.question_type, a.answer_type, a.multiple_choice_answer) == (
        "colorObject", "query", "brown")
    assert a.answers == ("brown",) * 10


def test_split_files_and_ood(gqa_root):
    assert dataset_files(gqa_root, "gqa", "ood_testdev_tail") == (
        gqa_root / "ood_testdev_tail.json", gqa_root / "ood_testdev_tail.json")
    (gqa_root / "val_bal_tail_-0.1.json").write_text(json.dumps(GQA))  # GQA-OOD alpha_tail/
    assert (dataset_files(gqa_root, "gqa", "val_bal_tail_-0.1")[0]
            == gqa_root / "val_bal_tail_-0.1.json")
    with pytest.raises(PkdError, match="bad split name"):
        dataset_files(gqa_root, "gqa", "../x")
    qpath, apath = dataset_files(gqa_root, "gqa", "test")
    assert apath is None and len(load_questions(qpath)) == 3
    with pytest.raises(PkdError, match=r"answer: missing field"):
        load_annotations(qpath)
    assert DataConfig(dataset="gqa").dataset == "gqa"


def test_gqa_accuracy_golden():
    assert gqa_accuracy("brown", "brown") == 1.0
    assert gqa_accuracy("brown", " Brown\n") == 1.0  # same normalization on both sides
    assert gqa_accuracy("two", "2") == 1.0  # number words -> digits, as in the vocabulary
    assert gqa_accuracy("brown", "red") == 0.0
    assert gqa_accuracy("left", "the left") == 1.0  # articles dropped on both sides


def test_evaluate_scores_gqa_exact_match(gqa_root, tmp_path):
    qpath, apath = dataset_files(gqa_root, "gqa", "testdev")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": 2930152, "answer": "brown"},
                                   {"question_id": 201307251, "answer": "no"}]))
    m = evaluate_files(qpath, apath, results)
    assert m["metric"] == "gqa"
    assert m["overall"] == round(100 / 3, 2)  # 1 right, 1 wrong, 1 missing
    assert m["perAnswerType"] == {"query": 50.0, "verify": 0.0}
    assert m["perQuestionType"] == {"colorObject": 100.0, "numberObject": 0.0, "relVerify": 0.0}
    assert (m["questions"], m["answered"], m["missing"]) == (3, 2, 1)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["02930152"].update(imageId="img7"), r"imageId: expected a numeric id"),
    (lambda d: d["02930152"].pop("types"), r"types: expected an object"),
    (lambda d: d.update({"2930152": d["02930152"]}), r"same number as '02930152'"),
])
def test_bad_gqa_files_are_one_line(tmp_path, edit, message):
    data = json.loads(json.dumps(GQA))
    edit(data)
    path = tmp_path / "val_balanced_questions.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PkdError, match=message) as err:
        load_split(path, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
