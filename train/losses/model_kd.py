"""PKD's model-level distillation: D's ITM output follows the foundation model's (our reading).

On pairs of predicted features ``(ṽ, t̃)`` (positives and shuffled negatives), with ``M`` the
frozen foundation ITM logit (teacher) and ``s = ITM_D`` the VQA model's (student), the two-class
KL at temperature ``T``::

    p = σ(M / T),  q = σ(s / T)     (softmax([0, z] / T)[1] = σ(z / T))
    L_mkd = T² · mean_pairs [ p log(p / q) + (1 - p) log((1 - p) / (1 - q)) ]

i.e. ``KL(softmax([0, M]/T) ‖ softmax([0, s]/T))``, Bernoulli KL of teacher vs student; ``T²``
(Hinton's convention) keeps the gradient scale comparable across temperatures. ``M`` is a
constant (detached). Unlike a BCE against ``p`` the minimum is exactly 0 at ``s = M``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BinaryKL(nn.Module):
    """``T² · KL(σ(teacher/T) ‖ σ(student/T))`` averaged over (valid) pairs."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KD temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """``student``, ``teacher`` (n,) ITM logits; ``valid`` (n,) bool -> scalar."""
        t = self.temperature
        s, m = student.float() / t, teacher.detach().float() / t
        p = torch.sigmoid(m)
        # p log p + (1-p) log(1-p) - [p log q + (1-p) log(1-q)], with log σ stable forms
        kl = (p * (F.logsigmoid(m) - F.logsigmoid(s))
              + (1 - p) * (F.logsigmoid(-m) - F.logsigmoid(-s)))  # (n,)
        if valid is None:
            return kl.mean() * t * t
        w = valid.to(kl.dtype)
        return (kl * w).sum() / w.sum().clamp(min=1.0) * t * t
