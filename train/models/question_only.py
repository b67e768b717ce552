"""Question-only branch (the bias branch of RUBi; Cadène et al., NeurIPS 2019).

Answer logits from the question vector alone (UpDn's ``question_features``, the GRU's last
hidden state), as RUBi's ``c_1`` (block's ``MLP``: Linear layers with ReLU between, none after
the last, no dropout by default)::

    q_logits = W_k ReLU( ... ReLU(W_1 sg(q)) ... )      (B, H) -> (B, A)

``sg`` is a stop-gradient (``detach_input=True``, RUBi's ``grad_mul_const(q, 0)``): the branch
learns from its own losses but never moves the main model's question encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class QuestionOnly(nn.Module):
    """MLP ``question_dim -> hidden_dims... -> num_answers`` over (optionally) detached input."""

    def __init__(self, question_dim: int, num_answers: int,
                 hidden_dims: Sequence[int] = (1024, 1024), dropout: float = 0.0,
                 detach_input: bool = True):
        super().__init__()
        self.detach_input = detach_input  # stop-gradient into the question encoder
        dims = [question_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-1], num_answers))
        self.mlp = nn.Sequential(*layers)

    def forward(self, question_features: torch.Tensor) -> torch.Tensor:
        """Question-only answer logits (B, A) of ``question_features`` (B, H)."""
        q = question_features.detach() if self.detach_input else question_features
        return self.mlp(q)
