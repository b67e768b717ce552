"""Output distillation for VQA (DistillVLM; Hinton et al., 2015, with sigmoid outputs).

VQA answers are scored independently (sigmoid + BCE, see :mod:`pkd.train.losses.vqa`), so the
student's logits ``s`` (B, A) are trained towards the teacher's sigmoid outputs ``σ(t/T)`` rather
than a softmax distribution. With ``p = σ(t/T)`` and ``x = s/T``::

    L_kd = T² · (1/B) Σ_b Σ_a -[ p_ba · log σ(x_ba) + (1 - p_ba) · log(1 - σ(x_ba)) ]

summed over answers and averaged over questions, the scale of ``VQALoss``. The ``T²`` factor
(Hinton's convention) keeps gradient magnitudes comparable across temperatures: the gradient of
the BCE w.r.t. ``s`` is ``(σ(s/T) - σ(t/T)) / T ≈ (s - t) / (4T²)`` for large T. At T = 1 (the
default) it is the plain BCE. The loss is a cross-entropy, so its minimum (student = teacher) is
the teacher's binary entropy, not 0; gradients vanish there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LogitKD(nn.Module):
    """BCE of ``student_logits`` against ``σ(teacher_logits / T)`` (module docstring)."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KD temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``student_logits``, ``teacher_logits`` (B, A) -> scalar."""
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                             f"{tuple(teacher_logits.shape)} differ (same answer vocabulary?)")
        t = self.temperature
        target = torch.sigmoid(teacher_logits.detach().float() / t)  # (B, A)
        bce = F.binary_cross_entropy_with_logits(student_logits.float() / t, target,
                                                 reduction="none")  # (B, A)
        return bce.sum(dim=1).mean() * t * t
