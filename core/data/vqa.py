"""Readers for the VQA v2 and VQA-CP v2 question / annotation files (and the synthetic copy).

Formats (auto-detected: a dict with a record list is VQA v2, a plain list is VQA-CP v2):

- VQA v2 questions ``v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json``:
  ``{info, task_type, data_type, data_subtype, license, questions: [{image_id, question,
  question_id}]}``
- VQA v2 annotations ``v2_mscoco_{train2014,val2014}_annotations.json``: ``{info, license,
  data_type, data_subtype, annotations: [{question_id, image_id, question_type, answer_type,
  multiple_choice_answer, answers: [{answer, answer_confidence, answer_id}] x 10}]}``
- VQA-CP v2 ``vqacp_v2_{train,test}_{questions,annotations}.json``: plain lists of the same
  records, each with an extra ``coco_split`` ("train2014" / "val2014": where the image lives).
- synthetic benchmark ``synth_{split}_{questions,annotations}.json``: the VQA v2 layout.
- GQA ``{train,val,testdev,test,challenge}_balanced_questions.json`` and GQA-OOD's
  ``ood_{val,testdev}_{all,head,tail}.json``: one dict ``{question_id: {question, imageId,
  answer, fullAnswer, types: {structural, semantic, detailed}, ...}}`` holding questions and
  answers. Ids are digit strings (``"n161313"`` image ids keep their digits); an annotation gets
  ``answer`` as its 10 answers, ``types.detailed`` as question type, ``types.structural`` as
  answer type. Answers are scored by :func:`pkd.data.metric.gqa_accuracy`.

Every problem is one :class:`PkdError` line naming the file and the record, e.g.
``"x.json: annotations[12].answers: expected a list of 10 answers, got 9"``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pkd.errors import PkdError

NUM_ANSWERS = 10  # human answers per question in VQA v2 / VQA-CP v2
DATASETS = ("vqa2", "vqacp2", "synth", "gqa")
VQA2_SPLITS = {"train": "train2014", "val": "val2014", "test": "test2015",
               "test-dev": "test-dev2015"}  # short name -> COCO subtype in the file names
VQA2_ANNOTATED = ("train2014", "val2014")  # test splits have no public annotations
VQACP2_SPLITS = ("train", "test")
GQA_UNANNOTATED = ("test", "challenge", "submission")  # GQA files without public answers


@dataclass(frozen=True)
class Question:
    question_id: int  # unique question id
    image_id: int  # COCO image id
    question: str  # question text
    coco_split: str | None = None  # COCO folder of the image ("val2014"); VQA-CP only


@dataclass(frozen=True)
class Annotation:
    question_id: int  # the question this annotates
    image_id: int  # must agree with the question's image
    question_type: str  # e.g. "what color is the"
    answer_type: str  # "yes/no" | "number" | "other"
    multiple_choice_answer: str  # the most common human answer
    answers: tuple[str, ...]  # the 10 human answers, raw (not normalized)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line PkdError."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PkdError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise PkdError(f"{path}: is a folder, expected a JSON file") from None
    except json.JSONDecodeError as err:
        if not err.doc.strip():
            raise PkdError(f"{path}: empty file (expected JSON)") from None
        raise PkdError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except UnicodeDecodeError:
        raise PkdError(f"{path}: not valid JSON (not UTF-8 text)") from None


def _records(path: str | Path, data: Any, key: str) -> tuple[list, str]:
    """The record list of a VQA v2 dict (``data[key]``) or a VQA-CP list, and its message name."""
    if isinstance(data, list):
        return data, ""
    if not isinstance(data, dict):
        raise PkdError(f"{path}: expected a JSON object with '{key}' or a list of {key}")
    if key not in data:
        raise PkdError(f"{path}: no '{key}' field (is this a {key} file?)")
    if not isinstance(data[key], list):
        raise PkdError(f"{path}: {key}: expected a list, got {type(data[key]).__name__}")
    return data[key], key


def _field(rec: Any, name: str, kind: type, loc: str) -> Any:
    """``rec[name]`` checked to be of ``kind`` (int excludes bool); ``loc`` = "file: list[i]"."""
    if not isinstance(rec, dict):
        raise PkdError(f"{loc}: expected an object, got {type(rec).__name__}")
    if name not in rec:
        raise PkdError(f"{loc}.{name}: missing field")
    value = rec[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = {int: "an integer", str: "a string", list: "a list"}[kind]
        raise PkdError(f"{loc}.{name}: expected {want}, got {json.dumps(value)[:40]}")
    return value


def _check_unique(path: str | Path, where: str, ids: list[int]) -> None:
    first: dict[int, int] = {}
    for i, qid in enumerate(ids):
        if qid in first:
            raise PkdError(f"{path}: {where}[{i}].question_id: duplicate id {qid} "
                           f"(first at {where}[{first[qid]}])")
        first[qid] = i


def load_questions(path: str | Path) -> list[Question]:
    """Questions of a VQA v2 / VQA-CP v2 / synthetic / GQA questions file, in file order."""
    return parse_questions(path, read_json(path))


def parse_questions(path: str | Path, data: Any) -> list[Question]:
    """:func:`load_questions` of already parsed JSON ``data`` (``path`` names it in errors); a
    file without any question is refused (nothing could train on or score it)."""
    if is_gqa(data):
        return gqa_questions(path, data)
    records, where = _records(path, data, "questions")
    if not records:
        raise PkdError(f"{path}: no questions (an empty list)")
    out = []
    for i, rec in enumerate(records):
        loc = f"{path}: {where}[{i}]"
        split = rec.get("coco_split") if isinstance(rec, dict) else None
        if split is not None and not isinstance(split, str):
            raise PkdError(f"{loc}.coco_split: expected a string, got {json.dumps(split)[:40]}")
        out.append(Question(question_id=_field(rec, "question_id", int, loc),
                            image_id=_field(rec, "image_id", int, loc),
                            question=_field(rec, "question", str, loc), coco_split=split))
    _check_unique(path, where, [q.question_id for q in out])
    return out


def _answers(rec: dict, loc: str) -> tuple[str, ...]:
    answers = _field(rec, "answers", list, loc)
    if len(answers) != NUM_ANSWERS:
        raise PkdError(f"{loc}.answers: expected a list of {NUM_ANSWERS} answers, "
                       f"got {len(answers)}")
    return tuple(_field(a, "answer", str, f"{loc}.answers[{j}]") for j, a in enumerate(answers))


def load_annotations(path: str | Path) -> list[Annotation]:
    """Annotations of a VQA v2 / VQA-CP v2 / synthetic / GQA annotations file, in file order."""
    return parse_annotations(path, read_json(path))


def parse_annotations(path: str | Path, data: Any) -> list[Annotation]:
    """:func:`load_annotations` of already parsed JSON ``data`` (``path`` names it in errors)."""
    if is_gqa(data):
        return gqa_annotations(path, data)
    records, where = _records(path, data, "annotations")
    out = []
    for i, rec in enumerate(records):
        loc = f"{path}: {where}[{i}]"
        out.append(Annotation(
            question_id=_field(rec, "question_id", int, loc),
            image_id=_field(rec, "image_id", int, loc),
            question_type=_field(rec, "question_type", str, loc),
            answer_type=_field(rec, "answer_type", str, loc),
            multiple_choice_answer=_field(rec, "multiple_choice_answer", str, loc),
            answers=_answers(rec, loc),
        ))
    _check_unique(path, where, [a.question_id for a in out])
    return out


def load_split(questions_path: str | Path, annotations_path: str | Path | None = None,
               ) -> list[tuple[Question, Annotation | None]]:
    """``(question, annotation)`` pairs joined by question_id, in question-file order.

    Without annotations (test splits) every annotation is None. With them, both files must cover
    the same question ids and agree on every image id.
    """
    data = read_json(questions_path)
    questions = parse_questions(questions_path, data)
    if annotations_path is None:
        return [(q, None) for q in questions]
    same = Path(annotations_path).resolve() == Path(questions_path).resolve()  # GQA: one file
    annotations = parse_annotations(annotations_path, data if same else read_json(annotations_path))
    return join_split(questions_path, questions, annotations_path, annotations)


def join_split(questions_path: str | Path, questions: list[Question],
               annotations_path: str | Path, annotations: list[Annotation],
               ) -> list[tuple[Question, Annotation]]:
    """:func:`load_split`'s join of parsed questions and annotations (paths name the files)."""
    by_id = {a.question_id: a for a in annotations}
    qname = Path(questions_path).name
    known = {q.question_id for q in questions}
    for qid in by_id:
        if qid not in known:
            raise PkdError(f"{annotations_path}: question_id {qid} has no question in {qname}")
    pairs = []
    for q in questions:
        a = by_id.get(q.question_id)
        if a is None:
            raise PkdError(f"{annotations_path}: no annotation for question_id {q.question_id} "
                           f"of {qname}")
        if a.image_id != q.image_id:
            raise PkdError(f"{annotations_path}: question_id {q.question_id}: image_id "
                           f"{a.image_id}, but {qname} says {q.image_id}")
        pairs.append((q, a))
    return pairs


