"""What the re-split (:mod:`pkd.data.resplit`) measures on its result: the answer shift per
question type and the blind rules scored on test."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

from pkd.data.blind_rules import best_blind_rule, blind_rule_table, blind_rules
from pkd.data.prior import constant_answer_accuracy
from pkd.data.resplit_config import SPLITS, ResplitConfig
from pkd.data.resplit_inputs import Item
from pkd.data.vqa import Annotation

ANSWER_TYPES_SCORED = ("favourite", "least frequent")  # scored per answer type beside the best
YES_NO_WARN = 90.0  # warn when the inverted prior scores this much (%) on yes/no test questions


def kl_smoothed(q: Counter, p: Counter) -> float:
    """KL(Q || P) in nats with add-one smoothing over the union of answers
    (:mod:`pkd.data.resplit`)."""
    support = sorted(set(q) | set(p))
    nq, np_, v = sum(q.values()), sum(p.values()), len(support)
    total = 0.0
    for a in support:
        qa, pa = (q[a] + 1) / (nq + v), (p[a] + 1) / (np_ + v)
        total += qa * math.log(qa / pa)
    return total


def shift(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> dict[str, dict]:
    """Shift per question type of ``(question_type, answer)`` pairs (:mod:`pkd.data.resplit`)."""
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
                  "test_seen_same_type": (sum(c for a, c in q.items() if a in p) / n_test
                                          if n_test else 0.0),
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


def blind_section(split: dict[str, list[Item]], cfg: ResplitConfig) -> dict:
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
