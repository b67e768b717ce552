"""Bottom-up / top-down attention VQA model (UpDn; Anderson et al., CVPR 2018).

Follows the widely used re-implementation bottom-up-attention-vqa (Teney et al. simplifications):

    w_i   = E[token_i]                                  word embeddings      (B, L, Dw)
    q     = GRU(w_1..w_len)  last hidden state          question             (B, H)
    a_n   = softmax_n( w_a · Dropout(ReLU(W_v r_n) ⊙ ReLU(W_q q)) )  over valid regions (B, N)
    v     = Σ_n a_n r_n                                 attended regions     (B, Dr)
    joint = ReLU(W_q' q) ⊙ ReLU(W_v' v)                 joint embedding      (B, H)
    [+ ReLU(W_f [image_embeds; text_embeds])]           with use_foundation_features
                                   (foundation_inputs=predicted: [e_v; e_t] of PKD's predictors)
    logits = W_2 Dropout(ReLU(W_1 joint))               answer scores        (B, A)

All linear layers are weight-normed (scalar gain), as in the reference. Words are right-padded
and the GRU runs on packed sequences, so padding never changes the output.

PKD hook: if ``self.feature_fusion`` is set (see :data:`pkd.train.models.layers.FeatureFusion`),
it maps (word features, word mask, region features, region mask) to fused features of the same
shapes; it runs after :meth:`embed_question` / :meth:`embed_regions` and before the GRU and the
attention. ``joint`` is the representation a future ITM head reads.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pkd.train.config import ModelConfig
from pkd.train.models.layers import (
    FOUNDATION_KEYS,
    AnswerClassifier,
    FCNet,
    FeatureFusion,
    masked_softmax,
    question_lengths,
    require,
    wn_linear,
)


class TopDownAttention(nn.Module):
    """Question-guided attention over regions (bottom-up-attention-vqa's ``NewAttention``)."""

    def __init__(self, region_dim: int, question_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.v_proj = FCNet(region_dim, hidden)
        self.q_proj = FCNet(question_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear = wn_linear(hidden, 1, bias=False)  # a bias cancels in the softmax

    def forward(self, regions: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, N) over regions (B, N, Dr) given question (B, H), mask (B, N)."""
        joint = self.v_proj(regions) * self.q_proj(q).unsqueeze(1)  # (B, N, H)
        scores = self.linear(self.dropout(joint)).squeeze(-1)  # (B, N)
        return masked_softmax(scores, mask, dim=1)


class UpDn(nn.Module):
    """UpDn VQA model; ``forward(batch)`` -> dict (see the module docstring for the math)."""

    def __init__(self, num_words: int, num_answers: int, region_dim: int, cfg: ModelConfig,
                 foundation_dim: int | None = None):
        super().__init__()
        hidden = cfg.hidden_size
        self.word_feature_dim = cfg.word_dim  # Dw, what feature_fusion sees for words
        self.region_feature_dim = region_dim  # Dr, what feature_fusion sees for regions
        self.joint_dim = hidden  # size of out["joint"]
        self.word_embedding = nn.Embedding(num_words, cfg.word_dim, padding_idx=0)
        self.question_rnn = nn.GRU(cfg.word_dim, hidden, num_layers=1, batch_first=True)
        self.attention = TopDownAttention(region_dim, hidden, hidden, cfg.dropout)
        self.q_net = FCNet(hidden, hidden)
        self.v_net = FCNet(region_dim, hidden)
        self.foundation_net = None
        if cfg.use_foundation_features:
            if not foundation_dim:
                raise ValueError("use_foundation_features needs foundation_dim")
            self.foundation_net = FCNet(2 * foundation_dim, hidden)
        self.foundation_keys = FOUNDATION_KEYS[cfg.foundation_inputs]
        self.classifier = AnswerClassifier(hidden, 2 * hidden, num_answers, cfg.classifier_dropout)
        self.feature_fusion: FeatureFusion | None = None  # PKD memory fusion hook

    def embed_question(self, batch: dict) -> torch.Tensor:
        """Word embeddings (B, L, Dw) of ``question_tokens`` (B, L) int64."""
        return self.word_embedding(batch["question_tokens"])

    def embed_regions(self, batch: dict) -> torch.Tensor:
        """Region features (B, N, Dr) as model-dtype floats."""
        return batch["region_features"].to(self.v_net[0].bias.dtype)

    def encode_question(self, words: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
        """Last GRU hidden state (B, H) over the real (unpadded) words of each question."""
        lengths = question_lengths(question_mask).cpu()
        packed = pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        _, last = self.question_rnn(packed)  # (1, B, H)
        return last[0]

    def attend(self, q: torch.Tensor, regions: torch.Tensor, region_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention (B, N), attended region vector (B, Dr))."""
        att = self.attention(regions, q, region_mask)  # (B, N)
        return att, torch.einsum("bn,bnd->bd", att, regions)

    def fuse(self, q: torch.Tensor, v: torch.Tensor, batch: dict) -> torch.Tensor:
        """Joint embedding (B, H) = q_net(q) ⊙ v_net(v) [+ foundation_net(foundation embeds)]."""
        joint = self.q_net(q) * self.v_net(v)  # (B, H)
        if self.foundation_net is not None:
            why = "model.use_foundation_features"
            extra = torch.cat([require(batch, k, why) for k in self.foundation_keys],
                              dim=-1)  # (B, 2 De)
            joint = joint + self.foundation_net(extra.to(joint.dtype))
        return joint

    def classify(self, joint: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, A)."""
        return self.classifier(joint)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Keys: logits (B,A), joint (B,H), question_features (B,H), word_features (B,L,Dw),
        region_features_in (B,N,Dr) (after feature_fusion), attention (B,N)."""
        question_mask, region_mask = batch["question_mask"], batch["region_mask"]
        words = self.embed_question(batch)  # (B, L, Dw)
        regions = self.embed_regions(batch)  # (B, N, Dr)
        if self.feature_fusion is not None:
            words, regions = self.feature_fusion(words, question_mask, regions, region_mask)
        q = self.encode_question(words, question_mask)  # (B, H)
        att, v = self.attend(q, regions, region_mask)  # (B, N), (B, Dr)
        joint = self.fuse(q, v, batch)  # (B, H)
        return {
            "logits": self.classify(joint),
            "joint": joint,
            "question_features": q,
            "word_features": words,
            "region_features_in": regions,
            "attention": att,
        }
