"""A VQA-CP-style re-split of any VQA v2-format data set: answer priors that change at test time.

VQA-CP (Agrawal et al., "Don't Just Assume; Look and Answer", CVPR 2018, Sec. 3) re-organizes
VQA's train + val: the (question, image) pairs are grouped by (question type, ground-truth
answer), the groups are re-split greedily into train and test so that every question type's
answer distribution differs between the two, every test concept is kept seen in train, and an
image may have questions on both sides (VQA-CP v2: 121k train and 98k test images out of COCO's
123k). Here, with ``a = preprocess_answer(multiple_choice_answer)``, ``n_g`` the size of group
``g = (t, a)``, ``N_t`` the questions of type ``t``, ``r = test_share`` and ``s = shift``:

1. **Groups** ``g = (t, a)``.
2. **Whole-group sides** ``w_g`` in {0, 1} (1 = test): per type the largest group (the
   favourite; ties by answer) gets 0; the others, in an order shuffled by ``seed``, get 1 while
   the type's test count is below ``r * N_t``, else 0 (the greedy re-split).
3. **Shift.** Group ``g`` sends ``k_g`` of its questions to test, ``k_g`` = ``n_g * f_g`` rounded
   stochastically (seeded: ``floor(x)`` plus 1 with probability ``x - floor(x)``), with

       f_g = (1 - s) * r + s * w_g

   ``s = 0``: every group split at ``r`` (an i.i.d. split stratified by group, no shift);
   ``s = 1``: whole groups, as VQA-CP (a type's test holds none of its training favourite).
   A type's expected test share is ``(1 - s) * r + s * W_t`` (``W_t`` its step-2 share); when
   ``W_t = r`` its test answers are a mixture: ``1 - s`` of an i.i.d. draw, ``s`` of VQA-CP's.
4. **Concepts seen in train.** A group whose answer would be in no train question of any type
   keeps ``min(n_g - 1, max(1, ceil(seen_share * n_g)))`` questions in train (a group of 1 goes
   to train); ``split_groups`` counts them per type.
5. **Questions.** A group's questions, sorted by id and shuffled by ``seed``: the first ``k_g``
   go to test, the rest to train.
6. **Images.** Shared by the splits by default, as in VQA-CP. With ``disjoint_images`` an image
   goes to the side holding most of its questions (ties: test) and its other questions are
   dropped (``dropped_image``). Test questions whose answer is then in no train question are
   dropped (``dropped_unseen``; 0 with shared images).
7. **Checks, then writing.** Achieved test share ``x = |test| / (|train| + |test|)``: ``x <
   r / 2`` is refused (nothing written), ``|x - r| > 0.2 r`` is a warning. An empty split, an
   empty input or a non-VQA (e.g. GQA) file is refused. Blind rules (below) warn when the
   training favourite is the best of them (``s > 0``: the priors barely moved) or when the
   inverted prior scores >= 90% on the yes/no test questions. All files are written,
   atomically, only after everything is computed.

**The default shift, s = 0.3.** In expectation every group sends ``>= (1 - s) r = 21%`` of its
questions to test and keeps ``>= (1 - s)(1 - r) = 49%`` in train, so both answers of a yes/no
type are on both sides; a group chosen for test in step 2 sends ``(1 - s) r + s = 51%`` of its
questions to test, 2.4 times the favourite's rate (odds ratio 3.9). For a yes/no type whose
majority answer has share ``m`` (the minority chosen for test, ``r = 0.3``) the majority's share
goes from train to test as 62% -> 29% (m = 0.5), 71% -> 38% (0.6), 79% -> 49% (0.7), 87% -> 62%
(0.8): the prior moves by >= 24 points, yet for 0.5 <= m <= 0.8 neither the training favourite
nor the inverted prior answers more than 71% of the type's test questions. At s = 1 the test
questions of a yes/no type all have the minority answer (the inverted prior is always right);
at s = 0.5 it is right on up to 81% (m = 0.5), at s = 0.2 on up to 65%, with a prior move of only
>= 16 points. The default suits yes/no types near balance (VQA v2 was balanced with
complementary images); a strongly skewed type (m > 0.7) keeps its favourite as the test
majority at s = 0.3, and the blind-rule warning says so: raise ``s`` for such data.

**Where this deviates from the paper, and why.** (a) VQA-CP's concepts are words of the question
and of the answer (the C-VQA concept extraction); we keep only answers seen in train (what a
classifier over the training answers needs) and do not check question words. (b) The shift knob
is ours. Whole groups (``s = 1``) leave only the minority answer in a yes/no type's test, so the
inverted prior solves it; VQA-CP v2's yes/no test questions are no such complete flip (UpDn
keeps about 42% on them), so the default keeps part of every group on both sides. (c) The greedy
order is a seeded shuffle and the target is a test share per type (VQA-CP v2 puts about a third
of all questions in test: 220k of 658k). (d) Question types and answers are the input files' own
(``question_type``; ``preprocess_answer``).

**Shift per question type** ``t`` (from the kept questions; ``P``/``Q`` = train/test answer
distributions of ``t``, ``f`` = train favourite):

- ``test_favourite`` = share of ``t``'s test questions whose answer is ``f``;
- ``kl`` = KL(Q || P) = sum_a Q(a) log(Q(a) / P(a)) with add-one smoothing over the union of
  ``t``'s answers, ``P(a) = (n_train(a) + 1) / (N_train + V)`` (likewise ``Q``), in nats;
- ``test_seen_same_type`` = share of ``t``'s test questions whose answer occurs in ``t``'s train
  questions.

**Blind rules** (:mod:`pkd.data.blind_rules`): each rule picks one answer per question type from
the training split alone (there is no val split, so "best constant on val" is tuned on train)
and is scored on test with the official accuracy; ``best blind`` is their maximum, ``oracle
constant`` the test split's own best constant (not blind). The table is scored on at most
``blind_sample`` test questions and tunes "best constant on val" on at most ``blind_sample``
train questions (seeded samples: the best constants cost candidates x questions per type, about
a minute for 33k train questions; a sample of 5000 has a standard error <= 0.71 points). The
best rule, the training favourite and the inverted prior (``least frequent``) are also scored
per answer type on the whole test split.

Writes ``vqacp_v2_{train,test}_{questions,annotations}.json`` (lists, each record with
``coco_split``: the record's own, else the source file's ``data_subtype``, else its stem) and
``resplit_shift.json`` (config, sizes, achieved test share, warnings, shift per type, blind
rules).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pkd.data.blind_rules import best_blind_rule, blind_rule_table, blind_rules
from pkd.data.normalize import preprocess_answer
from pkd.data.prior import constant_answer_accuracy
from pkd.data.vqa import (
    Annotation,
    is_gqa,
    join_split,
    parse_annotations,
    parse_questions,
    read_json,
)
from pkd.errors import PkdError
from pkd.fsio import check_writable, write_json

SPLITS = ("train", "test")
SHARE_WARN = 0.2  # warn when the achieved test share is off by more than this (relative)
SHIFT_FILE = "resplit_shift.json"
ANSWER_TYPES_SCORED = ("favourite", "least frequent")  # scored per answer type beside the best
YES_NO_WARN = 90.0  # warn when the inverted prior scores this much (%) on yes/no test questions


@dataclass(frozen=True)
class ResplitConfig:
    questions: tuple[Path, ...]  # VQA v2-format questions files (one per source split)
    annotations: tuple[Path, ...]  # their annotation files, same order
    out: Path  # output folder (created)
    seed: int = 0  # shuffles groups and questions; same seed, identical files
    test_share: float = 0.3  # target share of each question type's questions in test
    min_per_type: int = 10  # a question type needs this many questions (and 2 answers)
    seen_share: float = 0.1  # share of a group kept in train when its answer is otherwise unseen
    shift: float = 0.3  # 0 = i.i.d. split of every group, 1 = whole groups (module docstring)
    disjoint_images: bool = False  # True: no image in both splits (questions dropped)
    blind_sample: int = 5000  # blind-rule table on at most this many test (and val) questions; 0 = all


@dataclass
class _Item:
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


def _load_pair(qpath: Path, apath: Path) -> list[_Item]:
    """The items of one questions + annotations pair (checked; one-line errors)."""
    qdata, raw_q = _checked_records(qpath, "questions")
    adata, raw_a = _checked_records(apath, "annotations")
    pairs = join_split(qpath, parse_questions(qpath, qdata), apath, parse_annotations(apath, adata))
    by_id = {r["question_id"]: r for r in raw_a}
    split = _source_split(qpath, qdata)
    items = []
    for (q, a), rq in zip(pairs, raw_q, strict=True):
        coco = q.coco_split or split
        items.append(_Item({**rq, "coco_split": coco}, {**by_id[q.question_id], "coco_split": coco},
                           a, a.question_type, preprocess_answer(a.multiple_choice_answer), q.image_id))
    return items


def load_items(cfg: ResplitConfig) -> list[_Item]:
    """Every annotated question of the inputs, checked (one-line errors, unique ids)."""
    if len(cfg.questions) != len(cfg.annotations) or not cfg.questions:
        raise PkdError(f"{cfg.out}: give one --annotations file per --questions file")
    items: list[_Item] = []
    seen: dict[int, Path] = {}
    for qpath, apath in zip(cfg.questions, cfg.annotations, strict=True):
        for it in _load_pair(Path(qpath), Path(apath)):
            qid = it.ann.question_id
            if qid in seen:
                raise PkdError(f"{qpath}: question_id {qid} is also in {seen[qid]}")
            seen[qid] = Path(qpath)
            items.append(it)
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


def whole_group_sides(counts: dict[str, Counter], cfg: ResplitConfig) -> dict[tuple[str, str], int]:
    """Step 2: ``{(question_type, answer): w}``, 1 = test (deterministic for the seed)."""
    rng = random.Random(cfg.seed)
    side: dict[tuple[str, str], int] = {}
    for qtype in sorted(counts):
        c = counts[qtype]
        groups = sorted(c, key=lambda a: (-c[a], a))
        side[(qtype, groups[0])] = 0  # the favourite
        rest = sorted(groups[1:])
        rng.shuffle(rest)
        target, in_test = cfg.test_share * sum(c.values()), 0
        for a in rest:
            side[(qtype, a)] = int(in_test < target)
            in_test += c[a] * side[(qtype, a)]
    return side


def group_test_counts(counts: dict[str, Counter], whole: dict[tuple[str, str], int],
                      cfg: ResplitConfig) -> tuple[dict[tuple[str, str], int], set]:
    """Steps 3-4: ``k_g`` per group and the groups cut back to keep their answer seen."""
    rng = random.Random(cfg.seed + 2)
    k: dict[tuple[str, str], int] = {}
    for g in sorted(whole):
        x = counts[g[0]][g[1]] * ((1 - cfg.shift) * cfg.test_share + cfg.shift * whole[g])
        k[g] = math.floor(x) + (rng.random() < x - math.floor(x))
    train_answers = {a for (t, a), kg in k.items() if counts[t][a] > kg}
    cut = set()
    for t, a in sorted(k):
        n = counts[t][a]
        if a not in train_answers:
            k[(t, a)] = n - min(n - 1, max(1, math.ceil(cfg.seen_share * n))) if n > 1 else 0
            cut.add((t, a))
    return k, cut


def question_sides(items: list[_Item], k: dict[tuple[str, str], int], cfg: ResplitConfig) -> list[str]:
    """Step 5: the side of every item (the first ``k_g`` seeded members of a group in test)."""
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        members[(it.qtype, it.answer)].append(i)
    out = ["train"] * len(items)
    rng = random.Random(cfg.seed + 1)
    for g in sorted(members):
        group = sorted(members[g], key=lambda i: items[i].ann.question_id)
        rng.shuffle(group)
        for i in group[:k[g]]:
            out[i] = "test"
    return out


def disjoint_images(items: list[_Item], sides: list[str]) -> tuple[dict[str, list[_Item]], int]:
    """Step 6 with ``disjoint_images``: one side per image; kept items per split, drop count."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for it, s in zip(items, sides, strict=True):
        votes[it.image_id][s] += 1
    image_side = {i: "test" if v["test"] >= v["train"] else "train" for i, v in votes.items()}
    out: dict[str, list[_Item]] = {s: [] for s in SPLITS}
    for it, want in zip(items, sides, strict=True):
        if want == image_side[it.image_id]:
            out[want].append(it)
    return out, len(items) - len(out["train"]) - len(out["test"])


