"""PKD (pre-training-like knowledge distillation for OOD VQA), stage 2: D, its memory, ``L_mkd``.

Which parts are the paper's and which are **our reading** is spelled out in
``shared/METHODS.md``; every weight and choice below is a :class:`~pkd.train.config.PKDConfig`
field. Stage 1 — the predictors ``P_v`` / ``P_t`` trained through the frozen foundation matching
head ``F`` — is :mod:`pkd.train.tasks.pkd_predictors`.

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

Training batch keys needed (besides the VQA ones): stage 1's
(:mod:`pkd.train.tasks.pkd_predictors`) while the predictors run each step; with a ``predicted``
store (``data.predicted``, frozen predictors) its ``predicted_*`` keys instead of the tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pkd.errors import PkdError
from pkd.train.config import PKDConfig, TrainConfig
from pkd.train.foundation_head import FoundationHead
from pkd.train.losses.debias import LMHLoss
from pkd.train.losses.itm import negative_partners
from pkd.train.losses.model_kd import BinaryKL
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.itm_head import ITMHead, PairProjector
from pkd.train.models.layers import FOUNDATION_KEYS
from pkd.train.models.memory import FeatureMemory, PKDFeatureFusion
from pkd.train.models.predictors import CrossModalPredictors
from pkd.train.predicted_cache import check_predicted_store, weights_digest
from pkd.train.splits import training_questions
from pkd.train.tasks.lmh import training_prior
from pkd.train.tasks.method import Method
from pkd.train.tasks.pkd_predictors import (
    FrozenHeadTask,
    PKDSetup,
    Predicted,
    PredictorObjective,
    build_predictors,
    load_predictors,
    need_key,
    need_setup,
    pkd_setup,
    predicted_view,
    predictor_problems,
    twice,
)


class PKDTask(FrozenHeadTask):
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
        pi, valid = negative_partners(need_key(batch, "image_embeds"),
                                      need_key(batch, "text_embeds"))
        m = mkd_items(len(pi), self.cfg.mkd_fraction)
        pi, valid = pi[:m], valid[:m]  # partners of the first m items, from the whole batch
        v2 = twice(v[:m])
        t2, m2 = torch.cat([t[:m], t[pi]]), torch.cat([mask[:m], mask[pi]])
        with torch.no_grad():
            if "predicted_teacher" in batch and not self.finetune:  # M(ṽ_i, t̃_i) cached
                teacher = torch.cat([batch["predicted_teacher"][:m].float(),
                                     self.head(v[:m], t[pi], mask[pi]).float()])
            else:
                teacher = self.head(v2, t2, m2)  # (2m,) M(ṽ, t̃)
        e_v, e_t = embeds
        pair = (twice(e_v[:m]), torch.cat([e_t[:m], e_t[pi]]))  # (2m, d_e) each
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


def pkd_memory_dim(cfg: PKDConfig, model: nn.Module, dims: dict | None) -> int:
    """Memory width: the foundation embedding size d_e (``memory_holds="embeddings"``), the wider
    of the predicted token widths max(d_v, d_t) (``"features"``), or D's ``joint_dim`` without
    predictors; ``dims``: the foundation_image store's dims."""
    if not cfg.use_predictors:
        return model.joint_dim
    need = ("embed_dim",) if cfg.memory_holds == "embeddings" else ("vision_dim", "text_dim")
    if not dims or any(k not in dims for k in need):
        raise PkdError("data.foundation_image: PKD's memory needs the foundation "
                       f"{' and '.join(need)}")
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
        return pkd_stage2_task(cfg, model, need_setup(cfg, pkd), prior)

    def build_task(self, cfg, model, vocabs, stores) -> PKDTask:
        setup = pkd_setup(cfg, stores, len(vocabs.words), cfg.method.pkd.use_predictors)
        prior = None
        if cfg.method.pkd.vqa_loss == "lmh":
            train = training_questions(cfg, vocabs, stores)
            _, prior = training_prior(train, len(vocabs.answers), cfg.method.lmh.prior_eps)
        task = self.task(cfg, model, pkd=setup, prior=prior)
        if getattr(stores, "predicted", None) is not None and task.predictors is not None:
            inputs = {"regions": stores.regions, "foundation_image": stores.foundation_image}
            check_predicted_store(stores.predicted, weights_digest(task.predictors),
                                  {k: s for k, s in inputs.items() if s is not None},
                                  cfg.data.predicted)
        return task
