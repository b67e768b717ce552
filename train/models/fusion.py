"""Oscar-style transformer fusion VQA model (word + region tokens, BERT encoder, head on [CLS]).

Token sequence (T = 1 + L + 1 + N [+ 2]):

    [CLS] w_1 .. w_L [SEP] r_1 .. r_N [f_img f_txt]

    word token   t_i = LN(E[w_i] + P[i] + S[0])                 (positions 1..L; [CLS] 0,
                                                                  [SEP] at len + 1)
    region token t_n = LN(W_r [feature_n; geometry_n] + S[1])   geometry = 6-d box (design.md)
    foundation   t   = LN(W_f image_embeds + S[2]), LN(W_f' text_embeds + S[2])  (optional;
                       foundation_inputs=predicted: PKD's predicted e_v, e_t instead)

``S`` are token-type embeddings. The encoder is BERT's post-LN layer written in plain torch with
*eager* attention, ``A = softmax(QK^T / sqrt(d_head))`` over the valid keys (key padding mask),
so each layer can return its attention probabilities (B, heads, T, T) (before attention
dropout) for DistillVLM's attention loss (:mod:`pkd.train.models.attention`). ``hidden_states``
is (embeddings, layer 1, ..., layer K) as in transformers. The VQA head is VinVL's MLP over the
final [CLS] state: ``Linear(D, 2D) -> GELU -> LayerNorm -> Dropout -> Linear(2D, A)``.

All sizes come from :class:`ModelConfig`, so one class serves as DistillVLM teacher and student.
Teacher and student given the same batch get the same token layout (token i is the same word or
region in both).

Hooks:
- PKD: ``self.feature_fusion`` (see :data:`pkd.train.models.layers.FeatureFusion`) maps the word
  tokens (B, L, D) and region tokens (B, N, D) before they are assembled into the sequence.
- ``model.encoder = "hf:PATH"``: a transformers BERT-family checkpoint replaces the native layers
  (:mod:`pkd.train.models.hf_encoder`: fed the assembled tokens as ``inputs_embeds``, eager
  attention); the embeddings and the VQA head stay this module's.
"""

from __future__ import annotations

import torch
from torch import nn

from pkd.train.config import ModelConfig
from pkd.train.models.attention import MultiHeadAttention
from pkd.train.models.hf_encoder import HFEncoder, hf_source
from pkd.train.models.layers import FOUNDATION_KEYS, FeatureFusion, question_lengths, require

TEXT, REGION, FOUNDATION = 0, 1, 2  # token types
CLS, SEP = 0, 1  # rows of the special-token embedding