def place_images(items: list[_Item], sides: list[str], cfg: ResplitConfig) -> tuple[dict, dict]:
    """Step 6: kept items per split and ``{"dropped_image", "dropped_unseen"}``."""
    if cfg.disjoint_images:
        split, dropped_image = disjoint_images(items, sides)
    else:
        split = {s: [it for it, want in zip(items, sides, strict=True) if want == s] for s in SPLITS}
        dropped_image = 0
    train_answers = {it.answer for it in split["train"]}
    kept = [it for it in split["test"] if it.answer in train_answers]
    dropped_unseen = len(split["test"]) - len(kept)
    split["test"] = kept
    return split, {"dropped_image": dropped_image, "dropped_unseen": dropped_unseen}


def _inputs(cfg: ResplitConfig) -> str:
    """The input questions files, for error lines."""
    more = f" (+{len(cfg.questions) - 1} more)" if len(cfg.questions) > 1 else ""
    return f"{cfg.questions[0]}{more}"


def check_share(split: dict[str, list[_Item]], dropped: dict, cfg: ResplitConfig) -> tuple[float, list[str]]:
    """Step 7: the achieved test share and its warnings; an empty split or a share below half
    the requested one is a PkdError (nothing has been written yet)."""
    n = {s: len(split[s]) for s in SPLITS}
    lost = f"{dropped['dropped_image']} dropped (image in both), {dropped['dropped_unseen']} (answer unseen)"
    for s in SPLITS:
        if not n[s]:
            raise PkdError(f"{_inputs(cfg)}: the {s} split is empty ({n['train']} train, "
                           f"{n['test']} test questions kept; {lost}); nothing written")
    share = n["test"] / (n["train"] + n["test"])
    hint = "(lower --shift, drop --disjoint-images or raise --test-share)"
    if share < cfg.test_share / 2:
        raise PkdError(f"{_inputs(cfg)}: achieved test share {share:.3f} is below half the "
                       f"requested {cfg.test_share:g} ({n['test']} test of {n['train'] + n['test']} "
                       f"kept questions; {lost}); nothing written {hint}")
    warnings = []
    if abs(share - cfg.test_share) > SHARE_WARN * cfg.test_share:
        warnings.append(f"achieved test share {share:.3f} differs from the requested "
                        f"{cfg.test_share:g} by {abs(share / cfg.test_share - 1):.0%} ({lost})")
    return share, warnings


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


