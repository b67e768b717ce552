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
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

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
