"""Blind rules: answers chosen per question type from the training data alone, never the image.

A shifted (VQA-CP-style) test split is only a test of grounding if no rule that reads the
training answers — and not the image — scores well on it. Per question type ``t`` (answers
preprocessed, counts over the training annotations ``n_train(t, a)``):

    favourite        a_1(t) = argmax_a n_train(t, a)       ("always answer the training prior")
    least frequent   a_k(t) = argmin_a n_train(t, a)       (the inverted prior; yes/no: the
                                                            minority; Teney et al. NeurIPS 2020)
    second           a_2(t): the second most frequent training answer (yes/no: the minority)
    favourite of f   a_1(f) wherever type t has it among its training answers, else a_1(t):
                     one rule per family f (a sibling family's favourite mapped by answer)
    best on val      argmax_a acc_val(t, a): the best constant answer of each type on ``val``
                     (a blind rule a user could tune without seeing test)

and the oracle, not blind: ``oracle constant`` = argmax_a acc_split(t, a), the best constant per
type chosen with the evaluated split's own answers. Each rule is scored with the official VQA
accuracy (:func:`pkd.data.prior.constant_answer_accuracy`); ``best blind`` is the maximum over
the blind rules on each split (the oracle excluded).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from pkd.data.metric import question_accuracy
from pkd.data.normalize import preprocess_answer
from pkd.data.prior import constant_answer_accuracy, dominant_answers, inverted_prior_answers
from pkd.data.vqa import Annotation

ORACLE = "oracle constant"  # the split's own best constant per type (not a blind rule)
BEST = "best blind"  # the maximum over the blind rules, per split


def _counts(annotations: Iterable[Annotation]) -> dict[str, Counter]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for ann in annotations:
        counts[ann.question_type][preprocess_answer(ann.multiple_choice_answer)] += 1
    return counts


def second_answers(train: Iterable[Annotation]) -> dict[str, str]:
    """Each type's second most frequent training answer (ties: sorted order); a type with one
    answer keeps it."""
    out = {}
    for t, c in sorted(_counts(train).items()):
        ranked = sorted(c, key=lambda a: (-c[a], a))
        out[t] = ranked[min(1, len(ranked) - 1)]
    return out


def best_constants(annotations: Iterable[Annotation]) -> dict[str, str]:
    """Per type, the constant answer with the highest official accuracy on ``annotations``
    (candidates: every answer given by an annotator of that type; ties: sorted order)."""
    scores: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    candidates: dict[str, set[str]] = defaultdict(set)
    anns = list(annotations)
    for ann in anns:
        candidates[ann.question_type].update(preprocess_answer(a) for a in ann.answers)
    for ann in anns:
        for a in candidates[ann.question_type]:
            scores[ann.question_type][a] += question_accuracy(ann.answers, a)
    return {t: max(sorted(s), key=lambda a: s[a]) for t, s in sorted(scores.items())}


def blind_rules(train: list[Annotation], val: list[Annotation]) -> dict[str, dict[str, str]]:
    """rule name -> question type -> answer, for every blind rule of the module docstring."""
    favourite = {t: a for t, (a, _) in dominant_answers(train).items()}
    seen = {t: set(c) for t, c in _counts(train).items()}
    rules = {"favourite": favourite, "least frequent": inverted_prior_answers(train),
             "second most frequent": _second_or_minority(train),
             "best constant on val": best_constants(val)}
    for family, answer in favourite.items():
        rules[f"favourite of {family!r}"] = {t: answer if answer in seen[t] else own
                                             for t, own in favourite.items()}
    return rules


def _second_or_minority(train: list[Annotation]) -> dict[str, str]:
    """:func:`second_answers`, with yes/no types answering their minority (as the inverted
    prior does), so a stray third answer never stands in for it."""
    second, minority = second_answers(train), inverted_prior_answers(train)
    yes_no = {a.question_type for a in train if a.answer_type == "yes/no"}
    return {t: minority[t] if t in yes_no else a for t, a in second.items()}


def blind_rule_table(train: list[Annotation], val: list[Annotation],
                     splits: dict[str, list[Annotation]]) -> dict[str, dict[str, float]]:
    """rule -> split -> official accuracy (%) of every blind rule, ``best blind`` (their max)
    and the ``oracle constant`` of each split (see the module docstring)."""
    rules = blind_rules(train, val)
    table: dict[str, dict[str, float]] = {}
    for name, answers in rules.items():
        table[name] = {s: round(constant_answer_accuracy(answers, anns)["accuracy"], 2)
                       for s, anns in splits.items()}
    table[BEST] = {s: max(table[r][s] for r in rules) for s in splits}
    table[ORACLE] = {s: round(constant_answer_accuracy(best_constants(anns), anns)["accuracy"], 2)
                     for s, anns in splits.items()}
    return table


def best_blind_rule(table: dict[str, dict[str, float]], split: str) -> tuple[str, float]:
    """(name, accuracy) of the blind rule scoring highest on ``split``."""
    name = max((r for r in table if r not in (BEST, ORACLE)), key=lambda r: table[r][split])
    return name, table[name][split]
