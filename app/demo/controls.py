"""Post-hoc control rows: a trained run re-scored without the training prior, no training.

A debiasing method (LMH, RUBi) may beat the baseline on the shifted test split by merely avoiding
each question type's training favourite. Two rows read the trained ``baseline`` run and adjust its
scores at test time (:mod:`pkd.train.prior_adjust`):

- ``baseline-masked``: the favourite answer of the question's type gets −inf;
- ``baseline-prior-corrected``: ``log σ(z_a) − τ · log(p_train(a | type) + ε)`` (Menon et al.,
  ICLR 2021, post-hoc logit adjustment).

A method that only matches these rows suppresses the prior; one above them grounds better.
"""

from __future__ import annotations

from pathlib import Path

# row name -> (the trained run it reads, the adjustment of pkd.train.prior_adjust)
POSTHOC = {"baseline-masked": ("baseline", "mask-favourite"),
           "baseline-prior-corrected": ("baseline", "prior-correction")}


def metrics_row(metrics: dict, name: str, seed: int, split: str) -> dict:
    """One demo row (the shape of :func:`pkd.demo.evaluate_run`'s) of an evaluation's metrics."""
    return {"method": name, "seed": seed, "split": split, "overall": metrics["overall"],
            "perAnswerType": metrics["perAnswerType"],
            "perQuestionType": metrics["perQuestionType"],
            "ms_per_question": metrics["inference"]["ms_per_question"],
            "prior": metrics["prior"]["prior"], "prior_gold": metrics["prior"]["gold"]}


def posthoc_rows(run: Path, name: str, seed: int, adjust: str,
                 splits: tuple[str, ...]) -> list[dict]:
    """One row per split of the trained ``run`` scored with the post-hoc ``adjust``
    (``RUN/{results,metrics}_<split>_<adjust>.json``; the run's plain files stay as they were)."""
    from pkd.train.predict import evaluate_checkpoint  # torch: only when a control row is scored

    rows = []
    for split in splits:
        metrics, _ = evaluate_checkpoint(Path(run), split, adjust=adjust)
        rows.append(metrics_row(metrics, name, seed, split))
    return rows
