"""Typed training configuration: the dataclasses of a ``TrainConfig``, one comment per field.

``pkd train CONFIG.yaml model.hidden_size=256`` fills these from the YAML file and the dotted
overrides (:mod:`pkd.train.config_load`: strict keys and types, then the allowed values and the
rules between fields). A field needs only its annotation and default and, if it is a number, its
allowed range, declared with it (``lr: float = allowed(1e-3, gt=0)``, an :class:`Allowed` in
its metadata; a test checks that every numeric field declares one). Accepted annotations:
``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.

Every floor of :mod:`pkd.train` reads these types (models, losses, tasks, the loop), so this
module imports nothing else of it.

Parameters marked *(ours)* follow our reading of the methods (``shared/METHODS.md``), not numbers
published by the papers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Allowed:
    """The values a config field accepts beyond its type (checked by
    :func:`pkd.train.config_load.validate_config`).

    Numeric bounds ``gt`` / ``ge`` / ``lt`` / ``le`` (for a tuple field: each item), ``nonempty``
    and a full-match ``pattern`` (described by ``means``) for a string field.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    nonempty: bool = False
    pattern: str | None = None
    means: str = ""

    def problem(self, value: Any) -> str | None:
        """``"is not > 0"``-style text when ``value`` is outside, else None."""
        if isinstance(value, str):
            if self.nonempty and not value:
                return "is empty (give a value)"
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                return f"is not {self.means or self.pattern}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value):
            return "is not a finite number"
        ok = ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
              and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        return None if ok else f"is not {self.describe()}"

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 1)``, ..."""
        low = (f"({_num(self.gt)}" if self.gt is not None else
               f"[{_num(self.ge)}" if self.ge is not None else None)
        high = (f"{_num(self.lt)})" if self.lt is not None else
                f"{_num(self.le)}]" if self.le is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        if high:
            return f"{'<' if high[-1] == ')' else '<='} {high[:-1]}"
        return "allowed"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def allowed(default: Any, **rule: Any) -> Any:
    """A dataclass field with ``default`` whose values must satisfy
    :class:`Allowed` ``(**rule)``."""
    return field(default=default, metadata={"allowed": Allowed(**rule)})


ENCODER = r"native|hf:.+"  # model.encoder: the native encoder or a transformers checkpoint


@dataclass
class DataConfig:
    # data root (questions / annotations / synthetic benchmark)
    root: str = allowed("data", nonempty=True)
    dataset: Literal["synth", "vqa2", "vqacp2", "gqa"] = "synth"  # which benchmark format to read
    train_split: str = allowed("train", nonempty=True)  # split name used for training
    # split name used for validation (ignored when val_fraction > 0)
    val_split: str = allowed("val", nonempty=True)
    # > 0: validate on this share of the TRAIN images, held out of training (VQA-CP has no val
    # split)
    val_fraction: float = allowed(0.0, ge=0, lt=1)
    test_split: str = allowed("test", nonempty=True)  # split name used for the final test
    regions: str = ""  # path of the `regions` store (region_features, region_geometry, ...)
    foundation_image: str = ""  # path of the `foundation_image` store ("" = not used)
    foundation_text: str = ""  # path of the `foundation_text` store ("" = not used)
    teacher: str | None = None  # path of a precomputed `teacher` store (DistillVLM), optional
    teacher_regions: str = ""  # `regions` store of teacher features on the student's boxes
    # `predicted` store of PKD's frozen stage-1 outputs (pkd extract predicted; "" = run the
    # predictors each step)
    predicted: str = ""
    # an answer enters the vocabulary if it is seen this often in train
    answer_min_count: int = allowed(9, ge=1)
    # question tokens kept (longer questions are truncated)
    max_question_length: int = allowed(14, ge=1)
    # per store: decoded chunks kept across batches (0 = decode every read)
    chunk_cache_mib: int = allowed(256, ge=0)
    # use stores with shards still to extract: their missing items' questions are dropped (counted
    # per split); default: refuse such a store
    allow_incomplete: bool = False


@dataclass
class ModelConfig:
    # UpDn baseline, Oscar-style transformer fusion, or vlm: the pre-trained VL model
    # model.foundation fine-tuned with its own heads (PKD's setting)
    arch: Literal["updn", "fusion", "vlm"] = "updn"
    hidden_size: int = allowed(512, ge=1)  # joint / transformer hidden size H
    num_layers: int = allowed(4, ge=1)  # transformer layers (fusion)
    num_heads: int = allowed(8, ge=1)  # attention heads (fusion)
    intermediate_size: int = allowed(2048, ge=1)  # transformer MLP width (fusion)
    # word position embeddings (fusion); >= max_question_length + 2
    max_positions: int = allowed(64, ge=1)
    # word embedding size (updn; fusion embeds words at hidden_size)
    word_dim: int = allowed(300, ge=1)
    dropout: float = allowed(0.1, ge=0, lt=1)  # dropout in attention / hidden layers
    classifier_dropout: float = allowed(0.5, ge=0, lt=1)  # dropout inside the answer classifier MLP
    use_foundation_features: bool = False  # also feed cached image_embeds / text_embeds
    # with use_foundation_features: the foundation model's embeddings of the real image and question
    # (foundation stores), or PKD's predicted e_v, e_t (data.predicted: the frozen predictors'
    # outputs, cached per split by pkd extract predicted --split)
    foundation_inputs: Literal["real", "predicted"] = "real"
    # arch vlm: the pre-trained model D starts from (LxmertForPreTraining hub id or folder, kept
    # with its masked-LM and matching heads)
    foundation: str = ""
    # arch vlm: model.foundation's weights, or its architecture with random weights (the
    # no-pre-training row)
    init: Literal["pretrained", "scratch"] = "pretrained"
    # arch vlm: answer through the inherited heads (masked word at a cloze, matching on a statement)
    # or a new classifier on the pooled output
    answer_head: Literal["mlm", "new"] = "mlm"
    # arch vlm: heads = only the answer head trains (new: the classifier; mlm: the inherited
    # masked-LM / matching heads, whose decoder is tied to the word embeddings) — the linear-probe
    # row
    trainable: Literal["all", "heads"] = "all"
    # arch vlm: a run folder whose best/ weights D starts from (LP-FT: fine-tune the linear probe)
    init_from: str = ""
    # arch vlm: caption-style cloze prompts (synthetic benchmark) or "question [MASK]" (real data);
    # auto: synth when data.dataset=synth
    prompt: Literal["auto", "synth", "generic"] = "auto"
    # "native" plain-torch encoder, or "hf:PATH" a transformers BERT-family checkpoint (fusion)
    encoder: str = allowed("native", pattern=ENCODER, means="'native' or 'hf:PATH'")


@dataclass
class OptimConfig:
    lr: float = allowed(1e-3, gt=0)  # peak learning rate (AdamW)
    weight_decay: float = allowed(0.01, ge=0)  # decoupled weight decay
    betas: tuple[float, float] = allowed((0.9, 0.999), ge=0, lt=1)  # AdamW betas
    eps: float = allowed(1e-8, gt=0)  # AdamW epsilon
    grad_clip: float = allowed(0.25, ge=0)  # max global gradient norm (0 = off); UpDn used 0.25
    warmup_steps: int = allowed(0, ge=0)  # linear warmup steps from 0 to lr
    schedule: Literal["cosine", "constant"] = "cosine"  # lr after warmup


@dataclass
class RunConfig:
    # run directory: resolved config, checkpoints, logs, results
    out_dir: str = allowed("runs/default", nonempty=True)
    seed: int = allowed(0, ge=0, lt=2**32)  # seed for torch, numpy and python random
    # passes over the training set (ignored when max_steps > 0); 0 with a pre-trained
    # model.arch=vlm: no training, the loaded model is validated and saved as best (the zero-shot
    # row)
    epochs: int = allowed(10, ge=0)
    max_steps: int = allowed(0, ge=0)  # stop after this many optimizer steps (0 = use epochs)
    batch_size: int = allowed(256, ge=1)  # questions per optimizer step
    eval_every: int = allowed(1000, ge=0)  # evaluate on val every N steps (0 = once per epoch)
    # save a checkpoint every N steps (0 = once per epoch)
    checkpoint_every: int = allowed(1000, ge=0)
    # checkpoints kept on disk (older ones are pruned; 0 = keep all)
    keep_last: int = allowed(3, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # "auto" = cuda when available
    amp: bool = False  # bf16/fp16 autocast on cuda
    # batch-reading worker processes (0 = one reader thread in the trainer)
    num_workers: int = allowed(0, ge=0)
    log_every: int = allowed(50, ge=1)  # print / log training metrics every N steps
    # torch CPU threads per process (0 = usable cores - 1, at least 1)
    threads: int = allowed(0, ge=0)


@dataclass
class PKDConfig:
    lambda_mkd: float = allowed(1.0, ge=0)  # weight of the model-level KD loss L_mkd (ours)
    lambda_itm: float = allowed(1.0, ge=0)  # weight of the predictors' ITM loss L_itm (ours)
    lambda_div: float = allowed(1.0, ge=0)  # weight of the feature divergence loss L_div (ours)
    # D(predicted, cached foundation): item-wise kl / cosine / mse, or mmd between the batch's
    # pooled predicted and cached features (distribution matching, METHODS.md alternative) (ours)
    divergence: Literal["kl", "cosine", "mse", "mmd"] = "kl"
    # what L_div compares: the predicted tokens with the cached ones (pooled when predictor_tokens >
    # 0), or the foundation head's unit-norm embeddings of them, D(e_v, e_I) + D(e_t, e_Q): the only
    # part of ṽ, t̃ the CLIP head reads (METHODS.md: the divergence target) (ours)
    divergence_on: Literal["tokens", "embeddings"] = "tokens"
    div_temperature: float = allowed(1.0, gt=0)  # softmax temperature of the "kl" divergence (ours)
    # temperature T of the two-class ITM KL in L_mkd (ours)
    kd_temperature: float = allowed(1.0, gt=0)
    # share of a (shuffled) batch whose predicted pairs L_mkd reads: its first ceil(f*B) items
    # (cost: D runs on 2*ceil(f*B) pairs) (ours)
    mkd_fraction: float = allowed(1.0, gt=0, le=1)
    memory_size: int = allowed(1024, ge=0)  # K, FIFO memory of pooled predicted features (ours)
    # extra learnable memory slots next to the FIFO queue (ours)
    learnable_slots: int = allowed(0, ge=0)
    # transformer layers of each feature predictor P_v, P_t (ours)
    predictor_layers: int = allowed(2, ge=1)
    # predicted tokens P' / L' (0 = as many as the cached store) (ours)
    predictor_tokens: int = allowed(0, ge=0)
    use_predictors: bool = True  # ablation: train / use the cross-modal feature predictors
    use_memory: bool = True  # ablation: fuse the memory into region and word features
    # memory rows: the foundation head's unit-norm embeddings e_v, e_t of the predicted features, or
    # the predicted features themselves (token means of ṽ and t̃, zero-padded to max(d_v, d_t);
    # METHODS.md alternative)
    memory_holds: Literal["embeddings", "features"] = "embeddings"
    # D reads the memory at evaluation too (false: training only, a regulariser; METHODS.md
    # alternative)
    memory_at_test: bool = True
    use_model_kd: bool = True  # ablation: model-level distillation through the ITM head
    # model.arch=vlm (pkd-vlm): L_mkd on D's ITM head only (the paper), or also on its masked-LM
    # head at masked positions of the predicted text (ours: D answers through that head)
    mkd_heads: Literal["itm", "itm+mlm"] = "itm"
    # mkd_heads=itm+mlm: the masked-LM term reads the predicted text with the predicted regions, or
    # with the item's real regions (ours: caption-like text about the real image)
    mkd_vision: Literal["predicted", "real"] = "predicted"
    # mkd_heads=itm+mlm: share of the predicted text tokens replaced by [MASK] (at least one) (ours)
    mkd_mask_share: float = allowed(0.15, gt=0, le=1)
    finetune_predictors: bool = False  # stage 2 also trains predictors with L_itm + L_div
    foundation_model: str = ""  # model dir of the frozen matching head ("" = the store's model)
    predictors: str = ""  # stage-1 (pkd-predictors) checkpoint the stage-2 predictors load
    predictor_hidden: int = allowed(256, ge=1)  # width of the predictors' transformer layers (ours)
    predictor_heads: int = allowed(4, ge=1)  # attention heads of the predictors' layers (ours)
    # a learned null token among the predictors' cross-attention keys, so the attended regions can
    # carry how many match (a softmax average over regions cannot count) (ours)
    predictor_null_key: bool = False
    # both: P_v(q, r), P_t(r, q); cross: P_v(q) image-like features from the question, P_t(r)
    # caption-like text from the regions (METHODS.md alternative)
    predictor_inputs: Literal["both", "cross"] = "both"
    blip_text_entry: Literal["hidden", "embeddings"] = "hidden"  # BLIP ITM input of t~ (ours)
    # D's answer loss: UpDn's soft-score BCE, or LMH's learned mixin with the training prior (PKD as
    # a plug-in on a debiasing base; settings in method.lmh)
    vqa_loss: Literal["bce", "lmh"] = "bce"


@dataclass
class DistillConfig:
    alpha: float = allowed(1.0, ge=0)  # weight of the attention distillation loss L_att (ours)
    beta: float = allowed(1.0, ge=0)  # weight of the token-wise noise contrastive loss L_nce (ours)
    gamma: float = allowed(1.0, ge=0)  # weight of the output distillation loss L_kd (ours)
    tau: float = allowed(0.07, gt=0)  # temperature of L_nce
    # temperature T of L_kd = T^2 BCE(s/T, sigmoid(t/T)) (ours)
    kd_temperature: float = allowed(1.0, gt=0)
    # MoCo-style queue of teacher token vectors (4096 reported best)
    queue_size: int = allowed(4096, ge=1)
    nce_dim: int = allowed(128, ge=1)  # projection size of z_s, z_t in L_nce (ours)
    attention_layers: Literal["last", "uniform"] = "last"  # student<-teacher layer mapping
    online_teacher: bool = False  # run the teacher each step instead of reading the teacher store
    # "aligned": teacher tokens are the student's (teacher regions pooled on the student's boxes;
    # refused otherwise); "index": the unaligned ablation — teacher on its own detector's regions,
    # tokens matched by position (see pkd.train.tasks.distillvlm.match_tokens)
    alignment: Literal["aligned", "index"] = "aligned"
    teacher_model: ModelConfig = field(
        default_factory=lambda: ModelConfig(arch="fusion", hidden_size=768, num_layers=12,
                                            num_heads=12, intermediate_size=3072)
    )  # teacher transformer (online teacher / teacher-adapt)
    teacher_checkpoint: str | None = None  # fine-tuned teacher checkpoint dir (online teacher)


@dataclass
class RUBiConfig:
    # λ_q, weight of the question-only loss L_bce(c_q(q_logits)) (paper: 1)
    q_weight: float = allowed(1.0, ge=0)
    # hidden widths of the question-only MLP c_1 (ours: RUBi's c_1 is an MLP; widths not taken from
    # its code)
    branch_dims: tuple[int, ...] = allowed((1024, 1024), ge=1)
    # the Linear(A, A) c_q on the branch's logits for its own loss (paper: yes)
    end_classifier: bool = True
    # both RUBi terms: soft-score BCE (as UpDn) or soft-target cross-entropy (RUBi's code)
    criterion: Literal["bce", "softmax"] = "bce"


@dataclass
class LMHConfig:
    # w_H of the bias entropy penalty (0.36 reported for VQA-CP; 0 = learned-mixin)
    entropy_weight: float = allowed(0.36, ge=0)
    smooth: bool = True  # learned smoothing t = t_0 + σ(a) of the prior (reference: on)
    # initial a of the learned smoothing (reference: -1)
    smooth_init: float = allowed(-1.0, ge=-20, le=20)
    # t_0, constant smoothing added to p and 1 - p (reference: 0)
    constant_smooth: float = allowed(0.0, ge=0, le=1)
    # ε pseudo-counts per answer in p(a | type) (reference: 0)
    prior_eps: float = allowed(0.0, ge=0)


@dataclass
class LwfConfig:
    # λ of L = L_vqa + λ (L_mlm + L_itm), the foundation model's outputs distilled into D (kd-id,
    # lwf-oracle) (ours)
    weight: float = allowed(1.0, ge=0)
    temperature: float = allowed(1.0, gt=0)  # T of both KL terms (ours)
    # lwf-oracle: caption-image pairs per step from the caption corpus (ours)
    caption_batch: int = allowed(64, ge=1)
    # lwf-oracle: the regions store of the caption images (pkd extract regions --captions)
    caption_regions: str = ""


@dataclass
class MethodConfig:
    name: str = "baseline"  # which method runs: a key of pkd.train.tasks.METHODS
    pkd: PKDConfig = field(default_factory=PKDConfig)  # PKD settings (pkd-predictors, pkd)
    distill: DistillConfig = field(default_factory=DistillConfig)  # DistillVLM settings
    rubi: RUBiConfig = field(default_factory=RUBiConfig)  # RUBi settings (rubi)
    lmh: LMHConfig = field(default_factory=LMHConfig)  # learned-mixin +H settings (lmh)
    # distillation of the foundation model's outputs (kd-id, lwf-oracle)
    lwf: LwfConfig = field(default_factory=LwfConfig)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)  # datasets and feature stores
    model: ModelConfig = field(default_factory=ModelConfig)  # the trained VQA model
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and lr schedule
    run: RunConfig = field(default_factory=RunConfig)  # run directory, steps, device, logging
    method: MethodConfig = field(default_factory=MethodConfig)  # method and its loss weights
