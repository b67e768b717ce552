"""The question-only reference: answer from the question alone, ``L = L_vqa(f_q(q))``.

``f_q`` is :class:`pkd.train.models.question_only.QuestionOnlyVQA`: UpDn's question encoder,
``q_net`` and classifier without the image factor (``joint = ReLU(W_q' q)``). It is the VQA
model of the run, so ``best/`` holds it and ``pkd evaluate`` runs it; its forward never reads
region features (the batches still come from the regions store, which keys the questions). It
measures how far the training prior alone goes: on VQA-CP it scores well below UpDn, on an
in-distribution split close to the prior.
"""

from __future__ import annotations

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.question_only import QuestionOnlyVQA
from pkd.train.tasks.method import Method


class QuestionOnlyTask(nn.Module):
    """Question-only model + BCE loss on VQA soft scores."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.vqa = VQALoss()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(batch)["logits"]  # (B, A)
        vqa_loss = self.vqa(logits, batch["targets"])
        return {"loss": vqa_loss, "vqa_loss": vqa_loss, "logits": logits}


def updn_only(cfg, method: str, why: str) -> list[tuple[str, str]]:
    """The ``model.arch`` problem of a method that needs UpDn (one line), or none."""
    if cfg.model.arch == "updn":
        return []
    return [("model.arch", f"{cfg.model.arch!r} is not 'updn' (method.name={method} {why})")]


class QuestionOnly(Method):
    """``method.name = "question-only"``: UpDn's question path alone, ``L = L_vqa``."""

    name = "question-only"

    def problems(self, cfg) -> list[tuple[str, str]]:
        out = updn_only(cfg, self.name, "keeps UpDn's question encoder; fusion has none apart)")
        if cfg.model.use_foundation_features:
            out.append(("model.use_foundation_features",
                        "true feeds image embeddings (method.name=question-only sees no image)"))
        return out

    def vqa_model(self, cfg, model: nn.Module) -> QuestionOnlyVQA:
        if not hasattr(model, "question_rnn"):
            raise PkdError(f"model.arch={cfg.model.arch!r}: method.name=question-only needs updn")
        return QuestionOnlyVQA(model)

    def task(self, cfg, model: nn.Module) -> QuestionOnlyTask:
        return QuestionOnlyTask(model)
