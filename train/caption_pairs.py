"""Caption-image pairs of the real pre-training corpus, for distillation on it (``lwf-oracle``).

PKD imitates the pre-training data because it cannot use it; the oracle row uses it. Each step
draws ``B`` captions of the corpus's *training* images (the images ``F0``'s pre-training held out
to measure forgetting are never drawn: :func:`pkd.train.pretrain.lxmert_data.heldout_split` with
the seed and share recorded in ``F0/pretrain_metrics.json``), pairs them as pre-training did
(true caption, an attribute-swapped one or another image's, :func:`itm_pairs`) and masks their
words (:func:`mask_tokens`). Both ``F0`` and ``D`` read the same masked pairs; the distillation
reads their masked-LM logits at the ``[MASK]`` positions and their matching log-odds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pkd.errors import PkdError
from pkd.train.pretrain.lxmert_data import (
    Masking,
    encode_texts,
    group_token_ids,
    heldout_split,
    itm_pairs,
    load_region_captions,
    mask_tokens,
)


def pretraining_split(foundation: str) -> tuple[int, float]:
    """(seed, eval_fraction) of ``F0``'s pre-training (``pretrain_metrics.json``); (0, 0.0) when
    the folder does not record them (then no image is held out here)."""
    path = Path(foundation) / "pretrain_metrics.json"
    if not path.is_file():
        return 0, 0.0
    cfg = json.loads(path.read_text()).get("config", {})
    return int(cfg.get("seed", 0)), float(cfg.get("eval_fraction", 0.0))


class CaptionPairs:
    """Masked caption-image pairs of the corpus's training images (module docstring)."""

    def __init__(self, data_dir: str, regions: str, foundation: str, tokenizer, seed: int,
                 mlm_probability: float = 0.15, attribute_probability: float = 0.5,
                 negative_share: float = 0.5, hard_share: float = 0.5, max_positions: int = 64):
        pre_seed, fraction = pretraining_split(foundation)
        keep = heldout_split(data_dir, pre_seed, fraction)[0] if fraction > 0 else None
        self.images = load_region_captions(data_dir, regions, keep)
        self.texts = [c for caps in self.images.captions for c in caps]
        if not self.texts:
            raise PkdError(f"{data_dir}/captions.json: no training captions to distil on")
        self.image_of = torch.tensor([i for i, caps in enumerate(self.images.captions)
                                      for _ in caps])
        self.own = [set(caps) for caps in self.images.captions]
        self.tokenizer, self.max_positions = tokenizer, max_positions
        self.attribute_ids = torch.cat(list(group_token_ids(tokenizer).values()))
        self.masking = Masking(mlm_probability, attribute_probability, tokenizer.mask_token_id,
                               len(tokenizer.all_special_ids), len(tokenizer))
        self.negative_share, self.hard_share = negative_share, hard_share
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """``{input_ids, attention_mask (B, L), visual_feats, visual_pos, visual_attention_mask,
        masked (B, L) bool: the [MASK] positions}`` of ``size`` random training captions."""
        g = self.generator
        picked = torch.randint(len(self.texts), (size,), generator=g)
        idx = self.image_of[picked]
        texts, matched, spans = itm_pairs([self.texts[k] for k in picked.tolist()],
                                          [self.own[i] for i in idx.tolist()], self.texts,
                                          self.negative_share, self.hard_share, g)
        enc = encode_texts(self.tokenizer, texts, spans, self.attribute_ids, self.max_positions)
        ids, _ = mask_tokens(enc["input_ids"], enc["maskable"], enc["attribute"], matched,
                             self.masking, g)
        return {"input_ids": ids, "attention_mask": enc["attention_mask"],
                "masked": ids == self.masking.mask_id, **self.images.visual(idx)}
