"""Step 1 of the re-split (:mod:`pkd.data.resplit`): read and check the input question and
annotation files into items, and count the groups (question type, answer)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from pkd.data.normalize import preprocess_answer
from pkd.data.resplit_config import ResplitConfig
from pkd.data.vqa import (
    Annotation,
    is_gqa,
    join_split,
    parse_annotations,
    parse_questions,
    read_json,
)
from pkd.errors import PkdError


@dataclass
class Item:
    record_q: dict  # the question record as read (coco_split added)
    record_a: dict  # the annotation record as read (coco_split added)
    ann: Annotation  # the parsed annotation (blind rules)
    qtype: str  # question type
    answer: str  # preprocess_answer(multiple_choice_answer)
    image_id: int  # the image of the question


def _source_split(path: Path, data) -> str:
    if isinstance(data, dict) and isinstance(data.get("data_subtype"), str):
        return data["data_subtype"]
    return path.stem


def _checked_records(path: Path, key: str) -> tuple[object, list]:
    """The parsed file and its record list; an empty, GQA or other non-VQA file is one line."""
    if path.is_file() and path.stat().st_size == 0:
        raise PkdError(f"{path}: empty file (expected VQA v2-format {key})")
    data = read_json(path)
    expected = (f"expected VQA v2-format {key} (a JSON object with a '{key}' list, or a "
                "VQA-CP list)")
    if is_gqa(data):
        raise PkdError(f"{path}: a GQA-format file (a dict keyed by question id); {expected}")
    if isinstance(data, dict) and not isinstance(data.get(key), list):
        keys = ", ".join(sorted(map(str, data))[:3]) or "none"
        raise PkdError(f"{path}: no '{key}' list (keys: {keys}); {expected}")
    if not isinstance(data, dict | list):
        raise PkdError(f"{path}: a JSON {type(data).__name__}; {expected}")
    records = data if isinstance(data, list) else data[key]
    if not records:
        raise PkdError(f"{path}: no {key} (the file holds an empty list)")
    return data, records


def _load_pair(qpath: Path, apath: Path) -> list[Item]:
    """The items of one questions + annotations pair (checked; one-line errors)."""
    qdata, raw_q = _checked_records(qpath, "questions")
    adata, raw_a = _checked_records(apath, "annotations")
    pairs = join_split(qpath, parse_questions(qpath, qdata), apath, parse_annotations(apath, adata))
    by_id = {r["question_id"]: r for r in raw_a}
    split = _source_split(qpath, qdata)
    items = []
    for (q, a), rq in zip(pairs, raw_q, strict=True):
        coco = q.coco_split or split
        items.append(Item({**rq, "coco_split": coco}, {**by_id[q.question_id], "coco_split": coco},
                          a, a.question_type, preprocess_answer(a.multiple_choice_answer),
                          q.image_id))
    return items


def load_items(cfg: ResplitConfig) -> list[Item]:
    """Every annotated question of the inputs, checked (one-line errors, unique ids)."""
    if len(cfg.questions) != len(cfg.annotations) or not cfg.questions:
        raise PkdError(f"{cfg.out}: give one --annotations file per --questions file")
    items: list[Item] = []
    seen: dict[int, Path] = {}
    for qpath, apath in zip(cfg.questions, cfg.annotations, strict=True):
        for it in _load_pair(Path(qpath), Path(apath)):
            qid = it.ann.question_id
            if qid in seen:
                raise PkdError(f"{qpath}: question_id {qid} is also in {seen[qid]}")
            seen[qid] = Path(qpath)
            items.append(it)
    return items


def check_types(items: list[Item], cfg: ResplitConfig) -> dict[str, Counter]:
    """``{question_type: Counter(answer)}``; a type too small to split is a PkdError."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for it in items:
        counts[it.qtype][it.answer] += 1
    for qtype, c in sorted(counts.items()):
        n = sum(c.values())
        if n < cfg.min_per_type or len(c) < 2:
            raise PkdError(f"{cfg.annotations[0]}: question type {qtype!r} has {n} questions and "
                           f"{len(c)} answer(s); splitting needs >= {cfg.min_per_type} questions "
                           "and >= 2 answers (lower --min-per-type or merge the type)")
    return counts
