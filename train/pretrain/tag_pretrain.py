"""Tag pre-training of the image tower, then a locked tower for the ITC (LiT-style).

The contrastive objective alone leaves the demo's tiny ViT shape-blind at any corpus size we can
afford (README, "The foundation model's shape probe"): colour, size and count already tell
in-batch captions apart, and a ViT trained from scratch on a few thousand images overfits
instead of learning outlines. Real foundation models start from an image tower that already
perceives (CLIP's scale; LiT, Zhai et al., CVPR 2022, locks a pre-trained tower and trains only
the text tower to match it). Here the tower is first trained as a *tagger* on the caption
corpus itself (as Tag2Text / RAM parse tags from captions), then locked while the ITC aligns the
text tower to it:

    stage A (``tag_epochs``):  y_n ∈ {0, 1}^K  the object tags of image n's captions
                               z_n = W · pool(ViT(x_n)) + b        (pool: the tower's pooler output)
                               L_A = mean_{n, k} BCE(z_nk, y_nk)
    stage B (``epochs``):      the ITC of :mod:`pkd.train.pretrain.loop`, with the vision tower
                               frozen when ``lock_vision`` (its projection still trains)

Tags (:func:`object_tags`, K = |colours|·|shapes| + |sizes|·|colours|·|shapes| + |counts|): one
per (colour, shape) pair and one per (size, colour, shape) triple a caption names (``"a small
red circle"`` -> red circle, small red circle) and one for the object count word (``"two
objects"``) — every attribute the zero-shot probes ask, shape bound to colour twice over (with
the triples alone the shape probe fell from 85 to 71: README). The head (W, b) is training-only;
the saved model is a plain CLIP / BLIP. One generator seeded with ``cfg.seed`` drives the order.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from pkd.progress import track
from pkd.train.pretrain.config import PretrainConfig
from pkd.train.pretrain.corpus import PixelNormalizer
from pkd.train.pretrain.evaluate import PROBE_WORDS, ZERO_SHOT_PROBES
from pkd.train.pretrain.loop import adamw
from pkd.train.schedule import make_scheduler

SIZES, COLORS, SHAPES = PROBE_WORDS["size"], PROBE_WORDS["color"], PROBE_WORDS["shape"]
COUNTS = ZERO_SHOT_PROBES["count"]
_OBJECT = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
_COUNT = re.compile(rf"\b({'|'.join(COUNTS)}) objects?\b")
N_PAIRS = len(COLORS) * len(SHAPES)
N_TAGS = N_PAIRS + len(SIZES) * N_PAIRS + len(COUNTS)


def pair_index(color: str, shape: str) -> int:
    """Column of the (colour, shape) tag: the pairs come first."""
    return COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)


def tag_index(size: str, color: str, shape: str) -> int:
    """Column of the (size, colour, shape) tag, after the pairs; the count tags come last."""
    return N_PAIRS + SIZES.index(size) * N_PAIRS + pair_index(color, shape)


def object_tags(captions: list[list[str]]) -> torch.Tensor:
    """(N, K) float multi-hot tags of N images: the union over each image's captions of the
    (colour, shape) pairs and (size, colour, shape) triples named and of the first object count
    word of each caption."""
    tags = torch.zeros(len(captions), N_TAGS)
    for n, texts in enumerate(captions):
        for text in texts:
            for size, color, shape in _OBJECT.findall(text):
                tags[n, pair_index(color, shape)] = tags[n, tag_index(size, color, shape)] = 1.0
            count = _COUNT.search(text)
            if count:
                tags[n, N_TAGS - len(COUNTS) + COUNTS.index(count.group(1))] = 1.0
    return tags


def pooled(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, d_v) pooler output of the vision tower (CLIP and BLIP: the normed CLS token)."""
    return model.vision_model(pixel_values=pixel_values).pooler_output


def fit_tag_epochs(model, cfg: PretrainConfig, pixels: torch.Tensor, tags: torch.Tensor,
                   train_idx: torch.Tensor, normalize: PixelNormalizer) -> list[dict]:
    """Stage A in place on ``model.vision_model``: ``[{epoch, tag_loss}]`` (mean per epoch).
    AdamW (``cfg.lr``, ``cfg.weight_decay`` on matrices only, as in the ITC), linear warmup then
    cosine decay, batches of ``cfg.batch_size`` images in a seeded order (a last batch under 2
    images is dropped)."""
    head = nn.Linear(model.vision_model.config.hidden_size, tags.shape[1])
    optimizer = adamw([model.vision_model, head], cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    size = cfg.batch_size
    starts = [i for i in range(0, len(train_idx), size) if len(train_idx) - i >= 2]
    total = cfg.tag_epochs * len(starts)
    scheduler = make_scheduler(optimizer, round(cfg.warmup_fraction * total), total, "cosine")
    history = []
    model.train()
    for epoch in track(range(cfg.tag_epochs), description="tag pre-training", every_s=15.0):
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        loss_sum = 0.0
        for start in starts:
            images = order[start:start + size]
            logits = head(pooled(model, normalize(pixels[images])))  # (B, K)
            loss = F.binary_cross_entropy_with_logits(logits, tags[images])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
        history.append({"epoch": epoch + 1, "tag_loss": loss_sum / len(starts)})
    return history


def lock_vision(model) -> None:
    """Freeze the vision tower (stage B of LiT); the ITC's projections still train."""
    model.vision_model.requires_grad_(False)
