"""PKD (pre-training-like knowledge distillation for OOD VQA): the two training stages.

Which parts are the paper's and which are **our reading** is spelled out in
``shared/METHODS.md``; every weight and choice below is a :class:`~pkd.train.config.PKDConfig`
field. ``F`` is the frozen foundation matching head (:mod:`pkd.train.foundation_head`, kept out
of the module tree like DistillVLM's online teacher: not a parameter, not in ``state_dict``, always
eval; ``.to()`` reaches it), ``P_v`` / ``P_t`` the predictors (:mod:`pkd.train.models.predictors`).

Stage 1, :class:`PKDPredictorTask` (``method.name = "pkd-predictors"``)::

    L = λ_itm · L_itm + λ_div · L_div          (losses/itm.py, losses/divergence.py)
    L_div = D(ṽ, v^F) + D(t̃, t^F)              divergence_on = "tokens" (pooled unless token-wise)
          = D(e_v, e_I) + D(e_t, e_Q)          divergence_on = "embeddings":
                                                 e_v = F.embed_image(ṽ), e_t = F.embed_text(t̃)

With a CLIP head ``M(ṽ, t)`` and ``e_v`` read ṽ's first token only and ``e_t`` t̃'s last valid one,
so pooled token-wise ``L_div`` leaves the tokens the head reads free (``L_itm`` then pulls ``e_v``
toward the *question*); ``divergence_on = "embeddings"`` pins exactly what the head reads.

Stage 2, :class:`PKDTask` (``method.name = "pkd"``)::

    L = L_vqa + λ_mkd · L_mkd  [+ λ_itm · L_itm + λ_div · L_div   if finetune_predictors]

``L_vqa`` is UpDn's soft-score BCE (``vqa_loss = "bce"``) or, with ``vqa_loss = "lmh"``, the
learned-mixin +H loss of :mod:`pkd.train.tasks.lmh` on D's logits and ``joint`` with the training
answer prior (``L_lm + w_H · H``; gate and smoothing training-only, as in the ``lmh`` method):
PKD as a plug-in on a debiasing base, as OOD-VQA papers report methods on top of LMH.

- predictors from the stage-1 checkpoint ``method.pkd.predictors``, frozen (eval, no grad)
  unless ``finetune_predictors`` (then a missing checkpoint means: trained jointly from scratch);
- memory fusion (:mod:`pkd.train.models.memory`) is the VQA model's ``feature_fusion`` hook; after
  each training forward the unit-norm foundation embeddings of this batch's ``ṽ`` and ``t̃``
  (``F.embed_image`` / ``F.embed_text``) — or, with ``memory_holds="features"``, their token
  means (:func:`pooled_features`) — are written to the FIFO memory (valid items only);
- ``L_mkd`` (losses/model_kd.py) on predicted pairs: positives ``(ṽ_i, t̃_i)`` and negatives
  ``(ṽ_i, t̃_π(i))``; the teacher is ``F(ṽ, t̃)``, the student ``ITMHead(joint)`` of D run on the
  pair projected into its word / region spaces (:mod:`pkd.train.models.itm_head`) with the memory
  fusion applied. *Ours:* ``ṽ, t̃`` are detached there, so ``L_mkd`` trains D, its ITM head and
  the projector, never the predictors. ``mkd_fraction = f < 1`` keeps the first
  ``m = ⌈f·B⌉`` items of the (shuffled) batch for ``L_mkd`` (partners π still drawn from the
  whole batch): an unbiased estimate of the same loss at ``m / B`` of D's extra pass (the
  dominant cost of a stage-2 step).

Ablations: ``use_predictors=false`` drops the predictors, ``F`` and every distillation term
(``L_mkd``, ``L_itm``, ``L_div``): the memory is then learnable slots only (``learnable_slots``
must be > 0 when ``use_memory``), of width ``joint_dim``. ``use_memory=false``: no memory fusion.
``use_model_kd=false``: no ``L_mkd`` (no ITM head). At test time only D with its hook runs: its
forward reads the question and the regions (``question_tokens``, ``question_mask``,
``region_features``, ``region_geometry``, ``region_mask``) and the memory in its own state — not
the predictors, ``F`` or any foundation feature (unless ``model.use_foundation_features`` feeds D
``image_embeds`` / ``text_embeds``), so validation and ``pkd evaluate`` join no foundation store
(:func:`pkd.train.prepare.forward_stores`).

Training batch keys needed (besides the VQA ones): ``vision_tokens`` (B,P,d_v), ``text_tokens``
(B,L,d_t), ``text_mask`` (B,L), ``image_embeds``, ``text_embeds`` (B,d_e) — the data must be read
with ``foundation_tokens=True`` — and, for a BLIP foundation model, ``input_ids`` (B,L) trimmed
like ``text_tokens`` (the exact ITM score of real text needs token ids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.train.checkpoint import load_checkpoint, load_weights
from pkd.train.config import PKDConfig, TrainConfig
from pkd.train.foundation_head import FoundationHead
from pkd.train.losses.debias import LMHLoss
from pkd.train.losses.divergence import FeatureDivergence, pool_tokens
from pkd.train.losses.itm import MatchingBCE, negative_partners
from pkd.train.losses.model_kd import BinaryKL
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.itm_head import ITMHead, PairProjector
from pkd.train.models.layers import FOUNDATION_KEYS
from pkd.train.models.memory import FeatureMemory, PKDFeatureFusion
from pkd.train.models.predictors import PREDICTED_TEXT, PREDICTED_VISION, CrossModalPredictors
from pkd.train.tasks.lmh import training_prior
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
        mask = _need(batch, "text_mask")  # (B, L_b)
        if mask.shape[1] > text.shape[1]:
            raise PkdError(f"data.foundation_text: batch has {mask.shape[1]} text tokens, the "
                           f"predictors were built for {text.shape[1]}")
        return Predicted(vision, text[:, : mask.shape[1]], mask.bool())
    return Predicted(vision, text, torch.ones(text.shape[:2], dtype=torch.bool,
                                              device=text.device))


def _twice(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x])  # (B, ...) -> (2B, ...)


def _pair(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x[pi]])  # (B, ...) -> (2B, ...): items, then their partners


def _need(batch: dict, key: str) -> torch.Tensor:
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
        v, t, mask = (_need(batch, k) for k in ("vision_tokens", "text_tokens", "text_mask"))
        ids = _need(batch, "input_ids") if head.family == "blip" else None
        pi, valid = negative_partners(_need(batch, "image_embeds"), _need(batch, "text_embeds"))
        # first half positives, second half negatives: (2B,) logits each
        real_text = head(_twice(pred.vision), _pair(t, pi), _pair(mask, pi),
                         None if ids is None else _pair(ids, pi))  # M(ṽ, t^F), M(ṽ, t^F_π)
        real_image = head(_pair(v, pi), _twice(pred.text), _twice(pred.text_mask))
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
        return (self.div(e_v, _need(batch, "image_embeds")[:, None].to(e_v.dtype))
                + self.div(e_t, _need(batch, "text_embeds")[:, None].to(e_t.dtype)))

    def _divergence(self, pred: Predicted, v: torch.Tensor, t: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        if not self.tokenwise:
            return (self.div(pool_tokens(pred.vision), pool_tokens(v))
                    + self.div(pool_tokens(pred.text, pred.text_mask), pool_tokens(t, mask)))
        if pred.vision.shape[1] != v.shape[1]:
            raise PkdError(f"data.foundation_image: {v.shape[1]} vision tokens per image, the "
                           f"predictors predict {pred.vision.shape[1]} (predictor_tokens=0)")
        return self.div(pred.vision, v) + self.div(pred.text, t, mask)


class _FrozenHeadTask(FrozenOutside):
    """Holds the frozen head outside the module tree (:class:`FrozenOutside`)."""

    def __init__(self, head: FoundationHead | None):
        super().__init__()
        self.hold("head", head)


class PKDPredictorTask(_FrozenHeadTask):
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


class PKDTask(_FrozenHeadTask):
    """Stage 2 (module docstring): D + its memory hook + ITM head / projector [+ predictors]."""

    def __init__(self, model: nn.Module, cfg: PKDConfig, head: FoundationHead | None = None,
                 predictors: CrossModalPredictors | None = None,
                 projector: PairProjector | None = None, itm_head: ITMHead | None = None,
                 lmh: LMHLoss | None = None, prior: torch.Tensor | None = None):
        super().__init__(head)
        if (lmh is None) != (prior is None):
            raise ValueError("the LMH answer loss needs the training prior (and vice versa)")
        if predictors is not None and head is None:
            raise ValueError("PKD predictors need the foundation matching head")
        if (itm_head is None) != (projector is None) or (
                itm_head is not None and predictors is None):
            raise ValueError("model-level KD needs predictors, a PairProjector and an ITMHead")
        if not isinstance(getattr(model, "feature_fusion", None), PKDFeatureFusion):
            raise ValueError("attach the PKD feature fusion first (attach_pkd_fusion)")
        self.model, self.predictors = model, predictors
        self.projector, self.itm_head = projector, itm_head
        self.finetune = predictors is not None and cfg.finetune_predictors
        self.objective = PredictorObjective(cfg)
        self.vqa, self.mkd = VQALoss(), BinaryKL(cfg.kd_temperature)
        self.lmh = lmh  # training-only gate / smoothing of vqa_loss = "lmh" (not in best/)
        if prior is not None:  # derived from the training split at every start, not saved
            self.register_buffer("prior", prior.float(), persistent=False)
        self.cfg = cfg
        if predictors is not None and not self.finetune:
            predictors.requires_grad_(False).eval()

    @property
    def fusion(self) -> PKDFeatureFusion:
        return self.model.feature_fusion

    def train(self, mode: bool = True) -> PKDTask:
        super().train(mode)
        if self.predictors is not None and not self.finetune:
            self.predictors.eval()  # frozen stage-1 predictors stay in eval mode
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        pred = embeds = None
        if self.predictors is not None:
            pred, embeds = self.predict(batch)
            if self.finetune:
                terms["itm_loss"], terms["div_loss"] = self.objective(self.head, pred, batch)
        out = self.model(batch)  # the memory hook reads earlier batches only
        terms.update(self.answer_loss(out, batch))
        if self.itm_head is not None:
            terms["mkd_loss"] = self.model_kd(pred, batch, embeds)
        if pred is not None and self.training:
            self.remember(pred, embeds, batch)
        c = self.cfg
        weights = {"vqa_loss": 1.0, "mkd_loss": c.lambda_mkd, "itm_loss": c.lambda_itm,
                   "div_loss": c.lambda_div,
                   "entropy_loss": self.lmh.entropy_weight if self.lmh is not None else 0.0}
        loss = sum(weights[k] * v for k, v in terms.items())
        return {"loss": loss, **terms, "logits": out["logits"]}

    def answer_loss(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        """``{vqa_loss}`` (BCE) or, with the LMH base, ``{vqa_loss: L_lm, entropy_loss: H}``."""
        if self.lmh is None:
            return {"vqa_loss": self.vqa(out["logits"], batch["targets"])}
        parts = self.lmh(out["logits"], out["joint"], self.prior[batch["question_type"]],
                         batch["targets"])
        return {"vqa_loss": parts["vqa_loss"], "entropy_loss": parts["entropy"]}

    def predict(self, batch: dict) -> tuple[Predicted, tuple[torch.Tensor, torch.Tensor]]:
        """(``ṽ, t̃``, their unit foundation embeddings ``(e_v, e_t)`` (B, d_e) each): read from
        a ``predicted`` store's batch keys (``data.predicted``, frozen predictors only) or
        computed by the predictors and the head."""
        if "predicted_vision" in batch and not self.finetune:
            pred = Predicted(batch["predicted_vision"], batch["predicted_text"],
                             batch["predicted_text_mask"].bool())
            return pred, (batch["predicted_image_embed"], batch["predicted_text_embed"])
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            pred = predicted_view(self.predictors(batch), batch, self.objective.tokenwise)
        with torch.no_grad():
            embeds = (self.head.embed_image(pred.vision.detach()),
                      self.head.embed_text(pred.text.detach(), pred.text_mask))
        return pred, embeds

    def model_kd(self, pred: Predicted, batch: dict,
                 embeds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``L_mkd`` on positives ``(ṽ_i, t̃_i)`` and negatives ``(ṽ_i, t̃_π(i))``; ``embeds``
        the items' ``(e_v, e_t)``; the positives' teacher logits come from the batch
        (``predicted_teacher``) when a predicted store is read."""
        v, t, mask = pred.vision.detach(), pred.text.detach(), pred.text_mask
        pi, valid = negative_partners(_need(batch, "image_embeds"), _need(batch, "text_embeds"))
        m = mkd_items(len(pi), self.cfg.mkd_fraction)
        pi, valid = pi[:m], valid[:m]  # partners of the first m items, from the whole batch
        v2 = _twice(v[:m])
        t2, m2 = torch.cat([t[:m], t[pi]]), torch.cat([mask[:m], mask[pi]])
        with torch.no_grad():
            if "predicted_teacher" in batch and not self.finetune:  # M(ṽ_i, t̃_i) cached
                teacher = torch.cat([batch["predicted_teacher"][:m].float(),
                                     self.head(v[:m], t[pi], mask[pi]).float()])
            else:
                teacher = self.head(v2, t2, m2)  # (2m,) M(ṽ, t̃)
        e_v, e_t = embeds
        pair = (_twice(e_v[:m]), torch.cat([e_t[:m], e_t[pi]]))  # (2m, d_e) each
        # the pair's embeddings under both input names D may read (model.foundation_inputs)
        pair_embeds = {k: x for keys in FOUNDATION_KEYS.values()
                       for k, x in zip(keys, pair, strict=True)}
        student = self.model_itm(v2, t2, m2, pair_embeds)  # (2m,) ITM_D(ṽ, t̃)
        weight = torch.cat([torch.ones_like(valid), valid])
        return self.mkd(student, teacher, weight)

    def model_itm(self, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                  embeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """D's ITM logit (n,) of predicted pairs: projected into D's inputs, D's own path;
        ``embeds``: the pairs' ``image_embeds`` / ``text_embeds`` (n, d_e)."""
        words, regions = self.projector(vision, text)  # (n, L', d_w), (n, P', d_r)
        n, p = regions.shape[:2]
        device = vision.device
        region_dim = self.predictors.region_dim  # raw d_r: D embeds the placeholder regions
        view = {  # placeholders the hook replaces; masks say what is valid
            "question_tokens": torch.zeros(text_mask.shape, dtype=torch.long, device=device),
            "question_mask": text_mask,
            "region_features": regions.new_zeros(1, 1, region_dim).expand(n, p, region_dim),
            "region_geometry": regions.new_zeros(1, 1, 6).expand(n, p, 6),
            "region_mask": torch.ones(n, p, dtype=torch.bool, device=device),
            **embeds,
        }
        with self.fusion.substitute(words, regions):
            joint = self.model(view)["joint"]  # (n, H)
        return self.itm_head(joint)

    @torch.no_grad()
    def remember(self, pred: Predicted, embeds: tuple[torch.Tensor, torch.Tensor],
                 batch: dict) -> None:
        """Write this batch's rows to the memory (valid items): the unit-norm embeddings
        ``(e_v, e_t)`` of ``ṽ`` / ``t̃``, or with ``memory_holds="features"`` the predicted
        features themselves, :func:`pooled_features`."""
        memory = self.fusion.memory
        if memory is None:
            return
        valid = batch["question_mask"].any(1) & batch["region_mask"].any(1)  # (B,) not padding
        if self.cfg.memory_holds == "features":
            rows = pooled_features(pred, memory.dim)  # (2B, max(d_v, d_t))
        else:
            rows = torch.cat([embeds[0], embeds[1]]).float()  # (2B, d_e)
        memory.write(rows, torch.cat([valid, valid]))


def pooled_features(pred: Predicted, width: int) -> torch.Tensor:
    """Memory rows of the predicted features themselves (2B, width): the token mean of ``ṽ``
    then the mean of ``t̃`` over its valid tokens, each zero-padded to ``width``::

        m_v = (1/P') Σ_p ṽ_p,      m_t = Σ_l mask_l t̃_l / max(1, Σ_l mask_l)
    """
    v = pred.vision.float().mean(1)  # (B, d_v)
    mask = pred.text_mask.float()  # (B, L')
    t = (pred.text.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    pad = [torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (v, t)]
    return torch.cat(pad)  # (2B, width)


def mkd_items(batch_size: int, fraction: float) -> int:
    """``m = ⌈fraction · B⌉`` (at least 1): the items whose predicted pairs ``L_mkd`` reads."""
    return max(1, min(batch_size, math.ceil(fraction * batch_size - 1e-9)))


# ----------------------------------------------------------------------------- building


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


def pkd_memory_dim(cfg: PKDConfig, model: nn.Module, dims: dict | None) -> int:
    """Memory width: the foundation embedding size d_e (``memory_holds="embeddings"``), the wider
    of the predicted token widths max(d_v, d_t) (``"features"``), or D's ``joint_dim`` without
    predictors; ``dims``: the foundation_image store's dims."""
    if not cfg.use_predictors:
        return model.joint_dim
    need = ("embed_dim",) if cfg.memory_holds == "embeddings" else ("vision_dim", "text_dim")
    if not dims or any(k not in dims for k in need):
        raise PkdError(f"data.foundation_image: PKD's memory needs the foundation {' and '.join(need)}")
    return dims["embed_dim"] if cfg.memory_holds == "embeddings" else max(
        dims["vision_dim"], dims["text_dim"])


def attach_pkd_fusion(model: nn.Module, cfg: PKDConfig, dims: dict | None
                      ) -> PKDFeatureFusion:
    """Set ``model.feature_fusion`` to the PKD hook (call before loading a stage-2 model's
    weights for evaluation, too: the memory is part of the model's state)."""
    if cfg.use_memory and not cfg.use_predictors and cfg.learnable_slots == 0:
        raise PkdError("method.pkd.use_predictors=false leaves the memory empty: set "
                       "method.pkd.learnable_slots > 0 or method.pkd.use_memory=false")
    memory = None
    if cfg.use_memory:
        size = cfg.memory_size if cfg.use_predictors else 0
        memory = FeatureMemory(size, pkd_memory_dim(cfg, model, dims), cfg.learnable_slots)
    hook = PKDFeatureFusion(memory, model.word_feature_dim, model.region_feature_dim,
                            at_test=cfg.memory_at_test)
    model.feature_fusion = hook  # a registered submodule: saved with the model
    return hook


def pkd_stage1_task(cfg: TrainConfig, setup: PKDSetup) -> PKDPredictorTask:
    """Stage 1: the predictors (built from ``setup``) through the frozen matching head."""
    if setup.head is None:
        raise ValueError("stage 1 needs the foundation matching head")
    return PKDPredictorTask(build_predictors(cfg.method.pkd, setup), setup.head, cfg.method.pkd)


def pkd_stage2_task(cfg: TrainConfig, model: nn.Module, setup: PKDSetup,
                    prior: torch.Tensor | None = None) -> PKDTask:
    """Stage 2 around ``model`` (its memory hook attached here unless it already has one);
    ``prior`` (K + 1, A): the training answer prior the LMH base needs (``vqa_loss = "lmh"``)."""
    p = cfg.method.pkd
    if (p.vqa_loss == "lmh") != (prior is not None):
        raise ValueError("method.pkd.vqa_loss=lmh needs the training prior (and only it)")
    lmh = None
    if prior is not None:
        c = cfg.method.lmh
        lmh = LMHLoss(model.joint_dim, c.entropy_weight, c.smooth, c.smooth_init,
                      c.constant_smooth)
    predictors = head = projector = itm_head = None
    if p.use_predictors:
        head = setup.head
        if head is None:
            raise ValueError("use_predictors needs the foundation matching head")
        predictors = build_predictors(p, setup)
        if p.predictors:
            load_predictors(predictors, p.predictors)
        elif not p.finetune_predictors:
            raise PkdError("method.pkd.predictors: not set (the stage-1 run, method.name="
                           "pkd-predictors); or set method.pkd.finetune_predictors=true to "
                           "train them jointly from scratch")
        if p.use_model_kd:
            projector = PairProjector(head.vision_dim, head.text_dim, model.region_feature_dim,
                                      model.word_feature_dim)
            itm_head = ITMHead(model.joint_dim)
    if not isinstance(model.feature_fusion, PKDFeatureFusion):
        attach_pkd_fusion(model, p, None if head is None else {
            "embed_dim": head.embed_dim, "vision_dim": head.vision_dim, "text_dim": head.text_dim})
    return PKDTask(model, p, head, predictors, projector, itm_head, lmh, prior)


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


def memory_problems(p: PKDConfig) -> list[tuple[str, str]]:
    """Config rules of the memory (stage 2): it must not be left empty."""
    if not p.use_memory or p.learnable_slots:
        return []
    if not p.use_predictors:
        return [("method.pkd.learnable_slots", "0 with method.pkd.use_predictors=false leaves "
                 "the memory empty (set it > 0, or method.pkd.use_memory=false)")]
    if p.memory_size == 0:
        return [("method.pkd.memory_size", "0 with method.pkd.learnable_slots=0 leaves the "
                 "memory empty (set one > 0, or method.pkd.use_memory=false)")]
    return []


def _need_setup(cfg: TrainConfig, pkd: PKDSetup | None) -> PKDSetup:
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
        return pkd_stage1_task(cfg, _need_setup(cfg, pkd))

    def build_task(self, cfg, model, vocabs, stores) -> PKDPredictorTask:
        return self.task(cfg, model, pkd=pkd_setup(cfg, stores, len(vocabs.words), True))


class PKD(Method):
    """``method.name = "pkd"``: stage 2, the VQA model with its memory fusion hook (part of its
    saved state) and L_mkd; vocabularies shared with the stage-1 run."""

    name = "pkd"
    ddp_unused_parameters = True  # the memory fusion is unused until the memory's first write

    def foundation_tokens(self, cfg) -> bool:
        """Only the predictors read the tokens: not with ``use_predictors=false``, nor when
        their frozen outputs come from a ``predicted`` store (``data.predicted``)."""
        return cfg.method.pkd.use_predictors and not cfg.data.predicted

    def vocab_source(self, cfg) -> str:
        return cfg.method.pkd.predictors

    def teacher_stores(self, cfg) -> tuple[str, ...]:
        p = cfg.method.pkd
        return ("predicted",) if cfg.data.predicted and p.use_predictors else ()

    def problems(self, cfg) -> list[tuple[str, str]]:
        p = cfg.method.pkd
        cached = []
        if cfg.data.predicted and p.use_predictors and p.finetune_predictors:
            cached = [("data.predicted", "holds frozen predictors' outputs: unset it with "
                       "method.pkd.finetune_predictors=true")]
        return ((predictor_problems(p) if p.use_predictors else []) + memory_problems(p)
                + cached)

    def attach(self, model: nn.Module, cfg, foundation_dims: dict | None) -> None:
        attach_pkd_fusion(model, cfg.method.pkd, foundation_dims)

    def task(self, cfg, model: nn.Module, pkd: PKDSetup | None = None,
             prior: torch.Tensor | None = None) -> PKDTask:
        return pkd_stage2_task(cfg, model, _need_setup(cfg, pkd), prior)

    def build_task(self, cfg, model, vocabs, stores) -> PKDTask:
        setup = pkd_setup(cfg, stores, len(vocabs.words), cfg.method.pkd.use_predictors)
        prior = None
        if cfg.method.pkd.vqa_loss == "lmh":
            from pkd.train.prepare import split_batches  # prepare imports the tasks

            train, _ = split_batches(cfg, cfg.data.train_split, vocabs, stores, teacher=True)
            _, prior = training_prior(train, len(vocabs.answers), cfg.method.lmh.prior_eps)
        task = self.task(cfg, model, pkd=setup, prior=prior)
        if getattr(stores, "predicted", None) is not None and task.predictors is not None:
            from pkd.train.predicted_cache import check_predicted_store, weights_digest

            inputs = {"regions": stores.regions, "foundation_image": stores.foundation_image}
            check_predicted_store(stores.predicted, weights_digest(task.predictors),
                                  {k: s for k, s in inputs.items() if s is not None},
                                  cfg.data.predicted)
        return task
