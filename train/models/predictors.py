"""PKD's cross-modal feature predictors ``P_v(q, r) -> ṽ`` and ``P_t(r, q) -> t̃``.

The paper says only "two networks trained with an ITM loss and a feature divergence loss"; the
architecture below is **our reading** (``shared/METHODS.md``). Both read the question and the
regions through their *own* embeddings (not the VQA model's), so stage 1 does not depend on D::

    w_i = E[q_i] + P[i]                               word tokens      (B, L, H)
    r_n = LN(W_r [region_n; geometry_n])              region tokens    (B, N, H)

A :class:`TokenPredictor` of ``layers`` pre-LN blocks runs on ``x = [Q; primary tokens]`` with
``Q`` (T', H) learned query tokens::

    x = x + SelfAttn(LN(x))            keys: queries + the valid primary tokens
    x = x + CrossAttn(LN(x), context)  keys: the valid context tokens (the other modality)
    x = x + MLP(LN(x))
    out = W_o LN(x[:, :T'])            (B, T', d_out) in the foundation token space

- ``P_v``: primary = question words, context = regions, ``T' = P'``, ``d_out = d_v``: question-
  conditioned queries attend to the regions and predict the foundation *vision* tokens.
- ``P_t``: primary = regions, context = question words, ``T' = L'``, ``d_out = d_t``: image-
  conditioned queries attend to the words and predict the foundation *text* tokens.

``inputs="cross"`` (the alternative reading in ``shared/METHODS.md``: predict one modality's
features *from the other* only): ``P_v`` reads the question words alone (primary and context
= words: image-like vision features from the question, ``P_v(q)``) and ``P_t`` the regions
alone (caption-like text features from the image, ``P_t(r)``), so a predicted pair ``(ṽ, t̃)``
imitates a pre-training image–caption pair built from the two sides of a VQA item.

Attention is :class:`~pkd.train.models.attention.MultiHeadAttention` (a masked softmax), so
padding never changes the output and a row without any valid key gives zeros (not NaN).

``null_key`` (ours): a learned context token ``c_0`` joins every cross-attention's keys and
values, ``CrossAttn(x, [c_0; context])``. Without it the attended vector is a convex average of
the context, the same whatever the number of matching regions (softmax attention cannot count:
Zhang et al., ICLR 2018); with it the weight left on ``c_0``, ``e^{s_0} / (e^{s_0} + Σ_n e^{s_n})``,
falls as matching regions are added, so the output can carry how many there are.
"""

from __future__ import annotations

import torch
from torch import nn

from pkd.train.models.attention import MultiHeadAttention

PREDICTED_VISION, PREDICTED_TEXT = "predicted_vision_tokens", "predicted_text_tokens"


class PredictorBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention to the context, MLP (module docstring)."""

    def __init__(self, hidden: int, heads: int, null_key: bool = False):
        super().__init__()
        self.null = nn.Parameter(torch.zeros(1, 1, hidden)) if null_key else None  # c_0
        self.self_norm, self.cross_norm, self.mlp_norm = (nn.LayerNorm(hidden) for _ in range(3))
        self.self_attn, self.cross_attn = (MultiHeadAttention(hidden, heads, out_name="out")
                                           for _ in range(2))  # W_o named 'out'
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(),
                                 nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        if self.null is not None:  # [c_0; context], c_0 always a valid key
            b = context.shape[0]
            context = torch.cat([self.null.expand(b, -1, -1).to(context.dtype), context], dim=1)
            context_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool,
                                                 device=context_mask.device), context_mask], 1)
        h = self.self_norm(x)
        x = x + self.self_attn(h, h, mask)[0]  # (B, T' + S, H)
        x = x + self.cross_attn(self.cross_norm(x), context, context_mask)[0]
        return x + self.mlp(self.mlp_norm(x))


class TokenPredictor(nn.Module):
    """``num_tokens`` learned queries + primary tokens -> (B, num_tokens, out_dim)."""

    def __init__(self, hidden: int, heads: int, layers: int, num_tokens: int, out_dim: int,
                 null_key: bool = False):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tokens, hidden) * 0.02)  # (T', H)
        self.blocks = nn.ModuleList(PredictorBlock(hidden, heads, null_key)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, out_dim)

    def forward(self, primary: torch.Tensor, primary_mask: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        b, t = primary.shape[0], self.queries.shape[0]
        x = torch.cat([self.queries.expand(b, -1, -1), primary], dim=1)  # (B, T' + S, H)
        ones = torch.ones(b, t, dtype=torch.bool, device=primary.device)
        mask = torch.cat([ones, primary_mask], dim=1)  # (B, T' + S)
        for block in self.blocks:
            x = block(x, mask, context, context_mask)
        return self.proj(self.norm(x[:, :t]))  # (B, T', d_out)


class CrossModalPredictors(nn.Module):
    """``P_v`` and ``P_t`` with shared input embeddings; ``forward(batch)`` -> predicted tokens."""

    def __init__(self, num_words: int, max_words: int, region_dim: int, vision_tokens: int,
                 vision_dim: int, text_tokens: int, text_dim: int, hidden: int = 256,
                 heads: int = 4, layers: int = 2, inputs: str = "both", null_key: bool = False):
        super().__init__()
        if inputs not in ("both", "cross"):
            raise ValueError(f"predictor inputs must be 'both' or 'cross', got {inputs!r}")
        self.inputs = inputs  # "both": P_v(q, r), P_t(r, q); "cross": P_v(q), P_t(r)
        self.region_dim = region_dim  # raw region feature size d_r
        self.word_embedding = nn.Embedding(num_words, hidden, padding_idx=0)
        self.word_position = nn.Embedding(max_words, hidden)
        self.region_proj = nn.Linear(region_dim + 6, hidden)
        self.region_norm = nn.LayerNorm(hidden)
        self.vision = TokenPredictor(hidden, heads, layers, vision_tokens, vision_dim,
                                     null_key)  # P_v
        self.text = TokenPredictor(hidden, heads, layers, text_tokens, text_dim, null_key)  # P_t

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(word tokens (B, L, H), region tokens (B, N, H)) from the raw batch."""
        ids = batch["question_tokens"]  # (B, L)
        if ids.shape[1] > self.word_position.num_embeddings:
            raise ValueError(f"{ids.shape[1]} question tokens exceed the predictors' "
                             f"{self.word_position.num_embeddings} positions")
        positions = torch.arange(ids.shape[1], device=ids.device)
        words = self.word_embedding(ids) + self.word_position(positions)  # (B, L, H)
        dtype = self.region_proj.weight.dtype
        feats = torch.cat([batch["region_features"].to(dtype),
                           batch["region_geometry"].to(dtype)], dim=-1)  # (B, N, d_r + 6)
        return words, self.region_norm(self.region_proj(feats))  # (B, N, H)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``predicted_vision_tokens`` (B, P', d_v) and ``predicted_text_tokens`` (B, L', d_t)."""
        words, regions = self.embed(batch)
        qmask, rmask = batch["question_mask"], batch["region_mask"]
        if self.inputs == "cross":  # each side from the other modality only
            return {PREDICTED_VISION: self.vision(words, qmask, words, qmask),
                    PREDICTED_TEXT: self.text(regions, rmask, regions, rmask)}
        return {PREDICTED_VISION: self.vision(words, qmask, regions, rmask),
                PREDICTED_TEXT: self.text(regions, rmask, words, qmask)}