def per_answer_type(answers: dict[str, str], test: list[Annotation]) -> dict[str, float]:
    """Official accuracy (%) of one blind rule on ``test`` per answer type."""
    by_type: dict[str, list[Annotation]] = defaultdict(list)
    for ann in test:
        by_type[ann.answer_type].append(ann)
    return {t: round(constant_answer_accuracy(answers, anns)["accuracy"], 2)
            for t, anns in sorted(by_type.items())}


def _sample(anns: list[Annotation], cap: int, rng: random.Random) -> list[Annotation]:
    """At most ``cap`` of ``anns`` (all when ``cap`` is 0), drawn by ``rng``, in their order."""
    if not cap or len(anns) <= cap:
        return anns
    return [anns[i] for i in sorted(rng.sample(range(len(anns)), cap))]


def blind_section(split: dict[str, list[_Item]], cfg: ResplitConfig) -> dict:
    """The blind-rule table (rules from train, scored on test) and per-answer-type scores."""
    train, test = ([it.ann for it in split[s]] for s in SPLITS)
    rng = random.Random(cfg.seed + 3)
    val, scored_on = _sample(train, cfg.blind_sample, rng), _sample(test, cfg.blind_sample, rng)
    full = blind_rule_table(train, val, {"test": scored_on})
    best, score = best_blind_rule(full, "test")
    rules = blind_rules(train, val)
    per = {name: per_answer_type(rules[name], test) for name in (*ANSWER_TYPES_SCORED, best)}
    return {"scored_on": "test", "test_questions": len(scored_on), "val": "train",
            "val_questions": len(val), "table": {r: row["test"] for r, row in full.items()},
            "best": {"rule": best, "test": score}, "per_answer_type": per}


