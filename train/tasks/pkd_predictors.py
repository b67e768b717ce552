"""PKD stage 1: the cross-modal feature predictors, trained through the frozen matching head.

Which parts are the paper's and which are **our reading** is spelled out in
``shared/METHODS.md``; every weight and choice below is a :class:`~pkd.train.config.PKDConfig`
field. ``F`` is the frozen foundation matching head (:mod:`pkd.train.foundation_head`, kept out
of the module tree like DistillVLM's online teacher: not a parameter, not in ``state_dict``,
always eval; ``.to()`` reaches it), ``P_v`` / ``P_t`` the predictors
(:mod:`pkd.train.models.predictors`).

:class:`PKDPredictorTask` (``method.name = "pkd-predictors"``)::

    L = λ_itm · L_itm + λ_div · L_div          (losses/itm.py, losses/divergence.py)
    L_div = D(ṽ, v^F) + D(t̃, t^F)              divergence_on = "tokens" (pooled unless token-wise)
          = D(e_v, e_I) + D(e_t, e_Q)          divergence_on = "embeddings":
                                                 e_v = F.embed_image(ṽ), e_t = F.embed_text(t̃)

With a CLIP head ``M(ṽ, t)`` and ``e_v`` read ṽ's first token only and ``e_t`` t̃'s last valid one,
so pooled token-wise ``L_div`` leaves the tokens the head reads free (``L_itm`` then pulls ``e_v``
toward the *question*); ``divergence_on = "embeddings"`` pins exactly what the head reads.

Stage 2 (:mod:`pkd.train.tasks.pkd`) loads these predictors (:func:`load_predictors`) and runs
them as :func:`predicted_view` does here; so does the writer of the ``predicted`` store
(:mod:`pkd.train.predicted_extract`).

Training batch keys needed (besides the VQA ones): ``vision_tokens`` (B,P,d_v), ``text_tokens``
(B,L,d_t), ``text_mask`` (B,L), ``image_embeds``, ``text_embeds`` (B,d_e) — the data must be read
with ``foundation_tokens=True`` — and, for a BLIP foundation model, ``input_ids`` (B,L) trimmed
like ``text_tokens`` (the exact ITM score of real text needs token ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.train.checkpoint import load_checkpoint, load_weights
from pkd.train.config import PKDConfig, TrainConfig
from pkd.train.foundation_head import FoundationHead
from pkd.train.losses.divergence import FeatureDivergence, pool_tokens
from pkd.train.losses.itm import MatchingBCE, negative_partners
from pkd.train.models.predictors import PREDICTED_TEXT, PREDICTED_VISION, CrossModalPredictors
from pkd.train.tasks.method import FrozenOutside, Method

NEEDS_TOKENS = "PKD reads foundation tokens: data.foundation_image / foundation_text stores " \
               "read with foundation_tokens=True"


@dataclass
class PKDSetup:
    head: FoundationHead | None  # frozen matching head (None only with use_predictors off)
    num_words: int  # question vocabulary size (the predictors' word embeddings)
    max_words: int  # question tokens per item at most (data.max_question_length)
    region_dim: int  # raw region feature size d_r (regions store)
    vision_tokens: int  # P: vision tokens per image in the foundation_image store
    text_tokens: int  # L: max_text_len of the foundation_text store


@dataclass
class Predicted:
    vision: torch.Tensor  # (B, P', d_v) ṽ
    text: torch.Tensor  # (B, L', d_t) t̃
    text_mask: torch.Tensor  # (B, L') bool, valid predicted text tokens


def load_foundation_head(cfg: PKDConfig, producer: dict, where: str) -> FoundationHead:
    """The frozen head of ``cfg.foundation_model`` ("" = ``producer["model"]``, the model the
    store at ``where`` was extracted with), checked against that store's provenance."""
    model_dir = cfg.foundation_model or str(producer.get("model", ""))
    if not model_dir:
        raise PkdError(f"{where}: the store names no foundation model; set "
                       "method.pkd.foundation_model")
    head = FoundationHead.from_pretrained(model_dir, text_entry=cfg.blip_text_entry)
    head.check_producer(producer, where)
    return head