class EncoderLayer(nn.Module):
    """BERT layer: x = LN(x + Attn(x)); x = LN(x + W_2 GELU(W_1 x))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, heads, dropout)  # W_o named 'output'
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.mlp = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(),
                                 nn.Linear(intermediate, hidden))
        self.mlp_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, probs = self.attention(x, x, mask)  # (B, T, D), (B, heads, T, T)
        x = self.attention_norm(x + self.dropout(attended))
        x = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return x, probs


class FusionTransformer(nn.Module):
    """Oscar-style VQA transformer; ``forward(batch, output_attentions, output_hidden_states)``."""

    def __init__(self, num_words: int, num_answers: int, region_dim: int, cfg: ModelConfig,
                 foundation_dim: int | None = None):
        super().__init__()
        source = hf_source(cfg.encoder)  # None: the native encoder
        hidden = cfg.hidden_size
        self.word_feature_dim = self.region_feature_dim = self.joint_dim = hidden
        self.max_positions = cfg.max_positions
        self.word_embedding = nn.Embedding(num_words, hidden, padding_idx=0)
        self.special_embedding = nn.Embedding(2, hidden)  # [CLS], [SEP]
        self.position_embedding = nn.Embedding(cfg.max_positions, hidden)
        self.type_embedding = nn.Embedding(3, hidden)  # text, region, foundation
        self.text_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.region_proj = nn.Linear(region_dim + 6, hidden)
        self.region_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.foundation_proj = None
        if cfg.use_foundation_features:
            if not foundation_dim:
                raise ValueError("use_foundation_features needs foundation_dim")
            self.foundation_proj = nn.ModuleList(nn.Linear(foundation_dim, hidden)
                                                 for _ in range(2))  # image, text
            self.foundation_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.foundation_keys = FOUNDATION_KEYS[cfg.foundation_inputs]
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, cfg.num_heads, cfg.intermediate_size, cfg.dropout)
            for _ in range(cfg.num_layers if source is None else 0)
        )
        self.head = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.LayerNorm(2 * hidden, eps=1e-12),
            nn.Dropout(cfg.classifier_dropout), nn.Linear(2 * hidden, num_answers),
        )
        self.feature_fusion: FeatureFusion | None = None  # PKD memory fusion hook
        self.apply(_init_bert)
        self.num_layers, self.num_heads = cfg.num_layers, cfg.num_heads
        self.hf_encoder = None  # after _init_bert: pre-trained weights stay as loaded
        if source is not None:
            self.hf_encoder = HFEncoder(source, hidden, cfg.num_layers, cfg.num_heads)

    def _text_token(self, emb: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        emb = emb + self.position_embedding(positions) + self.type_embedding.weight[TEXT]
        return self.embed_dropout(self.text_norm(emb))

    def embed_question(self, batch: dict) -> torch.Tensor:
        """Word tokens (B, L, D) of ``question_tokens`` (B, L), positions 1..L."""
        tokens = batch["question_tokens"]  # (B, L)
        if tokens.shape[1] + 2 > self.max_positions:
            raise ValueError(f"{tokens.shape[1]} question tokens + [CLS] + [SEP] exceed "
                             f"model.max_positions={self.max_positions}")
        positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)  # (L,)
        return self._text_token(self.word_embedding(tokens), positions)

    def embed_regions(self, batch: dict) -> torch.Tensor:
        """Region tokens (B, N, D) = LN(W_r [region_features; region_geometry] + S[region])."""
        dtype = self.region_proj.weight.dtype
        feats = torch.cat([batch["region_features"].to(dtype),
                           batch["region_geometry"].to(dtype)], dim=-1)  # (B, N, Dr + 6)
        emb = self.region_proj(feats) + self.type_embedding.weight[REGION]
        return self.embed_dropout(self.region_norm(emb))

    def embed_foundation(self, batch: dict) -> torch.Tensor:
        """Two foundation tokens (B, 2, D) from ``image_embeds`` and ``text_embeds`` (B, De)."""
        why = "model.use_foundation_features"
        dtype = self.region_proj.weight.dtype
        embeds = [require(batch, k, why).to(dtype) for k in self.foundation_keys]
        pairs = zip(self.foundation_proj, embeds, strict=True)
        tokens = torch.stack([proj(e) for proj, e in pairs], dim=1)  # (B, 2, D)
        tokens = tokens + self.type_embedding.weight[FOUNDATION]
        return self.embed_dropout(self.foundation_norm(tokens))

    def assemble(self, words: torch.Tensor, regions: torch.Tensor, batch: dict
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, T, D), token_mask (B, T) bool) in the order [CLS] words [SEP] regions [f]."""
        b, device = words.shape[0], words.device
        sep_pos = question_lengths(batch["question_mask"]) + 1  # (B,) [SEP] follows the words
        cls = self._text_token(self.special_embedding.weight[CLS].expand(b, 1, -1),
                               torch.zeros(b, 1, dtype=torch.long, device=device))  # (B, 1, D)
        sep = self._text_token(self.special_embedding.weight[SEP].expand(b, 1, -1),
                               sep_pos[:, None])  # (B, 1, D)
        parts = [cls, words, sep, regions]
        ones = torch.ones(b, 1, dtype=torch.bool, device=device)
        masks = [ones, batch["question_mask"], ones, batch["region_mask"]]
        if self.foundation_proj is not None:
            parts.append(self.embed_foundation(batch))
            masks.append(ones.expand(b, 2))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False,
               output_hidden_states: bool = False) -> dict:
        """Run the encoder layers: {"hidden" (B,T,D), ["attentions"], ["hidden_states"]}."""
        if self.hf_encoder is not None:
            return self.hf_encoder(tokens, mask, output_attentions, output_hidden_states)
        attentions, hidden_states = [], [tokens]
        x = tokens
        for layer in self.layers:
            x, probs = layer(x, mask)
            attentions.append(probs)
            hidden_states.append(x)
        out = {"hidden": x}
        if output_attentions:
            out["attentions"] = tuple(attentions)
        if output_hidden_states:
            out["hidden_states"] = tuple(hidden_states)
        return out

    def classify(self, joint: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, A) from the [CLS] state (B, D)."""
        return self.head(joint)

    def forward(self, batch: dict, output_attentions: bool = False,
                output_hidden_states: bool = False) -> dict:
        """Keys: logits (B,A), joint (B,D) final [CLS], token_mask (B,T), word_features (B,L,D),
        region_features_in (B,N,D) (after feature_fusion), [attentions], [hidden_states]."""
        words = self.embed_question(batch)  # (B, L, D)
        regions = self.embed_regions(batch)  # (B, N, D)
        if self.feature_fusion is not None:
            words, regions = self.feature_fusion(words, batch["question_mask"], regions,
                                                 batch["region_mask"])
        tokens, token_mask = self.assemble(words, regions, batch)  # (B, T, D), (B, T)
        encoded = self.encode(tokens, token_mask, output_attentions, output_hidden_states)
        joint = encoded.pop("hidden")[:, 0]  # (B, D) [CLS]
        return {"logits": self.classify(joint), "joint": joint, "token_mask": token_mask,
                "word_features": words, "region_features_in": regions, **encoded}


def _init_bert(module: nn.Module) -> None:
    """BERT initialization: N(0, 0.02) weights, zero biases, zero padding embedding."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
