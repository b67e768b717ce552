"""Prior statistics of the synthetic benchmark's evaluation splits (``synth_meta.json``).

For each evaluation split, against the ``train`` annotations (official VQA accuracy, percent):

- ``train_favourite_share``: share (%) of the split's questions whose answer is their type's
  train favourite (:func:`pkd.data.prior.dominant_answers`); ``train_favourite_control``: the
  accuracy of answering that favourite to every question ("always answer the training prior");
- ``least_frequent_control``: accuracy of answering each type's *least* frequent training answer
  (:func:`pkd.data.prior.inverted_prior_answers`, yes/no: the minority; Teney et al., NeurIPS
  2020);
- ``best_constant``: accuracy of answering each type's most frequent answer *of this split* — the
  ceiling of every blind per-type constant answer, known only to an oracle;
- ``answer_distribution``: question type -> answer -> share;

and ``blind_rules``: rule -> split -> accuracy of every blind rule computed from ``train`` (and
``val``), their maximum and the split's oracle constant (:mod:`pkd.data.blind_rules`).
"""

from __future__ import annotations

from collections import Counter

from pkd.data.blind_rules import blind_rule_table
from pkd.data.normalize import preprocess_answer
from pkd.data.prior import constant_answer_accuracy, dominant_answers, inverted_prior_answers
from pkd.data.vqa import Annotation


def as_annotations(records: list[dict]) -> list[Annotation]:
    """:class:`Annotation` objects of VQA v2 annotation records."""
    return [Annotation(r["question_id"], r["image_id"], r["question_type"], r["answer_type"],
                       r["multiple_choice_answer"], tuple(a["answer"] for a in r["answers"]))
            for r in records]


def _distribution(annotations: list[Annotation]) -> dict[str, dict[str, float]]:
    counts: dict[str, Counter] = {}
    for a in annotations:
        counts.setdefault(a.question_type, Counter())[a.multiple_choice_answer] += 1
    return {t: {a: round(n / sum(c.values()), 4) for a, n in sorted(c.items())}
            for t, c in sorted(counts.items())}


def _rounded(result: dict) -> dict:
    return {"accuracy": round(result["accuracy"], 2),
            "perQuestionType": {t: {"answer": v["answer"], "accuracy": round(v["accuracy"], 2)}
                                for t, v in result["perQuestionType"].items()}}


def prior_statistics(annotations: dict[str, list[dict]], splits: tuple[str, ...]) -> dict:
    """``{"train_favourite": {type: answer}, "train_least": {type: answer}, split: {...}}`` (see
    the module docstring); ``annotations`` maps split -> VQA v2 records and holds ``train`` and
    ``val``."""
    train = as_annotations(annotations["train"])
    favourite = {t: a for t, (a, _) in dominant_answers(train).items()}
    least = inverted_prior_answers(train)  # the demo's "inverted-prior" control row
    out: dict = {"train_favourite": favourite, "train_least": least,
                 "blind_rules": blind_rule_table(
                     train, as_annotations(annotations["val"]),
                     {s: as_annotations(annotations[s]) for s in splits})}
    for split in splits:
        anns = as_annotations(annotations[split])
        mode = {t: a for t, (a, _) in dominant_answers(anns).items()}
        share = sum(favourite.get(a.question_type) == preprocess_answer(a.multiple_choice_answer)
                    for a in anns)
        out[split] = {
            "questions": len(anns),
            "train_favourite_share": round(100.0 * share / max(1, len(anns)), 2),
            "train_favourite_control": _rounded(constant_answer_accuracy(favourite, anns)),
            "least_frequent_control": _rounded(constant_answer_accuracy(least, anns)),
            "best_constant": _rounded(constant_answer_accuracy(mode, anns)),
            "answer_distribution": _distribution(anns),
        }
    return out
