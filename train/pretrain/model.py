"""The tiny foundation model: build it (seeded), encode images and texts, score pairs.

A tiny CLIP (``CLIPModel``) or BLIP (``BlipForImageTextRetrieval``) built by
:mod:`pkd.hf.tiny_models`, loaded back with eager attention as ``load_foundation`` does.

- Unit features for ITC: CLIP's ``visual_projection`` / ``text_projection`` of the pooled tokens
  (EOS token for text), BLIP's ``vision_proj`` / ``text_proj`` of the CLS tokens (the text of the
  unimodal text encoder). ITC scale ``1/τ`` (:func:`itc_scale`): CLIP's learnable
  ``exp(logit_scale)`` (clamped at 100 as in CLIP), BLIP's fixed ``1 / cfg.itc_temperature``.
- Matching (BLIP, :func:`itm_logits`): the text encoder cross-attends to the vision tokens and
  ``itm_head`` gives (no match, match) logits of its CLS token.
- Matching score of an (image, text) pair (:func:`pair_scores`, the one
  ``pkd.pipeline.foundation.match_scores`` computes from cached features): CLIP
  ``exp(logit_scale) · cos``, BLIP ``itm[:, 1] - itm[:, 0]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pkd.errors import PkdError
from pkd.train.pretrain.config import PretrainConfig
from pkd.train.pretrain.corpus import canonical_token_ids


def build_model(cfg: PretrainConfig, texts: list[str], image_size: int, folder: Path):
    """(model in train mode, tokenizer, image processor) of a fresh tiny model, seeded.

    The :mod:`pkd.hf.tiny_models` builder trains the tokenizer on ``texts`` and saves a random
    model into ``folder``; it is loaded back with eager attention, as ``load_foundation`` does.
    """
    from transformers import (  # transformers: loaded only when a model is built
        AutoImageProcessor,
        AutoTokenizer,
        BlipForImageTextRetrieval,
        CLIPModel,
    )

    from pkd.hf.tiny_models import (  # transformers: loaded only when a model is built
        build_tiny_blip_itm,
        build_tiny_clip,
    )

    s = cfg.size
    if image_size % s.patch_size:
        raise PkdError(f"PretrainConfig: image size {image_size} is not a multiple of "
                       f"patch_size {s.patch_size}")
    builder, cls = ((build_tiny_clip, CLIPModel) if cfg.family == "clip"
                    else (build_tiny_blip_itm, BlipForImageTextRetrieval))
    builder(folder, texts, image_size=image_size, patch_size=s.patch_size, hidden=s.hidden,
            layers=s.layers, heads=s.heads, proj_dim=s.proj_dim, max_positions=s.max_positions,
            vocab_size=s.vocab_size, seed=cfg.seed)
    canonical_token_ids(Path(folder), texts)
    model = cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    if cfg.family == "blip":
        _reinit_blip_vision_embeddings(model, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return model.train(), tokenizer, processor


def _reinit_blip_vision_embeddings(model, seed: int) -> None:
    """Draw BLIP's vision position and class embeddings from N(0, 0.02²), seeded.

    ``BlipVisionConfig.initializer_range`` defaults to 1e-10 (hub BLIP is only ever loaded, not
    trained from scratch): every patch then starts without position and the CLS token at zero,
    and training from scratch stalls at the uniform ITC loss for many epochs.
    """
    embeddings = model.vision_model.embeddings
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (embeddings.position_embedding, embeddings.class_embedding):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def encode_images(model, family: str, pixel_values: torch.Tensor):
    """(unit image features (B, d_e), vision tokens (B, P, d_v)): CLIP's pooled projection,
    BLIP's ``vision_proj`` of the CLS token."""
    if family == "clip":
        out = model.get_image_features(pixel_values=pixel_values)
        return F.normalize(out.pooler_output, dim=-1), out.last_hidden_state
    vision = model.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, P, d_v)
    return F.normalize(model.vision_proj(vision[:, 0]), dim=-1), vision


def encode_texts(model, family: str, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit text features (B, d_e): CLIP's EOS-pooled projection, BLIP's ``text_proj`` of the
    CLS token of the unimodal text encoder."""
    if family == "clip":
        out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(out.pooler_output, dim=-1)
    text = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
    return F.normalize(model.text_proj(text.last_hidden_state[:, 0]), dim=-1)


def itm_logits(model, vision_tokens: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """BLIP's (no match, match) logits (B, 2): the text encoder cross-attends to the image."""
    image_mask = torch.ones(vision_tokens.shape[:2], dtype=torch.long)  # (B, P)
    q = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                           encoder_hidden_states=vision_tokens,
                           encoder_attention_mask=image_mask).last_hidden_state  # (B, L, d_t)
    return model.itm_head(q[:, 0])


def itc_scale(model, family: str, cfg: PretrainConfig) -> torch.Tensor:
    """1/τ: CLIP's learnable ``exp(logit_scale)`` (at most 100), BLIP's fixed ``1/τ``."""
    if family == "clip":
        return model.logit_scale.exp().clamp(max=100.0)
    return torch.tensor(1.0 / cfg.itc_temperature)


@torch.no_grad()
def pair_scores(model, family: str, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Matching logit (B,) of aligned (image, text) pairs, the one ``match_scores`` computes from
    cached features: CLIP ``exp(logit_scale) · cos``, BLIP ``itm[:, 1] - itm[:, 0]``."""
    image, vision = encode_images(model, family, pixel_values)
    return pair_logits(model, family, image, vision, input_ids, attention_mask)


def pair_logits(model, family: str, image: torch.Tensor, vision: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """:func:`pair_scores` from already encoded images (B, d_e) and vision tokens (B, P, d_v)."""
    if family == "clip":
        text = encode_texts(model, family, input_ids, attention_mask)
        return model.logit_scale.exp() * (image * text).sum(-1)
    logits = itm_logits(model, vision, input_ids, attention_mask)  # (B, 2)
    return logits[:, 1] - logits[:, 0]
