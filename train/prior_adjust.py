"""Post-hoc controls that tell image grounding from suppression of the training prior.

On a VQA-CP-style shifted test split a debiasing method can gain by merely avoiding each question
type's training favourite. Two test-time adjustments of a trained model's logits ``z`` (B, A)
measure how much of that gain needs no training at all. Per question type ``t`` over the run's
answer vocabulary ``a = 0..A-1`` (answers preprocessed, :func:`pkd.data.normalize.preprocess_answer`
of ``multiple_choice_answer``, counted over the training annotations)::

    p_train(a | t) = n(a, t) / n(t)    share of the training questions of type t answered a
    a*(t)          = the favourite of type t (:func:`pkd.data.prior.dominant_answers`)

    mask-favourite:    s(a | q) = -inf if a = a*(type(q)) else z_a
    prior-correction:  s(a | q) = log σ(z_a) − τ · log(p_train(a | type(q)) + ε)

and the prediction is ``argmax_a s(a | q)``. Prior correction is post-hoc logit adjustment
("divide by the training prior"; Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021) on the sigmoid scores the VQA models are trained with (BCE); an answer never seen with
type ``t`` gets ``p = 0``, i.e. the largest boost ``−τ · log ε``. A question whose type never
occurs in training (type index -1) is left unadjusted: ``s = z`` under mask-favourite, ``s =
log σ(z)`` (same argmax) under prior-correction. A favourite outside the vocabulary masks nothing:
the model can't answer it anyway.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pkd.data.normalize import preprocess_answer
from pkd.data.prior import dominant_answers
from pkd.data.vqa import Annotation
from pkd.errors import PkdError

ADJUSTMENTS = ("none", "mask-favourite", "prior-correction")
# ε of the prior correction: an unseen (type, answer) pair counts as a 0.1% share, so its
# correction −log ε ≈ 6.9 stays finite and a frequent answer (share ≥ 10%) is never out-boosted
# by the smoothing alone.
EPS = 1e-3
TAU = 1.0  # τ: strength of the prior correction (1 = divide by the prior, Menon et al.)


def check_adjust(adjust: str) -> str:
    """``adjust`` if it names one of :data:`ADJUSTMENTS`, else a one-line PkdError."""
    if adjust not in ADJUSTMENTS:
        raise PkdError(f"adjust {adjust!r}: expected one of {', '.join(ADJUSTMENTS)}")
    return adjust


@dataclass(frozen=True)
class PriorTable:
    types: tuple[str, ...]  # question types of the training split; row t of the tables
    log_prior: torch.Tensor  # (T, A) log(p_train(a | t) + ε)
    favourite: torch.Tensor  # (T, A) bool, True at a*(t) when a*(t) is in the vocabulary

    def type_index(self, question_types: Sequence[str]) -> torch.Tensor:
        """(B,) long: each type's row, -1 for a type never seen in training."""
        rows = {t: i for i, t in enumerate(self.types)}
        return torch.tensor([rows.get(t, -1) for t in question_types], dtype=torch.long)

    def to(self, device: torch.device | str) -> PriorTable:
        return PriorTable(self.types, self.log_prior.to(device), self.favourite.to(device))


def prior_table(annotations: Iterable[Annotation], answers: Sequence[str],
                eps: float = EPS) -> PriorTable:
    """The (T, A) tables of the module doc from the training ``annotations`` and the run's answer
    vocabulary ``answers`` (index -> answer key); types in sorted order."""
    annotations = list(annotations)
    counts: dict[str, Counter] = defaultdict(Counter)
    for ann in annotations:
        counts[ann.question_type][preprocess_answer(ann.multiple_choice_answer)] += 1
    types = tuple(sorted(counts))
    index = {a: i for i, a in enumerate(answers)}
    share = torch.zeros(len(types), len(answers))  # (T, A) p_train(a | t)
    favourite = torch.zeros(len(types), len(answers), dtype=torch.bool)  # (T, A)
    dominant = dominant_answers(annotations)
    for t, qtype in enumerate(types):
        c = counts[qtype]
        total = sum(c.values())  # answers outside the vocabulary count in n(t) too
        for answer, n in c.items():
            if answer in index:
                share[t, index[answer]] = n / total
        if dominant[qtype][0] in index:
            favourite[t, index[dominant[qtype][0]]] = True
    return PriorTable(types, torch.log(share + eps), favourite)


def _rows(table: torch.Tensor, type_index: torch.Tensor, fill: float | bool) -> torch.Tensor:
    """(B, A) rows ``table[type_index]``, ``fill`` where the index is -1 (unseen type)."""
    padded = torch.cat([table, torch.full_like(table[:1], fill)])  # (T + 1, A): row T = unseen
    return padded[torch.where(type_index < 0, table.shape[0], type_index)]


def mask_favourite(logits: torch.Tensor, favourite: torch.Tensor,
                   type_index: torch.Tensor) -> torch.Tensor:
    """(B, A) logits with each row's training favourite at -inf (module doc)."""
    return logits.masked_fill(_rows(favourite, type_index, False), float("-inf"))


def prior_correct(logits: torch.Tensor, log_prior: torch.Tensor, type_index: torch.Tensor,
                  tau: float = TAU) -> torch.Tensor:
    """(B, A) scores ``log σ(z) − τ · log(p_train(a | t) + ε)`` (module doc)."""
    return F.logsigmoid(logits.float()) - tau * _rows(log_prior, type_index, 0.0)


def adjust_logits(logits: torch.Tensor, table: PriorTable, type_index: torch.Tensor,
                  adjust: str, tau: float = TAU) -> torch.Tensor:
    """The scores of ``adjust`` (one of :data:`ADJUSTMENTS`) for (B, A) ``logits``."""
    if adjust == "mask-favourite":
        return mask_favourite(logits, table.favourite, type_index)
    if adjust == "prior-correction":
        return prior_correct(logits, table.log_prior, type_index, tau)
    check_adjust(adjust)
    return logits