def is_gqa(data: Any) -> bool:
    """True for a GQA questions file: a non-empty dict of question records keyed by id."""
    if not isinstance(data, dict) or not data or "questions" in data or "annotations" in data:
        return False
    first = next(iter(data.values()))
    return isinstance(first, dict) and "imageId" in first


def gqa_int_id(value: Any, loc: str) -> int:
    """A GQA id string as an int: ``"2354786"`` -> 2354786, ``"n161313"`` -> 161313 (the trailing
    digits, as :class:`pkd.data.images.ImageIndex` reads image file names)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value if isinstance(value, str) else ""
    m = re.fullmatch(r"n?(\d+)", text)
    if m is None:
        raise PkdError(f"{loc}: expected a numeric id (or n<digits>), got {json.dumps(value)[:40]}")
    return int(m.group(1))


def _gqa_items(path: str | Path, data: dict):
    """``(loc, question_id, record)`` of a GQA dict, checked: object records, unique int ids."""
    first: dict[int, str] = {}
    for key, rec in data.items():
        loc = f"{path}: [{json.dumps(key)}]"
        if not isinstance(rec, dict):
            raise PkdError(f"{loc}: expected an object, got {type(rec).__name__}")
        qid = gqa_int_id(key, f"{loc} (question id)")
        if qid in first:
            raise PkdError(f"{loc}: question id {key!r} is the same number as {first[qid]!r}")
        first[qid] = key
        yield loc, qid, rec


def gqa_questions(path: str | Path, data: dict) -> list[Question]:
    """Questions of a GQA ``*_questions.json`` (``{qid: {question, imageId, ...}}``), file order."""
    return [Question(question_id=qid,
                     image_id=gqa_int_id(_field(rec, "imageId", str, loc), f"{loc}.imageId"),
                     question=_field(rec, "question", str, loc))
            for loc, qid, rec in _gqa_items(path, data)]


def gqa_annotations(path: str | Path, data: dict) -> list[Annotation]:
    """Annotations of a GQA questions file: ``answer`` repeated as the 10 answers,
    ``types.detailed`` as question type and ``types.structural`` as answer type."""
    out = []
    for loc, qid, rec in _gqa_items(path, data):
        if "answer" not in rec:
            raise PkdError(f"{loc}.answer: missing field (test / challenge files have no answers)")
        answer = _field(rec, "answer", str, loc)
        types = rec.get("types")
        if not isinstance(types, dict) or not all(
                isinstance(types.get(k), str) for k in ("detailed", "structural")):
            raise PkdError(f"{loc}.types: expected an object with 'detailed' and 'structural'")
        out.append(Annotation(
            question_id=qid,
            image_id=gqa_int_id(_field(rec, "imageId", str, loc), f"{loc}.imageId"),
            question_type=types["detailed"], answer_type=types["structural"],
            multiple_choice_answer=answer, answers=(answer,) * NUM_ANSWERS))
    return out


def _gqa_files(root: Path, split: str) -> tuple[Path, Path | None]:
    """GQA: ``train``/``val``/``testdev``/... -> ``{split}_balanced_questions.json``; a GQA-OOD
    name (``ood_testdev_tail``) or any other ``*.json`` stem under root (GQA-OOD's
    ``val_bal_tail_0.2``) -> ``{split}.json``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split) or split.startswith("."):
        raise PkdError(f"{root}: bad split name {split!r} (letters, digits, _ . and - only)")
    path = root / f"{split}_balanced_questions.json"
    if split.startswith("ood_") or (not path.exists() and (root / f"{split}.json").exists()):
        path = root / f"{split}.json"
    return path, (None if split in GQA_UNANNOTATED else path)


