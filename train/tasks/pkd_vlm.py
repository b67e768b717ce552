"""PKD in its own setting (model.arch = vlm): pre-training-like features in F0's input spaces.

D is the foundation model ``F0`` fine-tuned (:mod:`pkd.train.models.vlm`); ``F0`` stays frozen.
Our reading of the paper (``METHODS.md``), in two stages:

**Stage 1** (``method.name = pkd-vlm-predictors``): cross-modal predictors
(:class:`~pkd.train.models.predictors.CrossModalPredictors`) read the in-domain item (prompt
tokens ``q``, regions ``r``) and emit a *pre-training-like pair* in ``F0``'s own input spaces:
``P_v(q, r) -> (ṽ, b̃)``, ``P'`` region-like features (``d_r``, ``visual_feats``) with boxes
(``visual_pos``, ``b̃ = [c - s/2, c + s/2]``, ``c, s = σ(·)``), and ``P_t(r, q) -> t̃``, ``L'``
word-embedding-like tokens (``H``, ``inputs_embeds``). With ``s(t, v)`` the frozen ``F0``'s
matching log-odds and ``π`` a roll of the batch::

    L_itm = BCE(s(t̃_b, ṽ_b), 1) + BCE(s(t̃_π(b), ṽ_b), 0)
    L_div = MMD²(pool ṽ, pool r) + MMD²(pool t̃, pool E_F0(q))       (pkd.train.losses.divergence)
    L     = λ_itm · L_itm + λ_div · L_div

so ``F0`` judges the predicted pairs as matching pairs, and the predictions keep the statistics
of ``F0``'s real inputs (region features; its word embeddings of real text). Stage 1 never reads
the caption corpus.

**Stage 2** (``method.name = pkd-vlm``): the frozen predictors feed
- *feature-level distillation*: a FIFO memory of their token means (``[pool ṽ; 0]`` and
  ``[pool t̃; 0]``, width ``max(d_r, H)``) that D's word and region inputs read through a gate,
  ``x' = x + g ⊙ Attn(x, Mem)`` (:class:`~pkd.train.models.memory.PKDFeatureFusion`, part of D
  at test time);
- *model-level distillation* on D's own (inherited, fine-tuned) ITM head:
  ``L_mkd = T² KL(σ(s_F0/T) ‖ σ(s_D/T))`` over the positive and rolled pairs (``BinaryKL``);

``L = L_vqa + λ_mkd · L_mkd``. With ``method.pkd.mkd_heads=itm+mlm`` (ours: D answers through
its masked-LM head, which the paper's ITM term never reaches) ``L_mkd`` also holds
``T² KL(softmax(m_F0/T) ‖ softmax(m_D/T))`` at a random share (``mkd_mask_share``, at least one)
of the predicted text positions, each replaced by the model's own ``[MASK]`` embedding, on the
positive pairs — pre-training's masked-LM, on pre-training-like pairs (``mkd_vision=real``: the
predicted text with the item's real regions instead of the predicted ones).
At test time only D (with its memory) runs. Ablations:
``method.pkd.use_memory=false``, ``use_model_kd=false`` (stage 2), ``lambda_itm=0``,
``lambda_div=0`` (stage 1).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pkd.errors import PkdError
from pkd.train.losses.divergence import mmd2, pool_tokens
from pkd.train.losses.lwf import masked_lm_kd
from pkd.train.losses.model_kd import BinaryKL
from pkd.train.losses.vqa import VQALoss
from pkd.train.models.memory import FeatureMemory, PKDFeatureFusion
from pkd.train.models.predictors import PREDICTED_TEXT, PREDICTED_VISION, CrossModalPredictors
from pkd.train.tasks.foundation_kd import frozen_foundation
from pkd.train.tasks.method import FrozenOutside, Method
from pkd.train.tasks.pkd_predictors import load_predictors


class PairPredictors(nn.Module):
    """``P_v``, ``P_t`` emitting ``(ṽ (B, P', d_r), b̃ (B, P', 4), t̃ (B, L', H))``."""

    def __init__(self, num_words: int, max_words: int, region_dim: int, regions: int,
                 hidden_dim: int, words: int, cfg):
        super().__init__()
        self.region_dim = region_dim
        self.net = CrossModalPredictors(
            num_words, max_words, region_dim, regions, region_dim + 4, words, hidden_dim,
            hidden=cfg.predictor_hidden, heads=cfg.predictor_heads, layers=cfg.predictor_layers,
            inputs=cfg.predictor_inputs, null_key=cfg.predictor_null_key)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(batch)
        vision = out[PREDICTED_VISION]
        feats, box = vision[..., : self.region_dim], torch.sigmoid(vision[..., self.region_dim:])
        centre, size = box[..., :2], box[..., 2:]
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1).clamp(0.0, 1.0)
        return feats, boxes, out[PREDICTED_TEXT]


def build_pair_predictors(cfg, model: nn.Module, words: int, max_regions: int) -> PairPredictors:
    """The predictors for D (``model``: a FoundationVQA) and ``cfg`` (a TrainConfig)."""
    p = cfg.method.pkd
    return PairPredictors(words, cfg.data.max_question_length, model.region_feature_dim,
                          p.predictor_tokens or max_regions, model.word_feature_dim,
                          p.predictor_tokens or cfg.data.max_question_length, p)


def match_logodds(model: nn.Module, words: torch.Tensor, regions: torch.Tensor,
                  boxes: torch.Tensor) -> torch.Tensor:
    """A FoundationVQA's ITM log-odds (B,) of word embeddings (B, L, H) with regions + boxes
    (every token and region valid)."""
    ones = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device)
    region_mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
    out = model.encode(words, ones, regions, boxes, region_mask)
    return model.match_logodds(out.pooled_output)


