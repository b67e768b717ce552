"""Token-wise noise contrastive loss (DistillVLM, Fang et al., ICCV 2021) with queued negatives.

Student and teacher hidden states of the same token (same word / region: the adapted teacher sees
the student's boxes) are projected to a shared ``nce_dim`` and L2-normalized::

    z_s,i = W_s h_s,i / ||W_s h_s,i||        z_t,i = W_t h_t,i / ||W_t h_t,i||
    q_k   = W_t u_k   / ||W_t u_k||           u_k: the queued teacher token vectors (K of them)

    L_nce = -(1/|V|) Σ_{i∈V} log[exp(z_s,i·z_t,i/τ) / (exp(z_s,i·z_t,i/τ) + Σ_k exp(z_s,i·q_k/τ))]

over the valid tokens ``V`` of the batch (padding masked out), τ the temperature (0.07).

Choices *(ours)*:

- Both projection heads ``W_s`` (student width -> nce_dim) and ``W_t`` (teacher width -> nce_dim)
  are linear and trainable, as CRD's ``embed_s`` / ``embed_t`` (Tian et al., 2020); the teacher
  network itself stays frozen. Student and teacher widths may differ.
- The queue (:class:`pkd.train.losses.queue.TokenQueue`) stores *raw* teacher hidden vectors
  ``u_k`` (teacher width), not projections: the teacher is frozen, so they are exactly what it
  would output now, and projecting them with the current ``W_t`` at every step avoids MoCo's
  stale-key problem without a momentum encoder (K × d_t × nce_dim extra flops per step).
- Empty queue (the first step): the denominator holds the positive alone and the loss is exactly
  0 (no gradient) for that step; the queue holds one batch's tokens from the second step on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenNCE(nn.Module):
    """InfoNCE over aligned tokens, positives = same token, negatives = the queue."""

    def __init__(self, student_dim: int, teacher_dim: int, nce_dim: int = 128, tau: float = 0.07):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"NCE temperature must be > 0, got {tau}")
        self.student_proj = nn.Linear(student_dim, nce_dim)  # W_s
        self.teacher_proj = nn.Linear(teacher_dim, nce_dim)  # W_t
        self.tau = tau

    def forward(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                token_mask: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``student_hidden`` (B, T, ds), ``teacher_hidden`` (B, T, dt), ``token_mask`` (B, T)
        bool, ``negatives`` (K, dt) raw teacher vectors (K may be 0). Returns a scalar."""
        if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
            raise ValueError(f"student tokens {tuple(student_hidden.shape[:2])} and teacher tokens "
                             f"{tuple(teacher_hidden.shape[:2])} do not line up")
        ws, wt = self.student_proj.weight.dtype, self.teacher_proj.weight.dtype
        zs = F.normalize(self.student_proj(student_hidden[token_mask].to(ws)).float(), dim=-1)
        zt = F.normalize(self.teacher_proj(teacher_hidden[token_mask].to(wt)).float(), dim=-1)
        q = F.normalize(self.teacher_proj(negatives.to(wt)).float(), dim=-1)  # (K, n)
        # zs, zt: (V, n) over the V valid tokens
        positive = (zs * zt).sum(dim=-1, keepdim=True) / self.tau  # (V, 1)
        logits = torch.cat([positive, zs @ q.T / self.tau], dim=1)  # (V, 1 + K)
        if logits.shape[0] == 0:
            return logits.sum()  # no valid token: 0, still attached to the graph
        return (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean()
