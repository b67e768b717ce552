"""A VQA-CP-style re-split of any VQA v2-format data set: answer priors that change at test time.

Following the VQA-CP construction (Agrawal et al., "Don't Just Assume; Look and Answer", CVPR
2018, Sec. 3), with ``a = preprocess_answer(multiple_choice_answer)``:

1. **Groups.** Questions are grouped by ``(question_type, a)``.
2. **Whole groups to a side.** Per question type, the largest group (the favourite; ties by answer)
   stays in train; the other groups, in an order shuffled by ``seed``, go to test while the type's
   test share is below ``test_share``, else to train. So the favourite of a type in train is
   rare or absent in test and each type's answer distribution differs between the two.
3. **Concepts seen in train.** VQA-CP keeps every test concept in train. A test group whose
   answer is in a train group of another type stays whole; one whose answer is in no train group
   ("where possible within its type") is split: ``ceil(seen_share * size)`` of its questions
   (chosen by ``seed``, at least 1) go to train, the rest stay in test; a group of 1 goes to
   train. ``split_groups`` counts them per type.
4. **No image in both.** An image goes to the side holding most of its questions (ties: test);
   its questions preferring the other side are dropped (counted in ``dropped_image``), and so
   are test questions whose answer is no longer in train (``dropped_unseen``).

Shift per question type ``t`` (from the written files; ``P``/``Q`` = train/test answer
distributions of ``t``, ``f`` = train favourite):

- ``test_favourite`` = share of ``t``'s test questions whose answer is ``f``;
- ``kl`` = KL(Q || P) = sum_a Q(a) log(Q(a) / P(a)) with add-one smoothing over the union of
  ``t``'s answers, ``P(a) = (n_train(a) + 1) / (N_train + V)`` (likewise ``Q``), in nats;
- ``test_seen_same_type`` = share of ``t``'s test questions whose answer occurs in ``t``'s train
  questions (0 for pure whole-group splits; > 0 from the groups split in step 3).

Writes ``vqacp_v2_{train,test}_{questions,annotations}.json`` (lists, each record with
``coco_split``: the record's own, else the source file's ``data_subtype``, else its stem) and
``resplit_shift.json`` (config, sizes, shift per type).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pkd.data.normalize import preprocess_answer
from pkd.data.vqa import join_split, parse_annotations, parse_questions, read_json
from pkd.errors import PkdError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ResplitConfig:
    questions: tuple[Path, ...]  # VQA v2-format questions files (one per source split)
    annotations: tuple[Path, ...]  # their annotation files, same order
    out: Path  # output folder (created)
    seed: int = 0  # shuffles the non-favourite groups; same seed, identical files
    test_share: float = 0.3  # target share of each question type's questions in test
    min_per_type: int = 10  # a question type needs this many questions (and 2 answers)
    seen_share: float = 0.1  # share of a test group moved to train when its answer is unseen


@dataclass
class _Item:
    record_q: dict  # the question record as read (coco_split added)
    record_a: dict  # the annotation record as read (coco_split added)
    qtype: str  # question type
    answer: str  # preprocess_answer(multiple_choice_answer)
    image_id: int  # the image of the question


def _source_split(path: Path, data) -> str:
    if isinstance(data, dict) and isinstance(data.get("data_subtype"), str):
        return data["data_subtype"]
    return path.stem


def _records(data, key: str) -> list:
    return data if isinstance(data, list) else data[key]


def load_items(cfg: ResplitConfig) -> list[_Item]:
    """Every annotated question of the inputs, checked (one-line errors, unique ids)."""
    if len(cfg.questions) != len(cfg.annotations) or not cfg.questions:
        raise PkdError(f"{cfg.out}: give one --annotations file per --questions file")
    items: list[_Item] = []
    seen: dict[int, Path] = {}
    for qpath, apath in zip(cfg.questions, cfg.annotations, strict=True):
        qdata, adata = read_json(qpath), read_json(apath)
        pairs = join_split(qpath, parse_questions(qpath, qdata), apath, parse_annotations(apath, adata))
        raw_a = {r["question_id"]: r for r in _records(adata, "annotations")}
        split = _source_split(Path(qpath), qdata)
        for (q, a), rq in zip(pairs, _records(qdata, "questions"), strict=True):
            if q.question_id in seen:
                raise PkdError(f"{qpath}: question_id {q.question_id} is also in {seen[q.question_id]}")
            seen[q.question_id] = Path(qpath)
            coco = q.coco_split or split
            items.append(_Item({**rq, "coco_split": coco}, {**raw_a[q.question_id], "coco_split": coco},
                               a.question_type, preprocess_answer(a.multiple_choice_answer), q.image_id))
    return items


def _check_types(items: list[_Item], cfg: ResplitConfig) -> dict[str, Counter]:
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


def assign_groups(counts: dict[str, Counter], cfg: ResplitConfig) -> dict[tuple[str, str], str]:
    """Steps 2-3: ``{(question_type, answer): "train" | "test" | "split"}`` (deterministic for
    the seed); "split" = a test group whose answer no train group holds."""
    rng = random.Random(cfg.seed)
    side: dict[tuple[str, str], str] = {}
    for qtype in sorted(counts):
        c = counts[qtype]
        groups = sorted(c, key=lambda a: (-c[a], a))
        side[(qtype, groups[0])] = "train"  # the favourite
        rest = sorted(groups[1:])
        rng.shuffle(rest)
        target, in_test = cfg.test_share * sum(c.values()), 0
        for a in rest:
            to_test = in_test < target
            side[(qtype, a)] = "test" if to_test else "train"
            in_test += c[a] if to_test else 0
    train_answers = {a for (_, a), s in side.items() if s == "train"}
    for key, s in side.items():
        if s == "test" and key[1] not in train_answers:
            side[key] = "split" if counts[key[0]][key[1]] > 1 else "train"
    return side


def question_sides(items: list[_Item], side: dict, cfg: ResplitConfig) -> list[str]:
    """The side of every item: its group's, or for a "split" group ``ceil(seen_share * size)``
    of its questions (the lowest seeded keys, at least 1) in train and the rest in test."""
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if side[(it.qtype, it.answer)] == "split":
            members[(it.qtype, it.answer)].append(i)
    out = [side[(it.qtype, it.answer)] for it in items]
    rng = random.Random(cfg.seed + 1)
    for key in sorted(members):
        group = sorted(members[key], key=lambda i: items[i].record_q["question_id"])
        rng.shuffle(group)
        n_train = min(len(group) - 1, max(1, math.ceil(cfg.seen_share * len(group))))
        for j, i in enumerate(group):
            out[i] = "train" if j < n_train else "test"
    return out


def resolve_images(items: list[_Item], sides: list[str]) -> tuple[dict[str, list[_Item]], dict]:
    """Step 4: one side per image; returns the kept items per split and the drop counts."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for it, s in zip(items, sides, strict=True):
        votes[it.image_id][s] += 1
    image_side = {i: "test" if v["test"] >= v["train"] else "train" for i, v in votes.items()}
    out: dict[str, list[_Item]] = {s: [] for s in SPLITS}
    dropped_image = 0
    for it, want in zip(items, sides, strict=True):
        s = image_side[it.image_id]
        if want == s:
            out[s].append(it)
        else:
            dropped_image += 1
    train_answers = {it.answer for it in out["train"]}
    kept = [it for it in out["test"] if it.answer in train_answers]
    dropped_unseen = len(out["test"]) - len(kept)
    out["test"] = kept
    return out, {"dropped_image": dropped_image, "dropped_unseen": dropped_unseen}


