"""Question-only branch (the bias branch of RUBi; Cadène et al., NeurIPS 2019).

Answer logits from the question vector alone (UpDn's ``question_features``, the GRU's last
hidden state), as RUBi's ``c_1`` (block's ``MLP``: Linear layers with ReLU between, none after
the last, no dropout by default)::

    q_logits = W_k ReLU( ... ReLU(W_1 sg(q)) ... )      (B, H) -> (B, A)

``sg`` is a stop-gradient (``detach_input=True``, RUBi's ``grad_mul_const(q, 0)``): the branch
learns from its own losses but never moves the main model's question encoder.

:class:`QuestionOnlyVQA` is the *question-only VQA model* (method ``question-only``): UpDn with the
image factor removed, built from UpDn's own question encoder, ``q_net`` and classifier::

    q      = GRU(E[w_1..w_len])  last hidden state      (B, H)   as UpDn
    joint  = ReLU(W_q' q)                               (B, H)   UpDn: ReLU(W_q' q) ⊙ ReLU(W_v' v)
    logits = W_2 Dropout(ReLU(W_1 joint))               (B, A)   UpDn's classifier

Its forward reads ``question_tokens`` and ``question_mask`` only, never the regions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pkd.train.models.layers import question_lengths


class QuestionOnly(nn.Module):
    """MLP ``question_dim -> hidden_dims... -> num_answers`` over (optionally) detached input."""

    def __init__(self, question_dim: int, num_answers: int,
                 hidden_dims: Sequence[int] = (1024, 1024), dropout: float = 0.0,
                 detach_input: bool = True):
        super().__init__()
        self.detach_input = detach_input  # stop-gradient into the question encoder
        dims = [question_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-1], num_answers))
        self.mlp = nn.Sequential(*layers)

    def forward(self, question_features: torch.Tensor) -> torch.Tensor:
        """Question-only answer logits (B, A) of ``question_features`` (B, H)."""
        q = question_features.detach() if self.detach_input else question_features
        return self.mlp(q)


class QuestionOnlyVQA(nn.Module):
    """UpDn's question path alone (module docstring); takes its modules from a built ``UpDn``, so
    the layers and their initialisation are the baseline's (only the image part is left out)."""

    def __init__(self, updn: nn.Module):
        super().__init__()
        self.word_embedding = updn.word_embedding
        self.question_rnn = updn.question_rnn
        self.q_net = updn.q_net
        self.classifier = updn.classifier
        self.word_feature_dim, self.joint_dim = updn.word_feature_dim, updn.joint_dim

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Keys: logits (B, A), joint (B, H), question_features (B, H), word_features (B, L, Dw)."""
        words = self.word_embedding(batch["question_tokens"])  # (B, L, Dw)
        lengths = question_lengths(batch["question_mask"]).cpu()
        packed = pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        _, last = self.question_rnn(packed)  # (1, B, H)
        q = last[0]  # (B, H)
        joint = self.q_net(q)  # (B, H)
        return {"logits": self.classifier(joint), "joint": joint, "question_features": q,
                "word_features": words}
