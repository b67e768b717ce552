"""Small shared pieces of the VQA models: masked softmax, weight-normed MLP layers, the hook type.

``masked_softmax(scores, mask)`` is ``softmax`` over the positions where ``mask`` is True, with
exactly 0 at masked positions (and all zeros, not NaN, when a row has no valid position).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pkd.errors import PkdError

# The PKD hook: (word_features (B,L,Dw), word_mask (B,L), region_features (B,N,Dr),
# region_mask (B,N)) -> (word_features, region_features), same shapes. A model whose
# ``feature_fusion`` attribute is set applies it between ``embed_*`` and the attention / encoder.
FeatureFusion = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` along ``dim`` over positions with ``mask`` True (broadcast)."""
    dtype = scores.dtype
    scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=dim) * mask  # exact zeros on masked positions
    return probs.to(dtype)


def wn_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Module:
    """Linear layer with weight normalization ``W = g * V / ||V||`` (scalar g, as in UpDn)."""
    return weight_norm(nn.Linear(in_dim, out_dim, bias=bias), dim=None)


class FCNet(nn.Sequential):
    """Weight-normed Linear + ReLU (bottom-up-attention-vqa's ``FCNet`` with one layer)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(wn_linear(in_dim, out_dim), nn.ReLU())


class AnswerClassifier(nn.Sequential):
    """UpDn's ``SimpleClassifier``: WN-Linear(H, 2H) -> ReLU -> Dropout -> WN-Linear(2H, A)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_answers: int, dropout: float):
        super().__init__(
            wn_linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            wn_linear(hidden_dim, num_answers),
        )


def question_lengths(question_mask: torch.Tensor) -> torch.Tensor:
    """Number of real tokens per question (B,), at least 1 so an empty question still runs."""
    return question_mask.sum(dim=1).clamp(min=1)


FOUNDATION_KEYS = {  # model.foundation_inputs -> the batch keys of D's two foundation inputs
    "real": ("image_embeds", "text_embeds"),  # foundation stores: e_I, e_Q
    "predicted": ("predicted_image_embed", "predicted_text_embed"),  # predicted store: e_v, e_t
}


def require(batch: dict, key: str, why: str) -> torch.Tensor:
    """``batch[key]``, or a one-line :class:`PkdError` that says which setting needs it."""
    if key not in batch:
        raise PkdError(f"batch has no '{key}' ({why})")
    return batch[key]