def predicted_view(raw: dict[str, torch.Tensor], batch: dict, tokenwise: bool) -> Predicted:
    """Token-wise mode: ``t̃`` cut to the batch's text length and masked like ``text_mask``;
    pooled mode (``predictor_tokens > 0``): every predicted token is valid."""
    vision, text = raw[PREDICTED_VISION], raw[PREDICTED_TEXT]
    if tokenwise:
        mask = need_key(batch, "text_mask")  # (B, L_b)
        if mask.shape[1] > text.shape[1]:
            raise PkdError(f"data.foundation_text: batch has {mask.shape[1]} text tokens, the "
                           f"predictors were built for {text.shape[1]}")
        return Predicted(vision, text[:, : mask.shape[1]], mask.bool())
    return Predicted(vision, text, torch.ones(text.shape[:2], dtype=torch.bool,
                                              device=text.device))


def twice(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x])  # (B, ...) -> (2B, ...)


def _pair(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x[pi]])  # (B, ...) -> (2B, ...): items, then their partners


def need_key(batch: dict, key: str) -> torch.Tensor:
    if key not in batch:
        raise PkdError(f"batch has no '{key}' ({NEEDS_TOKENS})")
    return batch[key]


class PredictorObjective(nn.Module):
    """``L_itm`` and ``L_div`` of predicted tokens against the batch's cached ones."""

    def __init__(self, cfg: PKDConfig):
        super().__init__()
        self.itm, self.div = MatchingBCE(), FeatureDivergence(cfg.divergence, cfg.div_temperature)
        self.tokenwise = cfg.predictor_tokens == 0
        self.on_embeddings = cfg.divergence_on == "embeddings"

    def forward(self, head: FoundationHead, pred: Predicted, batch: dict
                ) -> tuple[torch.Tensor, torch.Tensor]:
        v, t, mask = (need_key(batch, k) for k in ("vision_tokens", "text_tokens", "text_mask"))
        ids = need_key(batch, "input_ids") if head.family == "blip" else None
        pi, valid = negative_partners(need_key(batch, "image_embeds"),
                                      need_key(batch, "text_embeds"))
        # first half positives, second half negatives: (2B,) logits each
        real_text = head(twice(pred.vision), _pair(t, pi), _pair(mask, pi),
                         None if ids is None else _pair(ids, pi))  # M(ṽ, t^F), M(ṽ, t^F_π)
        real_image = head(_pair(v, pi), twice(pred.text), twice(pred.text_mask))
        b = v.shape[0]
        itm = (self.itm(real_text[:b], real_text[b:], valid)
               + self.itm(real_image[:b], real_image[b:], valid))
        if self.on_embeddings:
            return itm, self._embedding_divergence(head, pred, batch)
        return itm, self._divergence(pred, v, t, mask.bool())

    def _embedding_divergence(self, head: FoundationHead, pred: Predicted, batch: dict
                              ) -> torch.Tensor:
        """``D(e_v, e_I) + D(e_t, e_Q)``: the head's unit-norm embeddings of ``ṽ``, ``t̃`` against
        the cached ones of the item's real image and question, each as one token."""
        e_v = head.embed_image(pred.vision)[:, None]  # (B, 1, d_e)
        e_t = head.embed_text(pred.text, pred.text_mask)[:, None]
        return (self.div(e_v, need_key(batch, "image_embeds")[:, None].to(e_v.dtype))
                + self.div(e_t, need_key(batch, "text_embeds")[:, None].to(e_t.dtype)))

    def _divergence(self, pred: Predicted, v: torch.Tensor, t: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        if not self.tokenwise:
            return (self.div(pool_tokens(pred.vision), pool_tokens(v))
                    + self.div(pool_tokens(pred.text, pred.text_mask), pool_tokens(t, mask)))
        if pred.vision.shape[1] != v.shape[1]:
            raise PkdError(f"data.foundation_image: {v.shape[1]} vision tokens per image, the "
                           f"predictors predict {pred.vision.shape[1]} (predictor_tokens=0)")
        return self.div(pred.vision, v) + self.div(pred.text, t, mask)


class FrozenHeadTask(FrozenOutside):
    """Holds the frozen head outside the module tree (:class:`FrozenOutside`)."""

    def __init__(self, head: FoundationHead | None):
        super().__init__()
        self.hold("head", head)


class PKDPredictorTask(FrozenHeadTask):
    """Stage 1: ``L = λ_itm L_itm + λ_div L_div``; only the predictors are trainable."""

    def __init__(self, predictors: CrossModalPredictors, head: FoundationHead, cfg: PKDConfig):
        super().__init__(head)
        self.predictors, self.objective = predictors, PredictorObjective(cfg)
        self.lambda_itm, self.lambda_div = cfg.lambda_itm, cfg.lambda_div

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = predicted_view(self.predictors(batch), batch, self.objective.tokenwise)
        itm, div = self.objective(self.head, pred, batch)
        loss = self.lambda_itm * itm + self.lambda_div * div
        return {"loss": loss, "itm_loss": itm, "div_loss": div}


def build_predictors(cfg: PKDConfig, setup: PKDSetup) -> CrossModalPredictors:
    """``P_v``, ``P_t`` sized from the stores and the head (``predictor_tokens`` 0 = as stored)."""
    if setup.head is None:
        raise ValueError("the predictors need the foundation matching head")
    n = cfg.predictor_tokens
    return CrossModalPredictors(
        setup.num_words, setup.max_words, setup.region_dim,
        vision_tokens=n or setup.vision_tokens, vision_dim=setup.head.vision_dim,
        text_tokens=n or setup.text_tokens, text_dim=setup.head.text_dim,
        hidden=cfg.predictor_hidden, heads=cfg.predictor_heads, layers=cfg.predictor_layers,
        inputs=cfg.predictor_inputs, null_key=cfg.predictor_null_key)


def load_predictors(predictors: CrossModalPredictors, path: str) -> CrossModalPredictors:
    """Load ``predictors.*`` weights of a stage-1 run (``RUN``, ``RUN/ckpt`` or a step dir)."""
    root = Path(path)
    if (root / "ckpt").is_dir():
        root = root / "ckpt"
    weights, _ = load_checkpoint(root)
    mine = {k.removeprefix("predictors."): v for k, v in weights.items()
            if k.startswith("predictors.")}
    if not mine:
        raise PkdError(f"{path}: holds no predictor weights (a method.name=pkd-predictors run)")
    load_weights(predictors, mine, f"{path}: predictor weights do not fit method.pkd / the "
                                   "run's vocabulary and stores")
    return predictors


def pkd_stage1_task(cfg: TrainConfig, setup: PKDSetup) -> PKDPredictorTask:
    """Stage 1: the predictors (built from ``setup``) through the frozen matching head."""
    if setup.head is None:
        raise ValueError("stage 1 needs the foundation matching head")
    return PKDPredictorTask(build_predictors(cfg.method.pkd, setup), setup.head, cfg.method.pkd)


def pkd_setup(cfg: TrainConfig, stores, num_words: int, needs_head: bool) -> PKDSetup:
    """The frozen foundation matching head (when ``needs_head``) and the sizes PKD's predictors
    need, from the run's stores (``pkd.train.data.Stores``) and config."""
    p, fi, ft = cfg.method.pkd, stores.foundation_image, stores.foundation_text
    head = None
    if needs_head:
        if fi is None or ft is None:
            raise PkdError(f"method.name={cfg.method.name}: set data.foundation_image and "
                           "data.foundation_text (pkd extract foundation)")
        head = load_foundation_head(p, fi.spec.producer, cfg.data.foundation_image)
        head.check_producer(ft.spec.producer, cfg.data.foundation_text)
    return PKDSetup(head, num_words, cfg.data.max_question_length,
                    int(stores.regions.spec.dims["feature_dim"]),
                    vision_tokens=int(fi.spec.dims["vision_tokens"]) if fi else 0,
                    text_tokens=int(ft.spec.dims["max_text_len"]) if ft else 0)


def predictor_problems(p: PKDConfig) -> list[tuple[str, str]]:
    """Config rules of the predictors (stage 1, and stage 2 with ``use_predictors``)."""
    if p.predictor_hidden % p.predictor_heads:
        return [("method.pkd.predictor_heads", f"{p.predictor_heads} does not divide "
                                               f"method.pkd.predictor_hidden={p.predictor_hidden}")]
    return []


def need_setup(cfg: TrainConfig, pkd: PKDSetup | None) -> PKDSetup:
    if pkd is None:
        raise ValueError(f"method.name={cfg.method.name}: build_task needs a PKDSetup")
    return pkd


class PKDPredictors(Method):
    """``method.name = "pkd-predictors"``: stage 1, the predictors only (no VQA model to
    validate; stage 2 loads them from ``method.pkd.predictors``)."""

    name = "pkd-predictors"
    validates = False

    def foundation_tokens(self, cfg) -> bool:
        return True

    def problems(self, cfg) -> list[tuple[str, str]]:
        return predictor_problems(cfg.method.pkd)

    def task(self, cfg, model: nn.Module, pkd: PKDSetup | None = None) -> PKDPredictorTask:
        return pkd_stage1_task(cfg, need_setup(cfg, pkd))

    def build_task(self, cfg, model, vocabs, stores) -> PKDPredictorTask:
        return self.task(cfg, model, pkd=pkd_setup(cfg, stores, len(vocabs.words), True))
