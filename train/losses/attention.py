"""Attention distillation (DistillVLM, Fang et al., ICCV 2021): the student mimics the teacher's
self-attention probabilities ``A = softmax(QK^T / sqrt(d_head))``.

For mapped layer pairs ``P = {(s, t)}`` (:func:`layer_pairs`), heads ``h`` and the valid
(query, key) pairs of each question (both tokens unmasked)::

    L_att = (1/|P|) Σ_{(s,t)∈P} [ Σ_{b,h,i,j} m_bi m_bj (A^s_bhij - A^t_bhij)^2
                                  / (H' · Σ_{b,i,j} m_bi m_bj) ]

i.e. a mean squared error over the valid entries of the whole batch, averaged over layer pairs.
Padded queries and keys contribute nothing and are not counted.

Head counts *(ours)*: when student and teacher have the same number of heads, head h is compared
with head h (H' = H). When they differ, each side is first averaged over its heads into one map
(``mean_h A_h``, still a row-stochastic matrix) and the two maps are compared (H' = 1).

Layer mapping *(ours for "uniform")*, with ``Ls`` student and ``Lt`` teacher layers (0-based):

- ``"last"`` (default, as reported): ``{(Ls-1, Lt-1)}``;
- ``"uniform"``: student layer ``i`` <- teacher layer ``max(0, floor((i+1)·Lt/Ls + 1/2) - 1)``
  (round half up), so the last student layer always reads the last teacher layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

LayerMapping = Literal["last", "uniform"]


def layer_pairs(student_layers: int, teacher_layers: int,
                mapping: LayerMapping = "last") -> list[tuple[int, int]]:
    """``[(student_layer, teacher_layer), ...]`` (0-based) distilled under ``mapping``."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"need >= 1 layer on each side, got {student_layers}, {teacher_layers}")
    if mapping == "last":
        return [(student_layers - 1, teacher_layers - 1)]
    if mapping == "uniform":
        return [(i, max(0, math.floor((i + 1) * teacher_layers / student_layers + 0.5) - 1))
                for i in range(student_layers)]
    raise ValueError(f"unknown attention layer mapping {mapping!r} (use 'last' or 'uniform')")


def teacher_layers_needed(student_layers: int, teacher_layers: int,
                          mapping: LayerMapping = "last") -> list[int]:
    """Sorted distinct teacher layers read by :func:`layer_pairs` (what a teacher store caches)."""
    return sorted({t for _, t in layer_pairs(student_layers, teacher_layers, mapping)})


class AttentionMSE(nn.Module):
    """Masked MSE between paired attention maps (formula in the module docstring)."""

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                token_mask: torch.Tensor) -> torch.Tensor:
        """``student[p]`` (B, Hs, T, T) vs ``teacher[p]`` (B, Ht, T, T) for each pair ``p``;
        ``token_mask`` (B, T) True on valid tokens. Returns a scalar."""
        if len(student) != len(teacher) or not student:
            raise ValueError(f"need as many student as teacher maps (>= 1), got "
                             f"{len(student)} and {len(teacher)}")
        mask = token_mask[:, None, :, None] & token_mask[:, None, None, :]  # (B, 1, T, T)
        valid = mask.sum().clamp(min=1)
        losses = [self._pair(s, t, mask, valid) for s, t in zip(student, teacher, strict=True)]
        return torch.stack(losses).mean()

    @staticmethod
    def _pair(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
              valid: torch.Tensor) -> torch.Tensor:
        if s.shape[-2:] != t.shape[-2:] or s.shape[0] != t.shape[0]:
            raise ValueError(f"attention maps do not line up: student {tuple(s.shape)}, "
                             f"teacher {tuple(t.shape)}")
        s, t = s.float(), t.float()
        if s.shape[1] != t.shape[1]:  # different head counts: compare head-averaged maps
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)  # (B, 1, T, T)
        squared = (s - t).square() * mask  # (B, H', T, T)
        return squared.sum() / (valid * s.shape[1])
