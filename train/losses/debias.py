"""Losses of two reference debiasing methods for VQA: RUBi and Learned-Mixin +H (issue 13).

Both train the VQA model through a combination with a bias branch and predict at test time with
the VQA model's own logits ``x`` (B, A) alone. Both use the soft-score BCE of
:class:`pkd.train.losses.vqa.VQALoss` (summed over answers, averaged over questions), written
``L_bce`` below.

**RUBi** (Cadène et al., NeurIPS 2019, "RUBi: Reducing Unimodal Biases for Visual Question
Answering"). With ``q_logits = c_1(sg(q))`` (B, A) the question-only branch
(:class:`pkd.train.models.question_only.QuestionOnly`; ``sg`` = stop-gradient on the question
vector) and ``c_q`` a Linear(A, A) classifier on top of it::

    x_rubi = x ⊙ σ(q_logits)                      the mask
    L = L_bce(x_rubi, s) + λ_q · L_bce(c_q(q_logits), s)

With ``criterion="softmax"`` both terms are the soft-target cross-entropy ``L_ce`` instead
(:func:`soft_cross_entropy`), the criterion of RUBi's own code (a softmax over answers): under
a sigmoid per answer, a mask ``σ(q_logits) ≈ 0`` pulls an answer's logit to 0 (probability 1/2)
whatever ``x`` says, under a softmax it only flattens that answer's score.

**LMH** (Clark, Yatskar, Zettlemoyer, EMNLP 2019, "Don't Take the Easy Way Out: Ensemble Based
Methods for Avoiding Known Dataset Biases", learned-mixin + H). ``p`` (B, A) is each question's
training prior ``p(answer | question type)``
(:func:`pkd.train.models.answer_prior.answer_prior`), ``h`` (B, H) the model's hidden state
(UpDn's ``joint``). In the binary (sigmoid) setting each answer is its own two-way ensemble of
the model with the bias ``(p, 1 - p)``, which reduces to adding a log-odds bias to the logit::

    g      = softplus(w · h + c)                   (B, 1) learned bias scale, >= 0
    t      = t_0 + σ(a)                            smoothing (learned a, init -1; t_0 constant)
    b      = log(p + t) - log(1 - p + t)           (B, A) bias log-odds
    L_lm   = L_bce(x + g · b, s)
    H      = mean_{b,a} -[ σ(g b) log σ(g b) + σ(-g b) log σ(-g b) ]
    L      = L_lm + w_H · H                       (w_H = 0.36 for VQA-CP)

This is exactly the reference's ``LearnedMixin`` (chrisc36/bottom-up-attention-vqa,
``vqa_debias_loss_functions.py``): it adds ``g·log(p+t)`` to ``log σ(x)`` and ``g·log(1-p+t)`` to
``log(1 - σ(x))`` and renormalizes the pair, i.e. ``log σ(x + g·b)``; its entropy is that of the
renormalized pair ``softmax(g·log(p+t), g·log(1-p+t)) = (σ(gb), σ(-gb))``, averaged over
questions *and* answers. The weight 0.36 is tuned for that scale (at most ``log 2`` per answer),
not for an entropy of a softmax over the A answers.

Choices *(ours)*: the arguments of the two logs are clamped at 1e-12, which only matters when
``t = 0`` and ``p ∈ {0, 1}`` (the reference gives ±inf / NaN there); ``g`` reads ``h`` without a
stop-gradient, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pkd.train.losses.vqa import VQALoss

LOG_FLOOR = 1e-12  # clamp for log arguments (only reached with no smoothing and p in {0, 1})


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``L_ce = mean_i -Σ_a s̃_ia log softmax(z_i)_a`` with ``s̃_i = s_i / Σ_a s_ia`` the soft
    scores made a distribution; a question without any scored answer adds 0 (it still counts
    in the mean, as in ``L_bce``). ``logits``, ``targets`` (B, A)."""
    total = targets.float().sum(1, keepdim=True)  # (B, 1)
    dist = targets.float() / total.clamp(min=torch.finfo(torch.float32).tiny)
    return -(dist * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def binary_entropy_with_logits(z: torch.Tensor) -> torch.Tensor:
    """Element-wise ``-[σ(z) log σ(z) + σ(-z) log σ(-z)]`` (in nats, at most log 2), stable."""
    return -(torch.sigmoid(z) * F.logsigmoid(z) + torch.sigmoid(-z) * F.logsigmoid(-z))


class RUBiLoss(nn.Module):
    """RUBi: BCE of the question-masked logits + BCE of the question-only classifier (module doc).

    Owns ``c_q`` (Linear(A, A), RUBi's ``c_2``; ``end_classifier=False`` drops it, so the
    question loss reads ``q_logits`` directly). Returns ``loss``, ``vqa_loss`` (the masked term),
    ``q_loss`` (unweighted), ``logits_rubi`` (B, A) and ``logits_q`` (B, A, the ``c_q`` output).
    """

    def __init__(self, num_answers: int, question_loss_weight: float = 1.0,
                 end_classifier: bool = True, criterion: str = "bce"):
        super().__init__()
        if criterion not in ("bce", "softmax"):
            raise ValueError(f"RUBi criterion must be 'bce' or 'softmax', got {criterion!r}")
        self.question_loss_weight = question_loss_weight  # λ_q
        self.c_q = nn.Linear(num_answers, num_answers) if end_classifier else nn.Identity()
        self.bce = VQALoss() if criterion == "bce" else soft_cross_entropy

    def forward(self, logits: torch.Tensor, q_logits: torch.Tensor, targets: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """``logits`` (B, A) of the VQA model, ``q_logits`` (B, A) of the question-only branch
        (already computed from detached question features), ``targets`` (B, A) soft scores."""
        if logits.shape != q_logits.shape:
            raise ValueError(f"VQA logits {tuple(logits.shape)} and question-only logits "
                             f"{tuple(q_logits.shape)} differ")
        logits_rubi = logits.float() * torch.sigmoid(q_logits.float())  # (B, A)
        logits_q = self.c_q(q_logits)  # (B, A)
        vqa_loss = self.bce(logits_rubi, targets)
        q_loss = self.bce(logits_q, targets)
        return {"loss": vqa_loss + self.question_loss_weight * q_loss, "vqa_loss": vqa_loss,
                "q_loss": q_loss, "logits_rubi": logits_rubi, "logits_q": logits_q}


class LMHLoss(nn.Module):
    """Learned-Mixin +H over a per-question answer prior (module docstring).

    Owns ``gate`` (Linear(hidden_dim, 1): ``w``, ``c``) and, with ``smooth``, the smoothing
    parameter ``a``. ``entropy_weight=0`` gives plain Learned-Mixin. Returns ``loss``,
    ``vqa_loss`` (``L_lm``), ``entropy`` (``H``, unweighted), ``bias_scale`` (``g``, (B, 1)) and
    ``logits_lmh`` (B, A, ``x + g·b``).
    """

    def __init__(self, hidden_dim: int, entropy_weight: float = 0.36, smooth: bool = True,
                 smooth_init: float = -1.0, constant_smooth: float = 0.0):
        super().__init__()
        self.entropy_weight = entropy_weight  # w_H
        self.constant_smooth = constant_smooth  # t_0
        self.gate = nn.Linear(hidden_dim, 1)  # g = softplus(w · h + c)
        self.smooth_param = (nn.Parameter(torch.full((1,), float(smooth_init)))
                             if smooth else None)  # a, t = t_0 + σ(a)
        self.bce = VQALoss()

    def bias_log_odds(self, prior: torch.Tensor) -> torch.Tensor:
        """``b = log(p + t) - log(1 - p + t)`` (B, A) of the prior ``p`` (B, A) in [0, 1]."""
        p = prior.float()
        t = torch.full((), self.constant_smooth, device=p.device)
        if self.smooth_param is not None:
            t = t + torch.sigmoid(self.smooth_param)
        return (p + t).clamp(min=LOG_FLOOR).log() - (1 - p + t).clamp(min=LOG_FLOOR).log()

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, prior: torch.Tensor,
                targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (B, A), ``hidden`` (B, H) the model's hidden state, ``prior`` (B, A)
        ``p(answer | question type)``, ``targets`` (B, A) soft scores."""
        if logits.shape != prior.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and prior {tuple(prior.shape)} differ")
        g = F.softplus(self.gate(hidden).float())  # (B, 1)
        scaled_bias = g * self.bias_log_odds(prior)  # (B, A)
        logits_lmh = logits.float() + scaled_bias  # (B, A)
        vqa_loss = self.bce(logits_lmh, targets)
        entropy = binary_entropy_with_logits(scaled_bias).mean()
        return {"loss": vqa_loss + self.entropy_weight * entropy, "vqa_loss": vqa_loss,
                "entropy": entropy, "bias_scale": g, "logits_lmh": logits_lmh}
