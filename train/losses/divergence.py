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

``mmd`` (METHODS.md's *distribution matching* reading) pairs nothing: each item's tokens are
mean-pooled over its valid tokens, giving ``X = {x_i}`` (predicted) and ``Y = {y_j}`` (cached),
``B`` vectors each, compared as two samples by the (biased) squared maximum mean discrepancy

    MMD² = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j),
    k(a, b) = (1/3) Σ_{s ∈ {1/2, 1, 2}} exp(-‖a - b‖² / (2 s σ²)),  σ² = mean_{i≠j} ‖y_i - y_j‖² / 2

(σ from the cached sample, a constant): zero when the predicted features have the cached ones'
distribution over the batch, whichever item each came from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("kl", "cosine", "mse", "mmd")
MMD_SCALES = (0.5, 1.0, 2.0)  # kernel bandwidths, times σ²


def pool_tokens(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the valid tokens: (B, T, d), mask (B, T) -> (B, 1, d)."""
    if mask is None:
        return x.mean(dim=1, keepdim=True)
    w = mask.to(x.dtype)[..., None]  # (B, T, 1)
    return (x * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp(min=1.0)


def mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased MMD² of samples ``x`` (n, d) and ``y`` (m, d) (module docstring); ``y`` is the
    reference sample: it sets σ and gets no gradient."""
    x, y = x.float(), y.detach().float()
    yy = torch.cdist(y, y).pow(2)
    m = len(y)
    sigma2 = (yy.sum() / max(1, m * (m - 1)) / 2).clamp(min=1e-6)

    def k(d2: torch.Tensor) -> torch.Tensor:
        return sum(torch.exp(-d2 / (2 * s * sigma2)) for s in MMD_SCALES) / len(MMD_SCALES)

    return (k(torch.cdist(x, x).pow(2)).mean() + k(yy).mean()
            - 2 * k(torch.cdist(x, y).pow(2)).mean())


class FeatureDivergence(nn.Module):
    """``D`` of the module docstring, ``kind`` in kl | cosine | mse (token-wise) | mmd (batch)."""

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
        if self.kind == "mmd":
            return mmd2(pool_tokens(predicted, mask)[:, 0], pool_tokens(target, mask)[:, 0])
        if predicted.shape != target.shape:
            raise ValueError(f"predicted {tuple(predicted.shape)} and cached "
                             f"{tuple(target.shape)} tokens differ (pool them first)")
        d = self.per_token(predicted, target)  # (B, T)
        if mask is None:
            return d.mean()
        w = mask.to(d.dtype)
        return (d * w).sum() / w.sum().clamp(min=1.0)