def dataset_files(root: str | Path, dataset: str, split: str) -> tuple[Path, Path | None]:
    """Conventional ``(questions, annotations)`` paths of a split under ``root``.

    vqa2: split "train" | "val" | "test" | "test-dev" (or "train2014", ...); test splits have no
    annotations (None). vqacp2: "train" | "test". synth: any split name the generator wrote.
    gqa: ``{split}_balanced_questions.json`` (questions and answers in one file: both paths are
    the same; test / challenge / submission have no answers), or ``{split}.json`` for GQA-OOD's
    ``ood_{val,testdev}_{all,head,tail}``.
    """
    root = Path(root)
    if dataset == "vqa2":
        sub = VQA2_SPLITS.get(split, split)
        if sub not in VQA2_SPLITS.values():
            raise PkdError(f"{root}: vqa2 has no split {split!r} "
                           f"(expected one of {', '.join(VQA2_SPLITS)})")
        ann = root / f"v2_mscoco_{sub}_annotations.json" if sub in VQA2_ANNOTATED else None
        return root / f"v2_OpenEnded_mscoco_{sub}_questions.json", ann
    if dataset == "vqacp2":
        if split not in VQACP2_SPLITS:
            raise PkdError(f"{root}: vqacp2 has no split {split!r} (expected train or test)")
        return (root / f"vqacp_v2_{split}_questions.json",
                root / f"vqacp_v2_{split}_annotations.json")
    if dataset == "synth":
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise PkdError(f"{root}: bad split name {split!r} (letters, digits, _ and - only)")
        return root / f"synth_{split}_questions.json", root / f"synth_{split}_annotations.json"
    if dataset == "gqa":
        return _gqa_files(root, split)
    raise PkdError(f"{root}: unknown dataset {dataset!r} (expected {', '.join(DATASETS)})")
