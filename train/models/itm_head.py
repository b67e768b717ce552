"""Model-level distillation pieces on the VQA model D (our reading of PKD, ``shared/METHODS.md``).

:class:`ITMHead`: D's image-text matching logit from its fused joint representation::

    ITM_D = w_2 · tanh(W_1 joint + b_1) + b_2          joint (B, H) -> logit (B,)

(a BERT-pooler-style MLP; two-class ``[0, ITM_D]`` is the same as one logit).

:class:`PairProjector`: for D to score a *predicted* pair ``(ṽ, t̃)`` it must see it as input.
**Our design:** project ``ṽ`` (B, P', d_v) into D's region feature space and ``t̃`` (B, L', d_t) into
its word feature space (the spaces the ``feature_fusion`` hook sees: UpDn raw region features /
word embeddings, fusion transformer tokens)::

    regions~ = W_r ṽ + b_r      (B, P', region_feature_dim)
    words~   = W_w t̃ + b_w      (B, L', word_feature_dim)

and run D's own path from there (question encoder / attention / joint, or the transformer) via
:meth:`~pkd.train.models.memory.PKDFeatureFusion.substitute`.
"""

from __future__ import annotations

import torch
from torch import nn


class ITMHead(nn.Module):
    """``joint`` (B, H) -> ITM logit (B,)."""

    def __init__(self, joint_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(joint_dim, joint_dim), nn.Tanh(),
                                 nn.Linear(joint_dim, 1))

    def forward(self, joint: torch.Tensor) -> torch.Tensor:
        return self.net(joint).squeeze(-1)  # (B,)


class PairProjector(nn.Module):
    """Predicted foundation tokens -> D's word / region feature spaces (module docstring)."""

    def __init__(self, vision_dim: int, text_dim: int, region_feature_dim: int,
                 word_feature_dim: int):
        super().__init__()
        self.vision = nn.Linear(vision_dim, region_feature_dim)
        self.text = nn.Linear(text_dim, word_feature_dim)

    def forward(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(words (B, L', d_w), regions (B, P', d_r))."""
        return self.text(text_tokens), self.vision(vision_tokens)