def rolled(x: torch.Tensor) -> torch.Tensor:
    """The batch rolled by one item (the shuffled partner π(b) = b + 1)."""
    return torch.roll(x, shifts=1, dims=0)


class PKDPairPredictorTask(FrozenOutside):
    """Stage 1: predictors trained through the frozen F0 (module docstring)."""

    def __init__(self, predictors: PairPredictors, foundation: nn.Module, lambda_itm: float,
                 lambda_div: float):
        super().__init__()
        self.predictors = predictors
        self.hold("foundation", foundation)
        self.lambda_itm, self.lambda_div = lambda_itm, lambda_div

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v, b, t = self.predictors(batch)
        f0 = self.foundation
        pos = match_logodds(f0, t, v, b)
        neg = match_logodds(f0, rolled(t), v, b) if len(t) > 1 else pos[:0]
        itm = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
        if len(neg):
            itm = itm + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        real_words = f0.embed_words(batch["question_tokens"]).detach()
        div = (mmd2(pool_tokens(v)[:, 0], pool_tokens(batch["region_features"].to(v.dtype),
                                                      batch["region_mask"])[:, 0])
               + mmd2(pool_tokens(t)[:, 0], pool_tokens(real_words, batch["question_mask"])[:, 0]))
        total = self.lambda_itm * itm + self.lambda_div * div
        return {"loss": total, "itm_loss": itm, "div_loss": div,
                "match_rate": (pos > 0).float().mean()}


class PKDVLMTask(FrozenOutside):
    """Stage 2: D + memory fusion + L_mkd on predicted pairs (module docstring)."""

    def __init__(self, model: nn.Module, predictors: PairPredictors, foundation: nn.Module,
                 lambda_mkd: float, temperature: float, model_kd: bool, mlm_share: float = 0.0,
                 real_vision: bool = False):
        super().__init__()
        self.model, self.vqa = model, VQALoss()
        self.hold("predictors", predictors.eval().requires_grad_(False))
        self.hold("foundation", foundation)
        self.lambda_mkd, self.model_kd = lambda_mkd, model_kd
        self.kd, self.temperature, self.mlm_share = BinaryKL(temperature), temperature, mlm_share
        self.real_vision = real_vision

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        vqa = self.vqa(out["logits"], batch["targets"])
        with torch.no_grad():
            v, b, t = self.predictors(batch)
        total, parts = vqa, {"vqa_loss": vqa}
        if self.model_kd:  # positive and rolled predicted pairs: D (through its memory) vs F0
            words, regions, boxes = torch.cat([t, rolled(t)]), torch.cat([v, v]), torch.cat([b, b])
            mine_words, mine_regions = words, regions
            if self.model.feature_fusion is not None:
                mine_words, mine_regions = self.model.feature_fusion(
                    words, torch.ones(words.shape[:2], dtype=torch.bool, device=words.device),
                    regions, torch.ones(regions.shape[:2], dtype=torch.bool, device=words.device))
            mine = match_logodds(self.model, mine_words, mine_regions, boxes)
            with torch.no_grad():
                ref = match_logodds(self.foundation, words, regions, boxes)
            mkd = self.kd(mine, ref)
            if self.mlm_share > 0:
                seen = ((batch["region_features"], batch["region_geometry"][..., :4],
                         batch["region_mask"]) if self.real_vision else (v, b, None))
                parts["mkd_mlm_loss"] = self._masked_lm(*seen, t)
                mkd = mkd + parts["mkd_mlm_loss"]
            total = total + self.lambda_mkd * mkd
            parts["mkd_loss"] = mkd
        self._remember(v, t)
        return {"loss": total, **parts, "logits": out["logits"]}

    def _masked_lm(self, v: torch.Tensor, b: torch.Tensor, region_mask: torch.Tensor | None,
                   t: torch.Tensor) -> torch.Tensor:
        """KL of the masked-LM heads at masked positions of the predicted text read with the
        regions ``v`` (boxes ``b``, ``region_mask`` or all valid)."""
        n, length = t.shape[:2]
        chosen = torch.rand(n, length, device=t.device) < self.mlm_share
        chosen[torch.arange(n), torch.randint(length, (n,), device=t.device)] = True
        ones = torch.ones(n, length, dtype=torch.bool, device=t.device)
        if region_mask is None:
            region_mask = torch.ones(v.shape[:2], dtype=torch.bool, device=t.device)
        v = v.to(t.dtype)

        def masked_logits(model: nn.Module, fused: bool) -> torch.Tensor:
            mask = model.embed_words(torch.full((1, 1), model.mask_id, device=t.device))[0, 0]
            words = torch.where(chosen[..., None], mask.to(t.dtype), t)
            regions = v
            if fused and model.feature_fusion is not None:
                words, regions = model.feature_fusion(words, ones, v, region_mask)
            language = model.encode(words, ones, regions, b, region_mask).language_output
            return model.backbone.cls.predictions(language[chosen])  # (k, V)

        mine = masked_logits(self.model, fused=True)
        with torch.no_grad():
            ref = masked_logits(self.foundation, fused=False)
        return masked_lm_kd(mine, ref, self.temperature)

    @torch.no_grad()
    def _remember(self, v: torch.Tensor, t: torch.Tensor) -> None:
        """Write ``[pool ṽ; 0]`` and ``[pool t̃; 0]`` into D's memory (training mode only)."""
        fusion = self.model.feature_fusion
        if fusion is None or fusion.memory is None:
            return
        dim = fusion.memory.dim
        rows = [F.pad(pool_tokens(x)[:, 0], (0, dim - x.shape[-1])) for x in (v, t)]
        fusion.memory.write(torch.cat(rows))