def blind_warnings(blind: dict, cfg: ResplitConfig) -> list[str]:
    """Warnings when the split is no test of grounding: the priors did not move (the training
    favourite is the best blind rule) or the inverted prior solves the yes/no questions."""
    out = []
    best, score = blind["best"]["rule"], blind["best"]["test"]
    if best == "favourite" and cfg.shift > 0:
        out.append(f"the training favourite is the best blind rule on test ({score:.2f}%): the "
                   "answer priors barely moved (raise --shift)")
    inverted = blind["per_answer_type"]["least frequent"].get("yes/no")
    if inverted is not None and inverted >= YES_NO_WARN:
        out.append(f"the inverted prior scores {inverted:.2f}% on the yes/no test questions: "
                   "they are a flip of train (lower --shift)")
    return out


def _check_config(cfg: ResplitConfig) -> None:
    if not 0 < cfg.test_share < 1 or not 0 < cfg.seen_share < 1:
        raise PkdError(f"{cfg.out}: --test-share and --seen-share must be in (0, 1), got "
                       f"{cfg.test_share}, {cfg.seen_share}")
    if not 0 <= cfg.shift <= 1:
        raise PkdError(f"{cfg.out}: --shift must be in [0, 1], got {cfg.shift}")
    if cfg.blind_sample < 0:
        raise PkdError(f"{cfg.out}: --blind-sample must be >= 0, got {cfg.blind_sample}")


