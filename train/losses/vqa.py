"""VQA loss and soft accuracy (bottom-up-attention-vqa's ``instance_bce_with_logits``).

Soft scores ``s`` (B, A) are the VQA targets per answer (``min(1, #humans / 3)``, averaged over
the official 10-choose-9 subsets when the data module builds them). With ``x`` the logits:

    BCE(x, s) = -[ s · log σ(x) + (1 - s) · log(1 - σ(x)) ]

    reduction="mean":  L = A · mean_{b,a} BCE(x_ba, s_ba) = (1/B) Σ_b Σ_a BCE(x_ba, s_ba)
    reduction="sum":   L = Σ_b Σ_a BCE(x_ba, s_ba)
    reduction="none":  L_b = Σ_a BCE(x_ba, s_ba)   (B,)

The reference multiplies the element-wise mean by the number of answers A (``loss *= A``), i.e.
sums over answers and averages over questions; "mean" keeps that scale so learning rates from
UpDn recipes transfer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class VQALoss(nn.Module):
    """Binary cross-entropy on VQA soft scores, summed over answers (see module docstring)."""

    def __init__(self, reduction: Literal["mean", "sum", "none"] = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, A) against soft scores ``targets`` (B, A) in [0, 1]."""
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                 reduction="none")  # (B, A)
        per_question = bce.sum(dim=1)  # (B,)
        if self.reduction == "none":
            return per_question
        if self.reduction == "sum":
            return per_question.sum()
        return per_question.mean()


@torch.no_grad()
def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft accuracy (B,) of the arg-max answer: ``targets[b, argmax_a logits[b, a]]``."""
    best = logits.argmax(dim=1, keepdim=True)  # (B, 1)
    return targets.float().gather(1, best).squeeze(1)
