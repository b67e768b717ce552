"""A Hugging Face BERT-family encoder behind the fusion model's tokens (``model.encoder: hf:PATH``).

Oscar feeds its pre-trained BERT the assembled sequence ``[CLS] words [SEP] regions`` after its
own embedding step; here the fusion model embeds the tokens (:class:`FusionTransformer`) and the
checkpoint's encoder runs on them through the public transformers API::

    out = AutoModel(inputs_embeds=tokens, attention_mask=token_mask,
                    output_attentions=..., output_hidden_states=...)

so the checkpoint's own position / token-type embeddings and LayerNorm are applied on top of the
token embeddings (``inputs_embeds`` semantics), then its K layers. Eager attention is forced, so
the layers return their attention probabilities for DistillVLM's attention loss
(``hidden_states`` = (embedding output, layer 1, ..., layer K), as for the native encoder). In
training mode transformers returns attention probabilities after attention dropout (the native
encoder: before); teachers run in eval mode, where the two agree.

Any checkpoint whose ``AutoModel`` takes ``inputs_embeds`` and ``attention_mask`` works (BERT,
RoBERTa, ELECTRA, DistilBERT, ...); by hub id (``HF_HUB_OFFLINE=1`` on nodes without internet)
or local directory. Its hidden size / layers / heads must equal ``model.hidden_size`` /
``num_layers`` / ``num_heads`` (checked with one clear error): the rest of pkd (layer mapping,
the teacher cache) reads the sizes from the config.
"""

from __future__ import annotations

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.hf.loading import first_line, quiet_loading, resolve_model

PREFIX = "hf:"


def hf_source(encoder: str) -> str | None:
    """``PATH`` of ``model.encoder = "hf:PATH"``; None for "native"; PkdError otherwise."""
    if encoder == "native":
        return None
    if encoder.startswith(PREFIX) and encoder[len(PREFIX):]:
        return encoder[len(PREFIX):]
    raise PkdError(f"model.encoder={encoder!r}: expected 'native' or 'hf:PATH' (a transformers "
                   "BERT-family checkpoint id or directory)")


def _sizes(config) -> dict[str, int | None]:
    """hidden / layers / heads of a BERT-family config (DistilBERT names them differently)."""
    def first(*names):
        return next((getattr(config, n) for n in names if getattr(config, n, None)), None)

    return {"hidden_size": first("hidden_size", "dim", "d_model"),
            "num_layers": first("num_hidden_layers", "n_layers"),
            "num_heads": first("num_attention_heads", "n_heads")}


class HFEncoder(nn.Module):
    """``forward(tokens (B,T,D), mask (B,T), ...)`` ->
    ``{"hidden", ["attentions"], ["hidden_states"]}``."""

    def __init__(self, source: str, hidden_size: int, num_layers: int, num_heads: int):
        super().__init__()
        from transformers import AutoModel  # transformers: loaded only when an encoder is built

        quiet_loading()
        where = f"model.encoder=hf:{source}"
        path, local = resolve_model(source)
        try:
            self.model = AutoModel.from_pretrained(path, local_files_only=local,
                                                   attn_implementation="eager", dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as err:
            raise PkdError(f"{where}: cannot load the encoder ({first_line(err)})") from None
        have = _sizes(self.model.config)
        want = {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads}
        wrong = [f"{k} {v} (the checkpoint has {have[k]})" for k, v in want.items()
                 if have[k] != v]
        if wrong:
            raise PkdError(f"{where}: the model config says {', '.join(wrong)}; set them to the "
                           "checkpoint's")
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # the VQA head reads [CLS]; an unused pooler breaks DDP
        self.model.get_input_embeddings().requires_grad_(False)  # inputs_embeds bypasses them
        self.source = source

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False,
                output_hidden_states: bool = False) -> dict:
        out = self.model(inputs_embeds=tokens, attention_mask=mask.long(),
                         output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states, return_dict=True)
        result = {"hidden": out.last_hidden_state}
        if output_attentions:
            result["attentions"] = tuple(out.attentions)
        if output_hidden_states:
            result["hidden_states"] = tuple(out.hidden_states)
        return result