def attach_memory(model: nn.Module, cfg) -> None:
    """D's memory fusion (part of its state: saved in best/, rebuilt before loading)."""
    p = cfg.method.pkd
    if not p.use_memory:
        return
    dim = max(model.word_feature_dim, model.region_feature_dim)
    model.feature_fusion = PKDFeatureFusion(FeatureMemory(p.memory_size, dim, p.learnable_slots),
                                            model.word_feature_dim, model.region_feature_dim,
                                            at_test=p.memory_at_test)


def _vlm_problem(cfg, name: str) -> list[tuple[str, str]]:
    if cfg.model.arch != "vlm":
        return [("model.arch", f"{cfg.model.arch!r} is not 'vlm' (method.name={name} works in "
                               "F0's input spaces)")]
    return []


def _max_regions(stores) -> int:
    return int(stores.regions.spec.dims.get("max_regions", 0)) or 8


class PKDVLMPredictors(Method):
    """``method.name = "pkd-vlm-predictors"``: stage 1 (nothing of D trains)."""

    name = "pkd-vlm-predictors"
    validates = False

    def problems(self, cfg) -> list[tuple[str, str]]:
        return _vlm_problem(cfg, self.name)

    def task(self, cfg, model: nn.Module, predictors=None, foundation=None):
        if predictors is None or foundation is None:
            raise PkdError(f"method.name={self.name}: predictors and foundation are missing")
        return PKDPairPredictorTask(predictors, foundation, cfg.method.pkd.lambda_itm,
                                    cfg.method.pkd.lambda_div)

    def build_task(self, cfg, model, vocabs, stores):
        predictors = build_pair_predictors(cfg, model, len(vocabs.words), _max_regions(stores))
        return self.task(cfg, model, predictors, frozen_foundation(cfg, vocabs, stores))


class PKDVLM(Method):
    """``method.name = "pkd-vlm"``: stage 2, D fine-tuned with PKD."""

    name = "pkd-vlm"
    ddp_unused_parameters = True  # the memory fusion is unused until the memory's first write

    def vocab_source(self, cfg) -> str:
        return cfg.method.pkd.predictors

    def problems(self, cfg) -> list[tuple[str, str]]:
        out = _vlm_problem(cfg, self.name)
        if not cfg.method.pkd.predictors:
            out.append(("method.pkd.predictors", "is empty: the stage-1 run "
                        "(method.name=pkd-vlm-predictors) pkd-vlm reads"))
        return out

    def attach(self, model: nn.Module, cfg, foundation_dims: dict | None) -> None:
        attach_memory(model, cfg)

    def task(self, cfg, model: nn.Module, predictors=None, foundation=None) -> PKDVLMTask:
        if predictors is None or foundation is None:
            raise PkdError(f"method.name={self.name}: predictors and foundation are missing")
        p = cfg.method.pkd
        return PKDVLMTask(model, predictors, foundation, p.lambda_mkd, p.kd_temperature,
                          p.use_model_kd, p.mkd_mask_share if p.mkd_heads == "itm+mlm" else 0.0,
                          p.mkd_vision == "real")

    def build_task(self, cfg, model, vocabs, stores) -> PKDVLMTask:
        stage1 = replace(cfg, method=replace(cfg.method, name="pkd-vlm-predictors"))
        predictors = build_pair_predictors(stage1, model, len(vocabs.words), _max_regions(stores))
        load_predictors(predictors, str(Path(cfg.method.pkd.predictors)))
        return self.task(cfg, model, predictors, frozen_foundation(cfg, vocabs, stores))
