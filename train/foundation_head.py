"""The frozen foundation *matching head* ``M(v, t)`` the PKD trainer scores features with.

Loaded from the same model directory the ``foundation_*`` stores were extracted with, frozen
(``requires_grad=False``, always eval). Gradients flow into its *inputs* (predicted features),
never into its weights. It re-implements ``pkd.pipeline.foundation.match_scores`` (``train`` may
not import ``pipeline``); ``tests/test_foundation_head.py`` checks the two agree and equal the full
HF model's own score on cached real features. Inputs are the cached arrays (see the table in
``pipeline/foundation.py``): ``vision_tokens`` (B, P, d_v), ``text_tokens`` (B, L, d_t) with a
right-padded ``text_mask`` (B, L) bool, and for BLIP the tokenizer ``input_ids`` (B, L).

CLIP (``CLIPModel``), with the model's own post-LayerNorm, projections and logit scale::

    M(v, t) = exp(logit_scale) · cos(W_v LN_post(v[:, 0]), W_t t[:, n - 1])     n = Σ text_mask

so only the CLS token of ``v`` and the EOS token of ``t`` reach the score. This is CLIP's
*contrastive* logit (``s`` ≈ 100 for trained models), not a calibrated match logit: ``σ(M)`` is
near 1 for most pairs with positive cosine, so the BCE of ``L_itm`` and the targets of ``L_mkd``
(``σ(M/T)``; raise ``kd_temperature``) are much sharper than with BLIP's ITM head.

BLIP (``BlipForImageTextRetrieval``), the native ITM head::

    q = TextEncoder(text, cross-attending to v);  z = itm_head(q[:, 0]);  M = z[:, 1] - z[:, 0]

so ``σ(M) = softmax(z)[:, 1]``, the match probability. Real text enters as ``input_ids``
(exactly the model's ITM forward). *Predicted* text features ``t̃`` are not token ids; where they
enter is **our choice** (``PKDConfig.blip_text_entry``):

- ``"hidden"`` (default): ``t̃`` replaces the output of the text embedding layer (``encoder_embeds``
  of ``BlipTextModel``), i.e. it is the layer-0 hidden state of the ITM text encoder. ``t̃`` is
  trained to match the cached unimodal text-encoder *output* (post-LayerNorm, position-aware),
  which is closer to a hidden state than to a raw word embedding.
- ``"embeddings"``: ``t̃`` is fed as ``inputs_embeds``; the embedding layer adds position
  embeddings and applies its LayerNorm first.

Either way the cached real ``t^F`` (a unimodal *output*) is not what the ITM encoder consumes,
so ``M(v, t̃)`` is a learned approximation; only the ``input_ids`` path is the exact model score.

Pooled, projected embeddings (the stores' ``image_embeds`` / ``text_embeds``, ITC features):
CLIP ``normalize(W_v LN_post(v[:, 0]))``, ``normalize(W_t t[:, n - 1])``; BLIP
``normalize(vision_proj(v[:, 0]))``, ``normalize(text_proj(t[:, 0]))``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pkd.errors import PkdError
from pkd.hf.families import SUPPORTED, detect_family  # noqa: F401 (re-exported)
from pkd.hf.hashing import VOLATILE_CONFIG_KEYS, config_sha256  # noqa: F401 (re-exported)
from pkd.hf.loading import first_line


class FoundationHead(nn.Module):
    """Frozen ``M(v, t)`` plus the pooled projections of one CLIP / BLIP-ITM checkpoint."""

    def __init__(self, model: nn.Module, family: str, text_entry: str = "hidden",
                 config_hash: str = "", source: str = ""):
        super().__init__()
        if text_entry not in ("hidden", "embeddings"):
            raise ValueError(f"text_entry must be 'hidden' or 'embeddings', not {text_entry!r}")
        cfg = model.config
        self.family, self.text_entry = family, text_entry
        self.config_hash, self.source = config_hash, source
        self.vision_dim = cfg.vision_config.hidden_size  # d_v
        self.text_dim = cfg.text_config.hidden_size  # d_t
        self.vision_tokens = 1 + (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        if family == "clip":  # keep only the light parts (the towers are cached in the stores)
            self.embed_dim = cfg.projection_dim  # d_e
            self.post_layernorm = model.vision_model.post_layernorm
            self.visual_projection = model.visual_projection
            self.text_projection = model.text_projection
            self.register_buffer("logit_scale", model.logit_scale.detach().clone())
        else:
            self.embed_dim = cfg.image_text_hidden_size
            self.text_encoder, self.itm_head = model.text_encoder, model.itm_head
            self.vision_proj, self.text_proj = model.vision_proj, model.text_proj
        self.requires_grad_(False)
        super().train(False)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, text_entry: str = "hidden") -> FoundationHead:
        """Load the head of the CLIP / BLIP-ITM checkpoint in directory ``model_dir``."""
        from transformers import (  # transformers: loaded only when a head loads
            AutoConfig,
            BlipForImageTextRetrieval,
            CLIPModel,
        )

        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise PkdError(f"{model_dir}: not a model directory (the foundation model the "
                           "foundation stores were extracted with)")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise PkdError(f"{model_dir}: cannot load a model config ({first_line(err)})") from None
        family = detect_family(config, str(model_dir))
        model_cls = CLIPModel if family == "clip" else BlipForImageTextRetrieval
        try:
            model, info = model_cls.from_pretrained(
                path, local_files_only=True, dtype=torch.float32, attn_implementation="eager",
                output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise PkdError(f"{model_dir}: cannot load the {family} weights "
                           f"({first_line(err)})") from None
        if info["missing_keys"]:
            raise PkdError(f"{model_dir}: checkpoint lacks {len(info['missing_keys'])} weights "
                           f"of {model_cls.__name__}")
        return cls(model, family, text_entry, config_sha256(config), str(model_dir))

    def train(self, mode: bool = True) -> FoundationHead:
        """Always eval: the head is frozen (no dropout) whatever its owner's mode."""
        return super().train(False)

    def check_producer(self, producer: dict, where: str) -> None:
        """Refuse a store whose ``producer`` (its provenance) names another model config."""
        expected = producer.get("config_hash")
        if expected and expected != self.config_hash:
            raise PkdError(f"{where}: extracted with foundation model {producer.get('model')!r} "
                           f"(config hash {expected[:12]}), but the matching head "
                           f"{self.source!r} has config hash {self.config_hash[:12]}")
        family = producer.get("family")
        if family and family != self.family:
            raise PkdError(f"{where}: extracted with a {family} model, the matching head "
                           f"{self.source!r} is {self.family}")

    # ------------------------------------------------------------------ pooled embeddings
    def embed_image(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embedding (B, d_e) of vision tokens (B, P, d_v)."""
        cls_token = self._cast(vision_tokens)[:, 0]  # (B, d_v)
        if self.family == "clip":
            return F.normalize(self.visual_projection(self.post_layernorm(cls_token)), dim=-1)
        return F.normalize(self.vision_proj(cls_token), dim=-1)

    def embed_text(self, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embedding (B, d_e) of text tokens (B, L, d_t), mask (B, L)."""
        t = self._cast(text_tokens)
        if self.family == "clip":
            return F.normalize(self.text_projection(_eos_token(t, text_mask)), dim=-1)
        return F.normalize(self.text_proj(t[:, 0]), dim=-1)

    # ------------------------------------------------------------------ matching score
    def forward(self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ITM logit ``M(v, t)`` (B,). BLIP: real text passes ``input_ids`` (exact model score),
        predicted text passes ``input_ids=None`` (entry: module docstring). CLIP ignores ids."""
        if self.family == "clip":
            image = self.visual_projection(self.post_layernorm(self._cast(vision_tokens)[:, 0]))
            text = self.text_projection(_eos_token(self._cast(text_tokens), text_mask))
            return self.logit_scale.exp() * F.cosine_similarity(image, text, dim=-1)  # (B,)
        return self._blip_itm(self._cast(vision_tokens), text_tokens, text_mask, input_ids)

    def _blip_itm(self, v: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                  input_ids: torch.Tensor | None) -> torch.Tensor:
        image_mask = torch.ones(v.shape[:2], dtype=torch.long, device=v.device)  # (B, P)
        text = {"attention_mask": text_mask.long(), "encoder_hidden_states": v,
                "encoder_attention_mask": image_mask}
        if input_ids is not None:
            text["input_ids"] = input_ids.long()
        elif self.text_entry == "hidden":
            text["encoder_embeds"] = self._cast(text_tokens)
        else:  # BlipTextEmbeddings adds positions to inputs_embeds in place: pass a copy
            text["inputs_embeds"] = self._cast(text_tokens).clone()
        q = self.text_encoder(**text).last_hidden_state  # (B, L, d_t)
        logits = self.itm_head(q[:, 0])  # (B, 2): (no match, match)
        return logits[:, 1] - logits[:, 0]

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the head's weight dtype (stores hold f16; the head runs in f32)."""
        dtype = next(self.parameters()).dtype
        return x if x.dtype == dtype else x.to(dtype)


def _eos_token(t: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """CLIP's pooled text token (B, d_t): position ``n - 1`` of each right-padded row."""
    n = text_mask.long().sum(dim=1).clamp(min=1)  # (B,)
    return t[torch.arange(t.shape[0], device=t.device), n - 1]
