"""The non-distilled baseline: ``L = L_vqa`` (BCE on VQA soft scores)."""

from __future__ import annotations

import torch
from torch import nn

from pkd.train.losses.vqa import VQALoss
from pkd.train.tasks.method import Method


class BaselineTask(nn.Module):
    """VQA model + BCE loss; everything trainable lives in ``self.model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.vqa = VQALoss()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        vqa_loss = self.vqa(out["logits"], batch["targets"])
        return {"loss": vqa_loss, "vqa_loss": vqa_loss, "logits": out["logits"]}


class Baseline(Method):
    """``method.name = "baseline"``: the VQA model alone (UpDn or fusion), ``L = L_vqa``."""

    name = "baseline"

    def task(self, cfg, model: nn.Module) -> BaselineTask:
        return BaselineTask(model)
