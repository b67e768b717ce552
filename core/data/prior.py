"""How much a model answers with the training prior: the VQA-CP diagnostic.

VQA-CP moves each question type's answer distribution between train and test, so a model that
answers "what color is the ..." with the training split's favourite colour scores well in
distribution and badly out of it. Per question type ``q``::

    a*(q)        = the most frequent answer (preprocessed ``multiple_choice_answer``) of type q
                   in the training annotations
    prior(q)     = 100 · |{predictions of type q equal to a*(q)}| / |{questions of type q}|
    gold(q)      = 100 · |{test questions of type q whose answer is a*(q)}| / |{... of type q}|

``prior`` well above ``gold`` means the model follows the training prior where the test data do
not; an image-grounded model has ``prior ≈ gold``. Overall values weight question types by their
number of questions.

Blind controls (Teney et al., "On the Value of Out-of-Distribution Testing", NeurIPS 2020): a
VQA-CP-style shift that simply inverts the training prior is solved by answering each question
type's *least* frequent training answer without looking at the image::

    a_min(q)     = the least frequent training answer of type q (ties: the first in sorted order)
    control(q)   = official VQA accuracy of answering a_min(q) to every test question of type q

:func:`least_frequent_answers` gives ``a_min``, :func:`constant_answer_accuracy` the accuracy of
any such per-type constant answer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from pkd.data.metric import question_accuracy
from pkd.data.normalize import preprocess_answer
from pkd.data.vqa import Annotation


def dominant_answers(annotations: Iterable[Annotation]) -> dict[str, tuple[str, float]]:
    """``{question_type: (a*, share in %)}`` of the (training) annotations."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for ann in annotations:
        counts[ann.question_type][preprocess_answer(ann.multiple_choice_answer)] += 1
    out = {}
    for qtype, c in sorted(counts.items()):
        (answer, n), = c.most_common(1)
        out[qtype] = (answer, 100.0 * n / sum(c.values()))
    return out


def prior_agreement(predictions: dict[int, str], annotations: Iterable[Annotation],
                    dominant: dict[str, tuple[str, float]]) -> dict:
    """``{"prior", "gold", "questions", "perQuestionType": {type: {"answer", "prior", "gold",
    "questions"}}}`` (percent) over the annotated questions whose type has a training favourite;
    ``predictions`` maps question_id -> answer (a missing prediction never equals a*)."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # [prior, gold, questions]
    for ann in annotations:
        if ann.question_type not in dominant:
            continue
        favourite = dominant[ann.question_type][0]
        h = hits[ann.question_type]
        h[0] += preprocess_answer(predictions.get(ann.question_id, "")) == favourite
        h[1] += preprocess_answer(ann.multiple_choice_answer) == favourite
        h[2] += 1
    per_type = {q: {"answer": dominant[q][0], "prior": 100.0 * p / n, "gold": 100.0 * g / n,
                    "questions": n} for q, (p, g, n) in sorted(hits.items())}
    total = sum(h[2] for h in hits.values())
    return {"prior": 100.0 * sum(h[0] for h in hits.values()) / max(1, total),
            "gold": 100.0 * sum(h[1] for h in hits.values()) / max(1, total),
            "questions": total, "perQuestionType": per_type}


def least_frequent_answers(annotations: Iterable[Annotation]) -> dict[str, tuple[str, float]]:
    """``{question_type: (a_min, share in %)}``: each type's least frequent (preprocessed)
    ``multiple_choice_answer`` among the (training) annotations; ties go to the first answer in
    sorted order."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for ann in annotations:
        counts[ann.question_type][preprocess_answer(ann.multiple_choice_answer)] += 1
    out = {}
    for qtype, c in sorted(counts.items()):
        answer = min(sorted(c), key=lambda a: c[a])
        out[qtype] = (answer, 100.0 * c[answer] / sum(c.values()))
    return out


def constant_answer_accuracy(answers: dict[str, str], annotations: Iterable[Annotation]) -> dict:
    """``{"accuracy", "questions", "perQuestionType": {type: {"answer", "accuracy",
    "questions"}}}``: official VQA accuracy (percent) of answering ``answers[type]`` to every
    question of that type; a type without an entry scores 0."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # [sum of accuracies, questions]
    for ann in annotations:
        a = acc[ann.question_type]
        if ann.question_type in answers:
            a[0] += question_accuracy(ann.answers, answers[ann.question_type])
        a[1] += 1
    per_type = {q: {"answer": answers.get(q, ""), "accuracy": 100.0 * s / n, "questions": n}
                for q, (s, n) in sorted(acc.items())}
    total = sum(n for _, n in acc.values())
    return {"accuracy": 100.0 * sum(s for s, _ in acc.values()) / max(1, total),
            "questions": total, "perQuestionType": per_type}


def inverted_prior_answers(annotations: Iterable[Annotation]) -> dict[str, str]:
    """``{question_type: answer}`` of the inverted-prior control: the type's least frequent
    training answer (:func:`least_frequent_answers`), and for a yes/no type (most of its
    annotations of answer type ``yes/no``) the minority of ``yes`` / ``no`` — counting an answer
    never seen as 0, ties to ``no`` — so a rare stray answer never stands in for the minority."""
    annotations = list(annotations)
    least = least_frequent_answers(annotations)
    yes_no: dict[str, Counter] = defaultdict(Counter)  # per type: yes, no, answer types
    for ann in annotations:
        c = yes_no[ann.question_type]
        c["#yes/no" if ann.answer_type == "yes/no" else "#other"] += 1
        c[preprocess_answer(ann.multiple_choice_answer)] += 1
    out = {}
    for qtype, (answer, _) in least.items():
        c = yes_no[qtype]
        out[qtype] = (("no" if c["no"] <= c["yes"] else "yes") if c["#yes/no"] > c["#other"]
                      else answer)
    return out