def kl_smoothed(q: Counter, p: Counter) -> float:
    """KL(Q || P) in nats with add-one smoothing over the union of answers (module docstring)."""
    support = sorted(set(q) | set(p))
    nq, np_, v = sum(q.values()), sum(p.values()), len(support)
    total = 0.0
    for a in support:
        qa, pa = (q[a] + 1) / (nq + v), (p[a] + 1) / (np_ + v)
        total += qa * math.log(qa / pa)
    return total


def shift(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> dict[str, dict]:
    """Shift per question type of ``(question_type, answer)`` pairs (module docstring)."""
    tr: dict[str, Counter] = defaultdict(Counter)
    te: dict[str, Counter] = defaultdict(Counter)
    for t, a in train:
        tr[t][a] += 1
    for t, a in test:
        te[t][a] += 1
    out = {}
    for t in sorted(set(tr) | set(te)):
        p, q = tr[t], te[t]
        fav = min(p, key=lambda a: (-p[a], a)) if p else None
        n_test = sum(q.values())
        out[t] = {"train": sum(p.values()), "test": n_test, "train_favourite": fav,
                  "test_favourite": q[fav] / n_test if n_test and fav is not None else 0.0,
                  "test_seen_same_type": sum(c for a, c in q.items() if a in p) / n_test if n_test else 0.0,
                  "kl": kl_smoothed(q, p)}
    return out


def _write(out: Path, split: str, kept: list[_Item]) -> None:
    kept = sorted(kept, key=lambda it: it.record_q["question_id"])
    (out / f"vqacp_v2_{split}_questions.json").write_text(json.dumps([it.record_q for it in kept]))
    (out / f"vqacp_v2_{split}_annotations.json").write_text(json.dumps([it.record_a for it in kept]))


def resplit(cfg: ResplitConfig) -> dict:
    """Write the re-split (module docstring) into ``cfg.out``; returns the saved summary."""
    if not 0 < cfg.test_share < 1 or not 0 < cfg.seen_share < 1:
        raise PkdError(f"{cfg.out}: --test-share and --seen-share must be in (0, 1), got "
                       f"{cfg.test_share}, {cfg.seen_share}")
    items = load_items(cfg)
    side = assign_groups(_check_types(items, cfg), cfg)
    split, dropped = resolve_images(items, question_sides(items, side, cfg))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        _write(out, name, split[name])
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
        "sizes": {name: {"questions": len(split[name]), "images": len({it.image_id for it in split[name]})}
                  for name in SPLITS} | {"input_questions": len(items), **dropped},
        "shift": shift(*[[(it.qtype, it.answer) for it in split[name]] for name in SPLITS]),
    }
    for (qtype, _), s in side.items():
        row = summary["shift"].get(qtype)
        if row is not None:
            row["split_groups"] = row.get("split_groups", 0) + (s == "split")
    (out / "resplit_shift.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
