"""VQA models: the UpDn baseline and an Oscar-style transformer fusion model.

Batch keys a model reads (names flow unchanged from the stores):

| key | shape, dtype | |
|---|---|---|
| `question_tokens` | (B, L) int64 | word ids, right-padded with 0 (`pkd.train.text`) |
| `question_mask` | (B, L) bool | True on real words |
| `region_features` | (B, N, Dr) float | `regions` store |
| `region_geometry` | (B, N, 6) float | `regions` store (fusion only) |
| `region_mask` | (B, N) bool | True on real regions |
| `image_embeds`, `text_embeds` | (B, De) float | foundation stores (`use_foundation_features`) |

With `foundation_inputs=predicted` the predicted store's `predicted_image_embed`,
`predicted_text_embed` (B, De) float come instead of `image_embeds`, `text_embeds`.

Every model returns a dict with at least `logits` (B, A) and `joint` (B, H) (the fused
representation an ITM head reads), `word_features` / `region_features_in` (the features after the
optional PKD ``feature_fusion`` hook), and exposes `word_feature_dim`, `region_feature_dim`,
`joint_dim`. :func:`build_model` is the one place that dispatches on ``ModelConfig.arch``.
"""

from __future__ import annotations

from torch import nn

from pkd.errors import PkdError
from pkd.train.config import ModelConfig
from pkd.train.models.fusion import FusionTransformer
from pkd.train.models.updn import UpDn

__all__ = ["FusionTransformer", "UpDn", "build_model"]


def build_model(cfg: ModelConfig, num_words: int, num_answers: int, region_dim: int,
                foundation_dim: int | None = None) -> nn.Module:
    """The model named by ``cfg.arch`` (dims come from the vocabularies and store attributes)."""
    if cfg.arch == "updn":
        if cfg.encoder != "native":
            raise PkdError(f"model.encoder={cfg.encoder!r} needs model.arch=fusion (UpDn has no "
                           "transformer encoder)")
        return UpDn(num_words, num_answers, region_dim, cfg, foundation_dim)
    if cfg.arch == "fusion":
        return FusionTransformer(num_words, num_answers, region_dim, cfg, foundation_dim)
    if cfg.arch == "vlm":
        raise PkdError("model.arch=vlm is built from its foundation checkpoint and the run's "
                       "vocabularies (pkd.train.models.vlm.build_vlm)")
    raise ValueError(f"unknown model.arch {cfg.arch!r}")
