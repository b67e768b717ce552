"""PKD's ITM loss on the cross-modal feature predictors (our reading, ``shared/METHODS.md``).

The frozen foundation matching head ``M`` (:mod:`pkd.train.foundation_head`) must judge each
predicted feature set as matching its real partner and not matching an in-batch negative::

    L_itm = BCE(M(ṽ, t^F), 1) + BCE(M(v^F, t̃), 1)
          + BCE(M(ṽ, t^F_π), 0) + BCE(M(v^F_π, t̃), 0)

``BCE(s, y) = -[y log σ(s) + (1 - y) log(1 - σ(s))]`` on ITM logits, each term averaged over its
pairs. :class:`MatchingBCE` is one direction (a positive and a negative term); the task adds the
vision and the text direction.

Negatives ``π`` (:func:`negative_partners`): for each item a uniformly random *other* item whose
image and text both differ (compared by the cached ``image_embeds`` / ``text_embeds`` rows: one
image has several questions in a batch, and short questions repeat across images). An item with
no such partner gets no negative term (``valid`` False).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MatchingBCE(nn.Module):
    """``mean BCE(positive, 1) + mean_{valid} BCE(negative, 0)`` on ITM logits."""

    def forward(self, positive: torch.Tensor, negative: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """``positive``, ``negative`` (B,) logits; ``valid`` (B,) bool marks real negatives."""
        pos = F.binary_cross_entropy_with_logits(positive.float(),
                                                 torch.ones_like(positive.float()))
        neg = F.binary_cross_entropy_with_logits(negative.float(),
                                                 torch.zeros_like(negative.float()),
                                                 reduction="none")  # (B,)
        if valid is None:
            return pos + neg.mean()
        weight = valid.to(neg.dtype)
        return pos + (neg * weight).sum() / weight.sum().clamp(min=1.0)


def _row_ids(keys: torch.Tensor) -> torch.Tensor:
    """(B,) int64: equal ids exactly for equal rows of ``keys`` (B, ...) (sorted unique rows:
    O(B d log B), not the (B, B, d) comparison)."""
    return torch.unique(keys.reshape(keys.shape[0], -1), dim=0, return_inverse=True)[1]


def negative_partners(image_keys: torch.Tensor, text_keys: torch.Tensor | None = None,
                      generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(partner index π (B,) int64, valid (B,) bool): a random item with another image and text.

    ``image_keys`` (B, ...) / ``text_keys`` (B, ...): rows that are equal for the same image /
    text (e.g. ``image_embeds``, ``text_embeds``). Invalid items point at themselves.
    """
    b = image_keys.shape[0]
    image = _row_ids(image_keys)
    allowed = image[:, None] != image[None, :]  # (B, B) different image
    if text_keys is not None:
        text = _row_ids(text_keys)
        allowed &= text[:, None] != text[None, :]
    noise = torch.rand(b, b, generator=generator, device=image_keys.device) + 1.0  # (B, B) > 0
    choice = (noise * allowed).argmax(dim=1)  # (B,) uniform among allowed
    valid = allowed.any(dim=1)
    choice = torch.where(valid, choice, torch.arange(b, device=image_keys.device))
    return choice, valid
