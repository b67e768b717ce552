"""RUBi on UpDn (Cadène et al., NeurIPS 2019): a question-only branch masks the training logits.

With ``x = f(v, q)`` (B, A) UpDn's logits, ``q`` (B, H) its question vector and ``sg`` a
stop-gradient (:mod:`pkd.train.losses.debias`, :class:`~pkd.train.losses.debias.RUBiLoss`)::

    q_logits = c_1(sg(q))                                        question-only MLP (B, A)
    L = L_bce(x ⊙ σ(q_logits), s) + λ_q · L_bce(c_q(q_logits), s)

(``method.rubi.criterion=softmax``: both terms the soft-target cross-entropy.) ``c_1`` and
``c_q`` are training-only: they live in the task, not in the VQA model, so ``best/`` holds UpDn
alone and evaluation (the ``logits`` this task returns, in both modes) is UpDn's own
``x``. Needs ``model.arch=updn`` (the fusion transformer has no separate question vector).
"""

from __future__ import annotations

import torch
from torch import nn

from pkd.train.losses.debias import RUBiLoss
from pkd.train.models.question_only import QuestionOnly
from pkd.train.tasks.method import Method
from pkd.train.tasks.question_only import updn_only


class RUBiTask(nn.Module):
    """UpDn + the question-only branch ``c_1`` + :class:`RUBiLoss` (which owns ``c_q``)."""

    def __init__(self, model: nn.Module, num_answers: int, q_weight: float = 1.0,
                 branch_dims: tuple[int, ...] = (1024, 1024), end_classifier: bool = True,
                 criterion: str = "bce"):
        super().__init__()
        self.model = model
        question_dim = model.question_rnn.hidden_size  # H of out["question_features"]
        self.question_branch = QuestionOnly(question_dim, num_answers, branch_dims,
                                            detach_input=True)  # c_1(sg(q))
        self.rubi = RUBiLoss(num_answers, q_weight, end_classifier, criterion)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        q_logits = self.question_branch(out["question_features"])  # (B, A)
        parts = self.rubi(out["logits"], q_logits, batch["targets"])
        return {"loss": parts["loss"], "vqa_loss": parts["vqa_loss"], "q_loss": parts["q_loss"],
                "logits": out["logits"]}


class RUBi(Method):
    """``method.name = "rubi"``: UpDn trained through RUBi's question-only mask."""

    name = "rubi"

    def problems(self, cfg) -> list[tuple[str, str]]:
        return updn_only(cfg, self.name, "reads UpDn's question_features")

    def task(self, cfg, model: nn.Module) -> RUBiTask:
        r = cfg.method.rubi
        return RUBiTask(model, num_answers_of(model), r.q_weight, tuple(r.branch_dims),
                        r.end_classifier, r.criterion)


def num_answers_of(model: nn.Module) -> int:
    """A (the classifier's output rows) of a VQA model whose classifier ends in a Linear."""
    return int(model.classifier[-1].out_features)
