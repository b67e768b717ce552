"""Distillation of the foundation model's own outputs into D (learning without forgetting).

With ``m_F``, ``m_D`` (n, V) the masked-LM logits of the frozen foundation model ``F0`` and of
``D`` at the same masked positions, and ``s_F``, ``s_D`` (n,) their image-text matching log-odds
on the same pairs, at temperature ``T``::

    L_mlm = T² · mean_positions KL( softmax(m_F / T) ‖ softmax(m_D / T) )
    L_itm = T² · mean_pairs KL( σ(s_F / T) ‖ σ(s_D / T) )       (:class:`BinaryKL`)
    L_lwf = L_mlm + L_itm

Where the pairs come from decides the method: the in-domain VQA prompts (``kd-id``, the baseline
PKD's abstract calls biased), the real caption corpus (``lwf-oracle``, the ideal PKD imitates) or
PKD's predicted pre-training-like features. ``m_F`` and ``s_F`` are constants (detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pkd.train.losses.model_kd import BinaryKL


def masked_lm_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` (n, V) -> scalar, averaged over the
    (``valid``) positions; 0 when there are none."""
    t = temperature
    log_p = F.log_softmax(teacher.detach().float() / t, dim=-1)
    log_q = F.log_softmax(student.float() / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (n,)
    if valid is None:
        return kl.mean() * t * t
    w = valid.to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp(min=1.0) * t * t


def lwf_loss(student_mlm: torch.Tensor, teacher_mlm: torch.Tensor, student_itm: torch.Tensor,
             teacher_itm: torch.Tensor, temperature: float = 1.0,
             mlm_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"mlm": L_mlm, "itm": L_itm}`` of the module docstring."""
    return {"mlm": masked_lm_kd(student_mlm, teacher_mlm, temperature, mlm_valid),
            "itm": BinaryKL(temperature)(student_itm, teacher_itm)}