def _check_out(out: Path) -> None:
    """The output folder, or its nearest existing parent, is writable (nothing is created)."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    check_writable(probe, "output folder" if probe == out else f"parent of output folder {out}")


def _summary(cfg: ResplitConfig, items: list[_Item], split: dict, dropped: dict,
             cut: set, share: float, warnings: list[str]) -> dict:
    images = {s: {it.image_id for it in split[s]} for s in SPLITS}
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
        "sizes": {s: {"questions": len(split[s]), "images": len(images[s])} for s in SPLITS}
        | {"input_questions": len(items), "images_in_both": len(images["train"] & images["test"]),
           **dropped},
        "test_share": {"requested": cfg.test_share, "achieved": share},
        "warnings": warnings,
        "shift": shift(*[[(it.qtype, it.answer) for it in split[s]] for s in SPLITS]),
    }
    for row in summary["shift"].values():
        row["split_groups"] = 0
    for t, _ in cut:
        if t in summary["shift"]:
            summary["shift"][t]["split_groups"] += 1
    return summary


def _write_all(out: Path, split: dict[str, list[_Item]], summary: dict) -> None:
    """Every output file, atomically; the summary last (an old one is removed first)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SHIFT_FILE).unlink(missing_ok=True)
    for s in SPLITS:
        kept = sorted(split[s], key=lambda it: it.ann.question_id)
        write_json(out / f"vqacp_v2_{s}_questions.json", [it.record_q for it in kept])
        write_json(out / f"vqacp_v2_{s}_annotations.json", [it.record_a for it in kept])
    write_json(out / SHIFT_FILE, summary, indent=2)


def resplit(cfg: ResplitConfig) -> dict:
    """Write the re-split (module docstring) into ``cfg.out``; returns the saved summary."""
    _check_config(cfg)
    out = Path(cfg.out)
    _check_out(out)
    items = load_items(cfg)
    counts = _check_types(items, cfg)
    k, cut = group_test_counts(counts, whole_group_sides(counts, cfg), cfg)
    split, dropped = place_images(items, question_sides(items, k, cfg), cfg)
    share, warnings = check_share(split, dropped, cfg)
    summary = _summary(cfg, items, split, dropped, cut, share, warnings)
    summary["blind_rules"] = blind_section(split, cfg)
    summary["warnings"] += blind_warnings(summary["blind_rules"], cfg)
    _write_all(out, split, summary)
    return summary

