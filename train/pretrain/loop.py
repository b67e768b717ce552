"""Pre-training steps: ``fit_epochs`` trains the model in place on the caption corpus.

Each epoch visits the training images in a seeded order with one seeded random caption each
(:func:`epoch_batches`); a step's loss is ``L = L_itc + itm_weight · L_itm`` (ITM for BLIP
only; the losses are in :mod:`pkd.train.losses.pretrain`), the ITC with one attribute-swapped
negative caption per caption when ``swap_negatives > 0`` (:mod:`pkd.train.pretrain.negatives`),
plus ``tag_weight · L_tag`` with ``tag_weight > 0`` (:mod:`pkd.train.pretrain.tags`). AdamW with
linear warmup and cosine decay (:func:`pkd.train.schedule.make_scheduler`); CLIP's
``logit_scale`` is clamped at
``log 100`` after every step, as in CLIP. One generator seeded with ``cfg.seed`` drives the
epoch order, the caption choice and the hard-negative draws.
"""

from __future__ import annotations

import math

import torch

from pkd.progress import track
from pkd.train.losses.pretrain import hard_negatives, itc_loss, itm_loss, swap_loss
from pkd.train.pretrain.config import PretrainConfig
from pkd.train.pretrain.corpus import PixelNormalizer, TokenizedCaptions
from pkd.train.pretrain.model import encode_images, encode_texts, itc_scale, itm_logits
from pkd.train.pretrain.negatives import NegativeCaptions
from pkd.train.pretrain.tags import TagHead, tag_loss
from pkd.train.schedule import make_scheduler


def blip_itm_loss(model, vision: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                  similarity: torch.Tensor, positives: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """CE of ``itm_head`` on B positive pairs, B (image, hard text) and B (hard image, text)."""
    neg_text, neg_image = hard_negatives(similarity, positives, generator)  # (B,), (B,)
    vision_all = torch.cat([vision, vision, vision[neg_image]])  # (3B, P, d_v)
    ids_all = torch.cat([input_ids, input_ids[neg_text], input_ids])  # (3B, L)
    mask_all = torch.cat([mask, mask[neg_text], mask])  # (3B, L)
    matched = torch.arange(len(ids_all)) < len(input_ids)  # (3B,) the first B match
    return itm_loss(itm_logits(model, vision_all, ids_all, mask_all), matched)


def step_losses(model, cfg: PretrainConfig, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                mask: torch.Tensor, positives: torch.Tensor, generator: torch.Generator,
                negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
                tagging: tuple[TagHead, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """``loss`` plus its named parts (``itc_loss``, and ``itm_loss`` for BLIP) of one batch;
    ``negatives`` (ids, mask) (N, L'): extra negative texts of the ITC's image-to-text term;
    ``tagging`` (head, tags (B, K)): adds ``tag_loss``."""
    image, vision = encode_images(model, cfg.family, pixel_values)
    text = encode_texts(model, cfg.family, input_ids, mask)
    scale = itc_scale(model, cfg.family, cfg)
    negative = None if negatives is None else encode_texts(model, cfg.family, *negatives)
    parts = {"itc_loss": itc_loss(image, text, scale, positives, negative)}
    if negative is not None and cfg.swap_weight > 0:  # the swapped attribute alone decides
        parts["swap_loss"] = swap_loss(image, text, negative, scale)
    if tagging is not None:
        parts["tag_loss"] = tag_loss(tagging[0], image, tagging[1])
    if cfg.family == "blip":
        similarity = (scale * image @ text.T).detach()  # (B, B)
        parts["itm_loss"] = blip_itm_loss(model, vision, input_ids, mask, similarity, positives,
                                          generator)
    parts["loss"] = (parts["itc_loss"] + cfg.itm_weight * parts.get("itm_loss", 0.0)
                     + cfg.swap_weight * parts.get("swap_loss", 0.0)
                     + cfg.tag_weight * parts.get("tag_loss", 0.0))
    return parts


def adamw(modules: list, cfg) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``modules`` (``cfg.lr``, ``cfg.weight_decay``: a
    :class:`PretrainConfig` or ``RegionPretrainConfig``); no weight decay on gains, biases and
    the logit scale (tensors under 2-D)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def epoch_batches(train_idx: torch.Tensor, tokens: TokenizedCaptions, batch_size: int,
                  generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image indices (B,), caption indices (B,)) of one epoch: the training images in a seeded
    order, one seeded random caption each; a last batch under 2 images is dropped."""
    order = train_idx[torch.randperm(len(train_idx), generator=generator)]
    counts = torch.bincount(tokens.image_of, minlength=int(tokens.positives.shape[0]))  # (N,)
    starts = counts.cumsum(0) - counts  # first caption of each image (captions are grouped)
    pick = (torch.rand(len(order), generator=generator) * counts[order]).long()
    captions = starts[order] + pick
    return [(order[i:i + batch_size], captions[i:i + batch_size])
            for i in range(0, len(order), batch_size) if len(order) - i >= 2]


def _pick_negatives(negatives: NegativeCaptions | None, captions: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ids, mask) (B, L') of one seeded negative per caption, shared padding trimmed."""
    if negatives is None:
        return None
    k = torch.randint(negatives.input_ids.shape[1], (len(captions),), generator=generator)
    ids, mask = negatives.input_ids[captions, k], negatives.attention_mask[captions, k]
    length = int(mask.sum(1).max())
    return ids[:, :length], mask[:, :length]


def fit_epochs(model, cfg: PretrainConfig, pixels: torch.Tensor, tokens: TokenizedCaptions,
               train_idx: torch.Tensor, normalize: PixelNormalizer,
               negatives: NegativeCaptions | None = None,
               tags: torch.Tensor | None = None) -> list[dict]:
    """Train in place; returns per-epoch mean losses ``[{epoch, loss, itc_loss, ...}]``.
    With ``negatives``, each caption of a step brings one of its swapped negatives (seeded
    choice) into the ITC (:func:`step_losses`); with ``tags`` (N, K) of the corpus images and
    ``tag_weight > 0``, a training-only :class:`TagHead` learns alongside (not returned)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(epoch_batches(train_idx, tokens, cfg.batch_size,
                                        torch.Generator().manual_seed(cfg.seed)))
    total = cfg.epochs * steps_per_epoch
    head = TagHead(cfg.size.proj_dim) if tags is not None and cfg.tag_weight > 0 else None
    optimizer = adamw([model] if head is None else [model, head], cfg)
    scheduler = make_scheduler(optimizer, round(cfg.warmup_fraction * total), total, "cosine")
    history = []
    model.train()
    for epoch in track(range(cfg.epochs), description="pre-training", every_s=15.0):
        sums: dict[str, float] = {}
        batches = epoch_batches(train_idx, tokens, cfg.batch_size, generator)
        for images, captions in batches:
            length = int(tokens.attention_mask[captions].sum(1).max())  # trim shared padding
            parts = step_losses(model, cfg, normalize(pixels[images]),
                                tokens.input_ids[captions, :length],
                                tokens.attention_mask[captions, :length],
                                tokens.positives[images][:, captions], generator,
                                _pick_negatives(negatives, captions, generator),
                                None if head is None else (head, tags[images]))
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            if cfg.family == "clip":  # CLIP clips its temperature at 1/100
                model.logit_scale.data.clamp_(max=math.log(100.0))
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        history.append({"epoch": epoch + 1, **{k: v / len(batches) for k, v in sums.items()}})
    return history
