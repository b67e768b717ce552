"""D in PKD's own setting: the pre-trained vision-language model itself, fine-tuned on VQA.

``model.arch: vlm`` loads the foundation model ``F0`` (``model.foundation``: a transformers
``LxmertForPreTraining`` checkpoint — a hub id such as ``unc-nlp/lxmert-base-uncased`` or a local
folder such as the demo's ``pkd pretrain --family lxmert`` output) *with its heads*: the
masked-LM head and the image-text matching head (``cross_relationship_score``, index 1 =
"matches"). A checkpoint loaded into ``LxmertForQuestionAnswering`` would drop the matching head
that PKD's model-level term reads, so the full pre-training model is kept.

Inputs (batch keys of :mod:`pkd.train.data`): ``question_tokens`` are the foundation tokenizer's
ids of the question's prompt (:class:`pkd.train.prompts.PromptTokenizer`; 0 = padding),
``region_features`` (B, N, Dr) -> ``visual_feats``, ``region_geometry[..., :4]`` (normalised
x1, y1, x2, y2) -> ``visual_pos``, ``region_mask`` -> ``visual_attention_mask``.

Answer heads (``model.answer_head``):

- ``mlm`` (default): the inherited heads, :class:`~pkd.train.models.verbalizer.Verbalizer`
  (masked word at the cloze's ``[MASK]``, ITM on statements);
- ``new``: a new classifier on the pooled cross-modal output (LXMERT's VQA head: Linear(H, 2H),
  GELU, LayerNorm, Linear(2H, A)), the usual fine-tuning recipe, kept as a comparison row.

``model.init: scratch`` builds the same architecture with random weights (the "no pre-training"
row). Every output also carries ``match_logodds`` (B,) — D's own ITM judgement of its input pair —
and ``joint`` (B, H), the pooled output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pkd.errors import PkdError
from pkd.hf.loading import first_line, load_errors, quiet_loading, resolve_model
from pkd.train import checkpoint as ck
from pkd.train.models.verbalizer import Verbalizer


def foundation_tokenizer(source: str):
    """The tokenizer of the foundation checkpoint ``source`` (hub id or folder)."""
    return load_foundation(source, tokenizer_only=True)[1]


def load_foundation(source: str, init: str = "pretrained", tokenizer_only: bool = False):
    """(``LxmertForPreTraining``, tokenizer) of ``source`` (hub id or folder); ``init="scratch"``:
    the same config with fresh random weights. Eager attention (attention maps stay readable)."""
    from transformers import (  # transformers: loaded only when a model loads
        AutoTokenizer,
        LxmertConfig,
        LxmertForPreTraining,
    )

    source, local = resolve_model(source)
    quiet_loading()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        if tokenizer_only:
            model = None
        elif init == "scratch":
            config = LxmertConfig.from_pretrained(source, local_files_only=local)
            model = LxmertForPreTraining(config)
        else:
            model = LxmertForPreTraining.from_pretrained(source, local_files_only=local)
    except load_errors() as err:
        raise PkdError(f"model.foundation={source!r}: cannot load an LXMERT pre-training "
                       f"checkpoint ({first_line(err)})") from None
    if tokenizer.pad_token_id != 0 or tokenizer.mask_token_id is None:
        raise PkdError(f"model.foundation={source!r}: its tokenizer needs pad id 0 and a mask "
                       f"token (got pad {tokenizer.pad_token_id}, mask {tokenizer.mask_token})")
    return model, tokenizer


def build_vlm(cfg, answers: list[str], words, region_dim: int) -> FoundationVQA:
    """D of ``model.arch: vlm`` (``cfg``: its ModelConfig) for the answer vocabulary ``answers``
    and the run's :class:`~pkd.train.prompts.PromptTokenizer` ``words``; the regions store's
    feature size must be the foundation's ``visual_feat_dim``."""
    backbone, tokenizer = load_foundation(cfg.foundation, cfg.init)
    want = int(backbone.config.visual_feat_dim)
    if want != region_dim:
        raise PkdError(f"model.foundation={cfg.foundation!r}: reads {want}-d region features, the "
                       f"regions store holds {region_dim}-d ones (extract with its backbone)")
    model = FoundationVQA(backbone, tokenizer, answers, cfg.answer_head,
                          match_yes_no=words.style == "synth")
    if cfg.init_from:
        start_from(model, cfg.init_from)
    if cfg.trainable == "heads":
        model.requires_grad_(False)
        heads = model.answer_head if model.answer_head is not None else model.backbone.cls
        heads.requires_grad_(True)
    return model


