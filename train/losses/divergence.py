"""PKD's feature divergence ``D(predicted, cached foundation)`` (our reading, METHODS.md).

``L_div = D(ṽ, v^F) + D(t̃, t^F)``. Tokens are matched position by position when the predictors
emit as many tokens as the store holds (``predictor_tokens = 0``: ``P' = P``, ``L' = L``, text
positions masked by ``text_mask``); otherwise both sides are first mean-pooled over their valid
tokens (:func:`pool_tokens`) and compared as one token each. Per token ``i`` over the feature
axis (d), with ``p`` the cached and ``x`` the predicted token:

- ``kl`` (default): ``τ² · Σ_d softmax(p/τ)_d · (log softmax(p/τ)_d - log softmax(x/τ)_d)``,
  i.e. ``KL(softmax(p/τ) ‖ softmax(x/τ))`` of each token's features read as a distribution
  over feature dimensions; ``τ²`` keeps gradient scales comparable across τ (Hinton);
- ``cosine``: ``1 - cos(x, p)``;
- ``mse``: ``(1/d) Σ_d (x_d - p_d)²``.

Then averaged over the valid tokens of the batch. The cached side is a constant (detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("kl", "cosine", "mse")


def pool_tokens(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the valid tokens: (B, T, d), mask (B, T) -> (B, 1, d)."""
    if mask is None:
        return x.mean(dim=1, keepdim=True)
    w = mask.to(x.dtype)[..., None]  # (B, T, 1)
    return (x * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp(min=1.0)


class FeatureDivergence(nn.Module):
    """Token-wise ``D`` of the module docstring, ``kind`` in kl | cosine | mse."""

    def __init__(self, kind: str = "kl", temperature: float = 1.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"divergence must be one of {', '.join(KINDS)}, not {kind!r}")
        if temperature <= 0:
            raise ValueError(f"divergence temperature must be > 0, got {temperature}")
        self.kind, self.temperature = kind, temperature

    def per_token(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, T, d) x2 -> (B, T) divergence of each token."""
        x, p = predicted.float(), target.detach().float()
        if self.kind == "cosine":
            return 1.0 - F.cosine_similarity(x, p, dim=-1)
        if self.kind == "mse":
            return (x - p).pow(2).mean(dim=-1)
        t = self.temperature
        log_p, log_q = F.log_softmax(p / t, dim=-1), F.log_softmax(x / t, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1) * t * t

    def forward(self, predicted: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``predicted``, ``target`` (B, T, d), ``mask`` (B, T) bool of valid tokens -> scalar."""
        if predicted.shape != target.shape:
            raise ValueError(f"predicted {tuple(predicted.shape)} and cached "
                             f"{tuple(target.shape)} tokens differ (pool them first)")
        d = self.per_token(predicted, target)  # (B, T)
        if mask is None:
            return d.mean()
        w = mask.to(d.dtype)
        return (d * w).sum() / w.sum().clamp(min=1.0)
