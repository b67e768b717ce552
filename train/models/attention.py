"""Multi-head attention with an explicit (eager) softmax, shared by the fusion model and the
PKD predictors.

For queries ``x`` (B, T, D), context ``c`` (B, S, D) and ``key_mask`` (B, S) (True on valid keys),
with ``h`` heads of size ``d_h = D / h``::

    Q = x W_q,  K = c W_k,  V = c W_v                      (B, h, T|S, d_h) after the head split
    A = masked_softmax(Q K^T / sqrt(d_h), key_mask)         (B, h, T, S)
    out = concat_heads(Dropout(A) V) W_o                    (B, T, D)

Self-attention passes ``c = x``. ``A`` is exactly 0 on masked keys, and a row without any valid
key is all zeros, not NaN (:func:`~pkd.train.models.layers.masked_softmax`). ``A`` is returned
before the dropout, as transformers' eager BERT returns it; DistillVLM distils these maps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pkd.train.models.layers import masked_softmax


class MultiHeadAttention(nn.Module):
    """``forward(x, context, key_mask) -> (out (B, T, D), A (B, heads, T, S))`` (module docstring).

    ``out_name`` names the output projection ``W_o`` in the state_dict: ``"output"`` (BERT's name,
    the fusion model) or ``"out"`` (the predictors), so checkpoints saved before these two models
    shared this class still load. The projections are created in the order W_q, W_k, W_v, W_o.
    """

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0, *,
                 out_name: str = "output"):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out_name = out_name
        setattr(self, out_name, nn.Linear(hidden, hidden))  # W_o
        self.dropout = nn.Dropout(dropout)

    @property
    def projection(self) -> nn.Linear:
        """The output projection ``W_o`` (registered under ``out_name``)."""
        return getattr(self, self.out_name)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, T, dh)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D) attends to ``context`` (B, S, D) where ``key_mask`` (B, S) is True."""
        q = self._split(self.query(x))  # (B, heads, T, dh)
        k, v = self._split(self.key(context)), self._split(self.value(context))  # (B, heads, S, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, heads, T, S)
        probs = masked_softmax(scores, key_mask[:, None, None, :], dim=-1)  # (B, heads, T, S)
        mixed = self.dropout(probs) @ v  # (B, heads, T, dh)
        mixed = mixed.transpose(1, 2).reshape(x.shape)  # (B, T, D)
        return self.projection(mixed), probs
