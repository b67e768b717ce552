"""Learned-Mixin +H on the VQA model (Clark, Yatskar, Zettlemoyer, EMNLP 2019; the VQA-CP version
of chrisc36/bottom-up-attention-vqa).

The bias is each question's training answer prior ``p = prior[question_type]`` (B, A), built once
from the questions the trainer trains on (:func:`training_prior`; with ``data.val_fraction > 0``
the carved validation share is left out). With ``x`` (B, A) the model's logits and ``h`` (B, H)
its ``joint`` (:class:`~pkd.train.losses.debias.LMHLoss`)::

    g = softplus(w · h + c)                        b = log(p + t) - log(1 - p + t)
    L = L_bce(x + g · b, s) + w_H · mean H(σ(g · b))           (w_H = 0.36)

The gate ``g`` (``w``, ``c``) and the smoothing ``t`` are training-only: they live in the task, so
``best/`` holds the VQA model alone and evaluation (the ``logits`` this task returns, in both
modes) is its own ``x``. Works on UpDn and on the fusion transformer (both return ``joint``).
The prior has one row per training question type plus a last "no bias" row ``p = 1/2``
(``b = 0``) for a type training never saw (:func:`pkd.train.data.question_type_ids`).
"""

from __future__ import annotations

import torch
from torch import nn

from pkd.train.config import LMHConfig
from pkd.train.data import SplitData, question_type_ids, question_type_vocab
from pkd.train.losses.debias import LMHLoss
from pkd.train.models.answer_prior import answer_prior_sparse
from pkd.train.splits import training_questions
from pkd.train.tasks.method import Method

NO_BIAS = 0.5  # p = 1/2 gives b = log(1/2 + t) - log(1/2 + t) = 0


def training_prior(split: SplitData, num_answers: int, eps: float = 0.0
                   ) -> tuple[list[str], torch.Tensor]:
    """(types' vocabulary, prior (K + 1, A)) of the training ``split``: row ``k`` is
    ``p(a | type k)`` (:func:`pkd.train.models.answer_prior.answer_prior_sparse`), row ``K`` the
    "no bias" row."""
    vocab = question_type_vocab(split)
    ids = question_type_ids(split.question_types, vocab)
    prior = answer_prior_sparse(ids, split.answer_index, split.answer_score, num_answers,
                                num_types=len(vocab) + 1, eps=eps)
    prior[len(vocab)] = NO_BIAS
    return vocab, prior


class LMHTask(nn.Module):
    """VQA model + :class:`LMHLoss` (gate, smoothing) over a fixed prior buffer (K + 1, A)."""

    def __init__(self, model: nn.Module, prior: torch.Tensor, lmh: LMHConfig | None = None):
        super().__init__()
        c = lmh or LMHConfig()
        self.model = model
        self.lmh = LMHLoss(model.joint_dim, c.entropy_weight, c.smooth, c.smooth_init,
                           c.constant_smooth)
        # derived from the training split at every start: not saved with the checkpoints
        self.register_buffer("prior", prior.float(), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        p = self.prior[batch["question_type"]]  # (B, A) p(a | question type)
        parts = self.lmh(out["logits"], out["joint"], p, batch["targets"])
        return {"loss": parts["loss"], "vqa_loss": parts["vqa_loss"],
                "entropy_loss": parts["entropy"], "logits": out["logits"]}


class LMH(Method):
    """``method.name = "lmh"``: the VQA model trained in a learned mixin with the answer prior."""

    name = "lmh"

    def task(self, cfg, model: nn.Module, prior: torch.Tensor | None = None) -> LMHTask:
        if prior is None:
            raise ValueError("the lmh task needs the training prior (build it with build_task)")
        return LMHTask(model, prior, cfg.method.lmh)

    def build_task(self, cfg, model: nn.Module, vocabs, stores) -> LMHTask:
        # exactly the trainer's training questions (carve and store joins included)
        train = training_questions(cfg, vocabs, stores)
        _, prior = training_prior(train, len(vocabs.answers), cfg.method.lmh.prior_eps)
        return self.task(cfg, model, prior)
