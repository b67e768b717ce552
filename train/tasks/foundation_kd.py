"""Distil the frozen foundation model's outputs into D while it fine-tunes (``kd-id``,
``lwf-oracle``).

``L = L_vqa + λ · (L_mlm + L_itm)`` with the terms of :mod:`pkd.train.losses.lwf` (``λ`` =
``method.lwf.weight``, ``T`` = ``method.lwf.temperature``; model.arch = vlm) on:

- ``kd-id``: the training batch's own pairs — D's and the frozen ``F0``'s masked-LM logits at each
  cloze prompt's mask and their matching log-odds on every prompt. The in-domain distillation
  PKD's abstract calls biased: the pairs are the biased VQA data.
- ``lwf-oracle``: ``method.lwf.caption_batch`` pairs of the real caption corpus per step
  (:class:`pkd.train.caption_pairs.CaptionPairs`, regions from ``method.lwf.caption_regions``):
  learning without forgetting on the pre-training data, the ideal PKD imitates.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.train.losses.lwf import lwf_loss
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.vlm import build_vlm
from pkd.train.tasks.method import FrozenOutside, Method


def frozen_foundation(cfg, vocabs, stores) -> nn.Module:
    """F0 answering with its inherited heads (pre-trained weights), frozen in eval mode."""
    spec = replace(cfg.model, init="pretrained", answer_head="mlm", trainable="all",
                   init_from="")
    region_dim = int(stores.regions.spec.dims["feature_dim"])
    return build_vlm(spec, vocabs.answers.answers, vocabs.words, region_dim).eval() \
        .requires_grad_(False)


class FoundationKDTask(FrozenOutside):
    """D + frozen F0; ``forward`` returns loss, vqa_loss, mlm_loss, itm_loss, logits."""

    def __init__(self, model: nn.Module, foundation: nn.Module, weight: float, temperature: float,
                 captions=None, caption_batch: int = 64):
        super().__init__()
        self.model, self.vqa = model, VQALoss()
        self.hold("foundation", foundation)
        self.weight, self.temperature = weight, temperature
        self.captions, self.caption_batch = captions, caption_batch  # None: the VQA pairs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        kd = self._on_captions(batch) if self.captions is not None else self._on_vqa(batch, out)
        vqa = self.vqa(out["logits"], batch["targets"])
        total = vqa + self.weight * (kd["mlm"] + kd["itm"])
        return {"loss": total, "vqa_loss": vqa, "mlm_loss": kd["mlm"], "itm_loss": kd["itm"],
                "logits": out["logits"]}


    def _on_vqa(self, batch: dict, out: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            ref = self.foundation(batch)
        return lwf_loss(out["masked_word_logits"], ref["masked_word_logits"], out["match_logodds"],
                        ref["match_logodds"], self.temperature, mlm_valid=out["has_mask"])

    def _on_captions(self, batch: dict) -> dict[str, torch.Tensor]:
        device = batch["targets"].device
        pairs = {k: v.to(device) for k, v in self.captions.batch(self.caption_batch).items()}
        masked = pairs.pop("masked")
        mine = self.model.backbone(**pairs)
        with torch.no_grad():
            ref = self.foundation.backbone(**pairs)

        def logodds(score):
            return score[:, 1] - score[:, 0]

        return lwf_loss(mine.prediction_logits[masked], ref.prediction_logits[masked],
                        logodds(mine.cross_relationship_score),
                        logodds(ref.cross_relationship_score), self.temperature)


class InDomainKD(Method):
    """``method.name = "kd-id"``: fine-tuning + distillation of F0 on the VQA pairs."""

    name = "kd-id"

    def problems(self, cfg) -> list[tuple[str, str]]:
        if cfg.model.arch != "vlm":
            return [("model.arch", f"{cfg.model.arch!r} is not 'vlm' (method.name={self.name} "
                                   "distils the model's own foundation checkpoint)")]
        return []

    def task(self, cfg, model: nn.Module, foundation: nn.Module | None = None) -> FoundationKDTask:
        if foundation is None:
            raise PkdError(f"method.name={self.name}: the frozen foundation model is missing")
        return FoundationKDTask(model, foundation, cfg.method.lwf.weight,
                                cfg.method.lwf.temperature)

    def build_task(self, cfg, model: nn.Module, vocabs, stores) -> FoundationKDTask:
        return self.task(cfg, model, foundation=frozen_foundation(cfg, vocabs, stores))


class LwfOracle(InDomainKD):
    """``method.name = "lwf-oracle"``: fine-tuning + distillation of F0 on the caption corpus."""

    name = "lwf-oracle"

    def problems(self, cfg) -> list[tuple[str, str]]:
        if not cfg.method.lwf.caption_regions:
            return [*super().problems(cfg), ("method.lwf.caption_regions", "is empty: "
                    "lwf-oracle reads the caption images' regions (pkd extract regions "
                    "--captions)")]
        return super().problems(cfg)

    def build_task(self, cfg, model: nn.Module, vocabs, stores) -> FoundationKDTask:
        from pkd.train.caption_pairs import CaptionPairs  # PIL: loaded only when the task is built

        captions = CaptionPairs(cfg.data.root, cfg.method.lwf.caption_regions,
                                cfg.model.foundation, vocabs.words.tokenizer, cfg.run.seed)
        return FoundationKDTask(model, frozen_foundation(cfg, vocabs, stores),
                                cfg.method.lwf.weight, cfg.method.lwf.temperature, captions,
                                cfg.method.lwf.caption_batch)
