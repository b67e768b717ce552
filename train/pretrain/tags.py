"""Caption tags: an auxiliary image-tagging objective read from the captions themselves.

Contrastive ITC alone leaves the demo's tiny ViT nearly shape-blind (zero-shot shape probe ~45%,
colour ~95%): colour, size and count already separate in-batch captions, and attribute-swapped
negatives did not change that (README). Tagging models (e.g. Tag2Text, RAM) supervise the image
tower with the objects its caption names; here the tags are the (colour, shape) pairs a caption
names (``"a small red circle"`` -> red circle), the union over an image's captions::

    y_n ∈ {0, 1}^{|C|·|S|}          y_n[c·|S| + s] = 1  iff some caption of image n names (c, s)
    z_nk  = s · cos(w_k, e_n) + b_k                   e_n the unit image embedding (B, d_e)
    L_tag = mean_{n, k} BCE(z_nk, y_nk)              s = TAG_SCALE (a cosine classifier)

(a plain linear head on unit embeddings has logits bounded by ``|w_k|`` and barely leaves
``log 2`` in 20 epochs: measured, tag loss 0.57 against 0.33 for the constant base rate).

Only the caption corpus is read (its text), as for the ITC. The head ``(w, b)`` is a
training-only cosine classifier d_e -> |C|·|S|: it is not saved with the model, so the saved
foundation model is a plain CLIP / BLIP; it acts through the image embedding the zero-shot probes
and PKD read.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from pkd.train.pretrain.evaluate import PROBE_WORDS

COLORS, SHAPES = PROBE_WORDS["color"], PROBE_WORDS["shape"]
_PAIR = re.compile(r"\b(" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")\b")


def caption_tags(captions: list[list[str]]) -> torch.Tensor:
    """(N, |C|·|S|) float multi-hot tags of N images from each image's captions (module doc)."""
    tags = torch.zeros(len(captions), len(COLORS) * len(SHAPES))
    for n, texts in enumerate(captions):
        for text in texts:
            for color, shape in _PAIR.findall(text):
                tags[n, COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)] = 1.0
    return tags


TAG_SCALE = 10.0  # s: logits in [-s, s] before the bias


class TagHead(nn.Linear):
    """``s · cos(w_k, e) + b_k``: tag logits (B, |C|·|S|) from unit image embeddings (B, d_e)."""

    def __init__(self, embed_dim: int):
        super().__init__(embed_dim, len(COLORS) * len(SHAPES))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return TAG_SCALE * F.linear(image, F.normalize(self.weight, dim=1)) + self.bias


def tag_loss(head: TagHead, image: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """``L_tag``: mean binary cross-entropy of the head's logits on ``image`` (B, d_e) against
    the multi-hot ``tags`` (B, |C|·|S|)."""
    return F.binary_cross_entropy_with_logits(head(image).float(), tags.float())