def start_from(model: nn.Module, run_dir: str) -> None:
    """Load the best weights of the run ``run_dir`` into ``model`` (same architecture)."""
    best = ck.latest_checkpoint(Path(run_dir) / "best")
    if best is None:
        raise PkdError(f"model.init_from={run_dir!r}: no best/ checkpoint there (train it first)")
    weights, _ = ck.load_checkpoint(best)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise PkdError(f"model.init_from={run_dir!r}: its weights do not fit this model "
                       f"({str(err).splitlines()[0]})") from None


class AnswerHead(nn.Module):
    """LXMERT's VQA head: Linear(H, 2H) -> GELU -> LayerNorm -> Linear(2H, A)."""

    def __init__(self, hidden: int, num_answers: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                 nn.LayerNorm(2 * hidden, eps=1e-12),
                                 nn.Linear(2 * hidden, num_answers))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)


class FoundationVQA(nn.Module):
    """``F0``'s weights and heads answering VQA (see the module docstring)."""

    def __init__(self, backbone: nn.Module, tokenizer, answers: list[str], head: str = "mlm",
                 match_yes_no: bool = True):
        super().__init__()
        self.backbone = backbone  # LxmertForPreTraining: .lxmert body, .cls heads
        self.mask_id = int(tokenizer.mask_token_id)
        self.verbalizer = Verbalizer(answers, tokenizer, match_yes_no)
        hidden = int(backbone.config.hidden_size)
        self.answer_head = AnswerHead(hidden, len(answers)) if head == "new" else None
        self.feature_fusion: nn.Module | None = None  # PKD memory fusion hook (input features)
        self.word_feature_dim = hidden
        self.region_feature_dim = int(backbone.config.visual_feat_dim)
        self.joint_dim = hidden

    def embed_words(self, tokens: Tensor) -> Tensor:
        """The body's word embeddings (B, L, H) of token ids (before positions / LayerNorm)."""
        return self.backbone.lxmert.embeddings.word_embeddings(tokens)

    def encode(self, words: Tensor, word_mask: Tensor, regions: Tensor, boxes: Tensor,
               region_mask: Tensor):
        """LXMERT's body on word embeddings (``inputs_embeds``) and region features:
        ``LxmertModelOutput`` (language_output, vision_output, pooled_output)."""
        dtype = next(self.backbone.parameters()).dtype
        return self.backbone.lxmert(
            inputs_embeds=words, attention_mask=word_mask.long(),
            visual_feats=regions.to(dtype), visual_pos=boxes.to(dtype),
            visual_attention_mask=region_mask.to(dtype), return_dict=True)

    def match_logodds(self, pooled: Tensor) -> Tensor:
        """ITM log-odds ``s = ITM_1 - ITM_0`` (B,) of the pooled output (B, H)."""
        score = self.backbone.cls.seq_relationship(pooled)  # (B, 2)
        return score[:, 1] - score[:, 0]

    def masked_word_logits(self, language: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """((B, V) masked-LM logits at each prompt's first mask — its first token when it has
        none —, (B,) bool: the prompt has a mask)."""
        is_mask = tokens == self.mask_id
        has_mask = is_mask.any(dim=1)
        position = is_mask.float().argmax(dim=1)  # 0 where there is none
        at = language[torch.arange(len(tokens), device=tokens.device), position]  # (B, H)
        return self.backbone.cls.predictions(at), has_mask

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Keys: logits (B, A), joint (B, H), match_logodds (B,), masked_word_logits (B, V) and
        has_mask (B,) (:meth:`masked_word_logits`), word_features (B, L, H), region_features_in
        (B, N, Dr) (after the optional feature_fusion)."""
        tokens, word_mask = batch["question_tokens"], batch["question_mask"]
        region_mask = batch["region_mask"]
        words = self.embed_words(tokens)
        regions = batch["region_features"]
        if self.feature_fusion is not None:
            words, regions = self.feature_fusion(words, word_mask, regions, region_mask)
        out = self.encode(words, word_mask, regions, batch["region_geometry"][..., :4], region_mask)
        pooled = out.pooled_output
        s = self.match_logodds(pooled)
        mlm, has_mask = self.masked_word_logits(out.language_output, tokens)
        logits = self.answer_head(pooled) if self.answer_head is not None else \
            self.verbalizer(mlm, s, has_mask)
        return {"logits": logits, "joint": pooled, "match_logodds": s, "masked_word_logits": mlm,
                "has_mask": has_mask, "word_features": words, "region_features_in": regions}
