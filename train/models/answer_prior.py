"""Training-set answer prior per question type: the fixed bias of LMH (Clark et al., EMNLP 2019).

For question type ``k`` with ``n_k`` training questions, and soft scores ``s_ia`` (targets)::

    p[k, a] = (Σ_{i: type_i = k} s_ia + ε) / (n_k + 2ε)          (K, A), each entry in [0, 1]

the expected soft score of answer ``a`` on questions of type ``k`` (chrisc36's ``main.py``: total
score / number of questions of the type, questions without answers included), with ``ε``
pseudo-counts of score 1 and of score 0 per answer (a Beta(ε, ε) prior: every entry in (0, 1)
for ``ε > 0``, so ``log p`` and ``log(1 - p)`` are finite). ``ε = 0`` is the reference. It is
*not* normalized over answers: each answer is its own binary event, as in the BCE setting. A
type with no question gets ``1/2`` for ``ε > 0`` (no bias) and ``0`` for ``ε = 0``.

Question types are ints in ``[0, K)``; from strings:
``names, type_ids = np.unique(split.question_types, return_inverse=True)``.
The per-question bias of a batch is then ``prior[type_ids]`` (B, A).
"""

from __future__ import annotations

import numpy as np
import torch


def answer_prior(question_types: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                 num_types: int | None = None, eps: float = 0.0) -> torch.Tensor:
    """Prior (K, A) float32 from type ids (N,) int and dense soft scores ``targets`` (N, A)."""
    types = torch.as_tensor(question_types, dtype=torch.int64)
    scores = torch.as_tensor(targets, dtype=torch.float32)
    k = _num_types(types, num_types)
    totals = torch.zeros(k, scores.shape[1]).index_add_(0, types, scores)  # (K, A)
    return _normalize(totals, torch.bincount(types, minlength=k), eps)


def answer_prior_sparse(question_types: torch.Tensor | np.ndarray,
                        answer_index: torch.Tensor | np.ndarray,
                        answer_score: torch.Tensor | np.ndarray, num_answers: int,
                        num_types: int | None = None, eps: float = 0.0) -> torch.Tensor:
    """Same prior from the sparse targets of ``SplitData``: ``answer_index`` (N, M) int (-1 =
    none) and ``answer_score`` (N, M), without building the dense (N, A) matrix."""
    types = torch.as_tensor(question_types, dtype=torch.int64)
    index = torch.as_tensor(answer_index, dtype=torch.int64)
    score = torch.as_tensor(answer_score, dtype=torch.float32)
    k = _num_types(types, num_types)
    keep = index >= 0  # (N, M)
    flat = types.unsqueeze(1).expand_as(index)[keep] * num_answers + index[keep]  # (P,)
    totals = torch.zeros(k * num_answers).index_add_(0, flat, score[keep])
    return _normalize(totals.view(k, num_answers), torch.bincount(types, minlength=k), eps)


def _num_types(types: torch.Tensor, num_types: int | None) -> int:
    seen = int(types.max()) + 1 if types.numel() else 0
    if types.numel() and int(types.min()) < 0:
        raise ValueError("question type ids must be >= 0")
    if num_types is None:
        return seen
    if seen > num_types:
        raise ValueError(f"question type id {seen - 1} >= num_types={num_types}")
    return num_types


def _normalize(totals: torch.Tensor, counts: torch.Tensor, eps: float) -> torch.Tensor:
    """``(totals + ε) / (counts + 2ε)`` per row, 0 for empty rows when ``ε = 0``."""
    if eps < 0:
        raise ValueError(f"prior smoothing eps must be >= 0, got {eps}")
    denom = (counts.to(totals.dtype) + 2 * eps).unsqueeze(1)  # (K, 1)
    return (totals + eps) / denom.clamp(min=torch.finfo(totals.dtype).tiny)
