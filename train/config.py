"""Typed training configuration: dataclasses, YAML loading, dotted ``key=value`` overrides.

``pkd train CONFIG.yaml model.hidden_size=256 optim.lr=1e-4`` becomes
``load_config("CONFIG.yaml", ["model.hidden_size=256", "optim.lr=1e-4"])``:

1. the YAML file is read with ``yaml.safe_load`` (no YAML tags that run code) and merged over the
   dataclass defaults;
2. each override ``a.b.c=VALUE`` is merged on top, ``VALUE`` parsed with ``yaml.safe_load`` too
   (so ``true``, ``3``, ``[0.9, 0.98]``, ``null`` mean what they mean in YAML);
3. every value is checked against the field's annotation. An unknown key raises
   :class:`PkdError` naming the file (or the override) and the key, with close-match suggestions;
   a value of the wrong type names the field and the expected type;
4. the finished config is checked as a whole (:func:`validate_config`, also run by the trainer
   on a config built in code): each field's allowed values, declared with the field
   (``lr: float = allowed(1e-3, gt=0)``, an :class:`Allowed` in its metadata), then the rules
   between fields (heads dividing the width, foundation stores for foundation features, ...).
   A value outside is one line naming the source, the key, the value and the range, e.g.
   ``override 'optim.lr=-1': optim.lr: -1.0 is not > 0``, before the run folder is touched.

The code is generic over dataclasses: a new field only needs its annotation and default (and,
if it is a number, its allowed range: a test checks that every numeric field declares one).
Accepted annotations: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.
Coercions (nothing else is coerced): an ``int`` is accepted for a ``float`` field, and so is a
numeric string such as ``1e-4`` (PyYAML reads ``1e-4`` without a dot as a string); a YAML list is
accepted for a ``tuple`` field.

Parameters marked *(ours)* follow our reading of the methods (``shared/METHODS.md``), not numbers
published by the papers.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pkd.errors import PkdError


@dataclass(frozen=True)
class Allowed:
    """The values a config field accepts beyond its type (checked by :func:`validate_config`).

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
    """A dataclass field with ``default`` whose values must satisfy :class:`Allowed` ``(**rule)``."""
    return field(default=default, metadata={"allowed": Allowed(**rule)})


ENCODER = r"native|hf:.+"  # model.encoder: the native encoder or a transformers checkpoint


@dataclass
class DataConfig:
    root: str = allowed("data", nonempty=True)  # data root (questions / annotations / synthetic benchmark)
    dataset: Literal["synth", "vqa2", "vqacp2", "gqa"] = "synth"  # which benchmark format to read
    train_split: str = allowed("train", nonempty=True)  # split name used for training
    val_split: str = allowed("val", nonempty=True)  # split name used for validation (ignored when val_fraction > 0)
    val_fraction: float = allowed(0.0, ge=0, lt=1)  # > 0: validate on this share of the TRAIN images, held out of training (VQA-CP has no val split)
    test_split: str = allowed("test", nonempty=True)  # split name used for the final test
    regions: str = ""  # path of the `regions` store (region_features, region_geometry, ...)
    foundation_image: str = ""  # path of the `foundation_image` store ("" = not used)
    foundation_text: str = ""  # path of the `foundation_text` store ("" = not used)
    teacher: str | None = None  # path of a precomputed `teacher` store (DistillVLM), optional
    teacher_regions: str = ""  # `regions` store of teacher features on the student's boxes
    predicted: str = ""  # `predicted` store of PKD's frozen stage-1 outputs (pkd extract predicted; "" = run the predictors each step)
    answer_min_count: int = allowed(9, ge=1)  # an answer enters the vocabulary if it is seen this often in train
    max_question_length: int = allowed(14, ge=1)  # question tokens kept (longer questions are truncated)
    chunk_cache_mib: int = allowed(256, ge=0)  # per store: decoded chunks kept across batches (0 = decode every read)
    allow_incomplete: bool = False  # use stores with shards still to extract: their missing items' questions are dropped (counted per split); default: refuse such a store


@dataclass
class ModelConfig:
    arch: Literal["updn", "fusion", "vlm"] = "updn"  # UpDn baseline, Oscar-style transformer fusion, or vlm: the pre-trained VL model model.foundation fine-tuned with its own heads (PKD's setting)
    hidden_size: int = allowed(512, ge=1)  # joint / transformer hidden size H
    num_layers: int = allowed(4, ge=1)  # transformer layers (fusion)
    num_heads: int = allowed(8, ge=1)  # attention heads (fusion)
    intermediate_size: int = allowed(2048, ge=1)  # transformer MLP width (fusion)
    max_positions: int = allowed(64, ge=1)  # word position embeddings (fusion); >= max_question_length + 2
    word_dim: int = allowed(300, ge=1)  # word embedding size (updn; fusion embeds words at hidden_size)
    dropout: float = allowed(0.1, ge=0, lt=1)  # dropout in attention / hidden layers
    classifier_dropout: float = allowed(0.5, ge=0, lt=1)  # dropout inside the answer classifier MLP
    use_foundation_features: bool = False  # also feed cached image_embeds / text_embeds
    foundation_inputs: Literal["real", "predicted"] = "real"  # with use_foundation_features: the foundation model's embeddings of the real image and question (foundation stores), or PKD's predicted e_v, e_t (data.predicted: the frozen predictors' outputs, cached per split by pkd extract predicted --split)
    foundation: str = ""  # arch vlm: the pre-trained model D starts from (LxmertForPreTraining hub id or folder, kept with its masked-LM and matching heads)
    init: Literal["pretrained", "scratch"] = "pretrained"  # arch vlm: model.foundation's weights, or its architecture with random weights (the no-pre-training row)
    answer_head: Literal["mlm", "new"] = "mlm"  # arch vlm: answer through the inherited heads (masked word at a cloze, matching on a statement) or a new classifier on the pooled output
    trainable: Literal["all", "heads"] = "all"  # arch vlm: heads = only the answer head trains (new: the classifier; mlm: the inherited masked-LM / matching heads, whose decoder is tied to the word embeddings) — the linear-probe row
    init_from: str = ""  # arch vlm: a run folder whose best/ weights D starts from (LP-FT: fine-tune the linear probe)
    prompt: Literal["auto", "synth", "generic"] = "auto"  # arch vlm: caption-style cloze prompts (synthetic benchmark) or "question [MASK]" (real data); auto: synth when data.dataset=synth
    encoder: str = allowed("native", pattern=ENCODER, means="'native' or 'hf:PATH'")  # "native" plain-torch encoder, or "hf:PATH" a transformers BERT-family checkpoint (fusion)


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
    out_dir: str = allowed("runs/default", nonempty=True)  # run directory: resolved config, checkpoints, logs, results
    seed: int = allowed(0, ge=0, lt=2**32)  # seed for torch, numpy and python random
    epochs: int = allowed(10, ge=0)  # passes over the training set (ignored when max_steps > 0); 0 with a pre-trained model.arch=vlm: no training, the loaded model is validated and saved as best (the zero-shot row)
    max_steps: int = allowed(0, ge=0)  # stop after this many optimizer steps (0 = use epochs)
    batch_size: int = allowed(256, ge=1)  # questions per optimizer step
    eval_every: int = allowed(1000, ge=0)  # evaluate on val every N steps (0 = once per epoch)
    checkpoint_every: int = allowed(1000, ge=0)  # save a checkpoint every N steps (0 = once per epoch)
    keep_last: int = allowed(3, ge=0)  # checkpoints kept on disk (older ones are pruned; 0 = keep all)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # "auto" = cuda when available
    amp: bool = False  # bf16/fp16 autocast on cuda
    num_workers: int = allowed(0, ge=0)  # batch-reading worker processes (0 = one reader thread in the trainer)
    log_every: int = allowed(50, ge=1)  # print / log training metrics every N steps
    threads: int = allowed(0, ge=0)  # torch CPU threads per process (0 = usable cores - 1, at least 1)


@dataclass
class PKDConfig:
    lambda_mkd: float = allowed(1.0, ge=0)  # weight of the model-level KD loss L_mkd (ours)
    lambda_itm: float = allowed(1.0, ge=0)  # weight of the predictors' ITM loss L_itm (ours)
    lambda_div: float = allowed(1.0, ge=0)  # weight of the feature divergence loss L_div (ours)
    divergence: Literal["kl", "cosine", "mse", "mmd"] = "kl"  # D(predicted, cached foundation): item-wise kl / cosine / mse, or mmd between the batch's pooled predicted and cached features (distribution matching, METHODS.md alternative) (ours)
    divergence_on: Literal["tokens", "embeddings"] = "tokens"  # what L_div compares: the predicted tokens with the cached ones (pooled when predictor_tokens > 0), or the foundation head's unit-norm embeddings of them, D(e_v, e_I) + D(e_t, e_Q): the only part of ṽ, t̃ the CLIP head reads (METHODS.md: the divergence target) (ours)
    div_temperature: float = allowed(1.0, gt=0)  # softmax temperature of the "kl" divergence (ours)
    kd_temperature: float = allowed(1.0, gt=0)  # temperature T of the two-class ITM KL in L_mkd (ours)
    mkd_fraction: float = allowed(1.0, gt=0, le=1)  # share of a (shuffled) batch whose predicted pairs L_mkd reads: its first ceil(f*B) items (cost: D runs on 2*ceil(f*B) pairs) (ours)
    memory_size: int = allowed(1024, ge=0)  # K, FIFO memory of pooled predicted features (ours)
    learnable_slots: int = allowed(0, ge=0)  # extra learnable memory slots next to the FIFO queue (ours)
    predictor_layers: int = allowed(2, ge=1)  # transformer layers of each feature predictor P_v, P_t (ours)
    predictor_tokens: int = allowed(0, ge=0)  # predicted tokens P' / L' (0 = as many as the cached store) (ours)
    use_predictors: bool = True  # ablation: train / use the cross-modal feature predictors
    use_memory: bool = True  # ablation: fuse the memory into region and word features
    memory_holds: Literal["embeddings", "features"] = "embeddings"  # memory rows: the foundation head's unit-norm embeddings e_v, e_t of the predicted features, or the predicted features themselves (token means of ṽ and t̃, zero-padded to max(d_v, d_t); METHODS.md alternative)
    memory_at_test: bool = True  # D reads the memory at evaluation too (false: training only, a regulariser; METHODS.md alternative)
    use_model_kd: bool = True  # ablation: model-level distillation through the ITM head
    mkd_heads: Literal["itm", "itm+mlm"] = "itm"  # model.arch=vlm (pkd-vlm): L_mkd on D's ITM head only (the paper), or also on its masked-LM head at masked positions of the predicted text (ours: D answers through that head)
    mkd_vision: Literal["predicted", "real"] = "predicted"  # mkd_heads=itm+mlm: the masked-LM term reads the predicted text with the predicted regions, or with the item's real regions (ours: caption-like text about the real image)
    mkd_mask_share: float = allowed(0.15, gt=0, le=1)  # mkd_heads=itm+mlm: share of the predicted text tokens replaced by [MASK] (at least one) (ours)
    finetune_predictors: bool = False  # stage 2 also trains predictors with L_itm + L_div
    foundation_model: str = ""  # model dir of the frozen matching head ("" = the store's model)
    predictors: str = ""  # stage-1 (pkd-predictors) checkpoint the stage-2 predictors load
    predictor_hidden: int = allowed(256, ge=1)  # width of the predictors' transformer layers (ours)
    predictor_heads: int = allowed(4, ge=1)  # attention heads of the predictors' layers (ours)
    predictor_null_key: bool = False  # a learned null token among the predictors' cross-attention keys, so the attended regions can carry how many match (a softmax average over regions cannot count) (ours)
    predictor_inputs: Literal["both", "cross"] = "both"  # both: P_v(q, r), P_t(r, q); cross: P_v(q) image-like features from the question, P_t(r) caption-like text from the regions (METHODS.md alternative)
    blip_text_entry: Literal["hidden", "embeddings"] = "hidden"  # BLIP ITM input of t~ (ours)
    vqa_loss: Literal["bce", "lmh"] = "bce"  # D's answer loss: UpDn's soft-score BCE, or LMH's learned mixin with the training prior (PKD as a plug-in on a debiasing base; settings in method.lmh)


@dataclass
class DistillConfig:
    alpha: float = allowed(1.0, ge=0)  # weight of the attention distillation loss L_att (ours)
    beta: float = allowed(1.0, ge=0)  # weight of the token-wise noise contrastive loss L_nce (ours)
    gamma: float = allowed(1.0, ge=0)  # weight of the output distillation loss L_kd (ours)
    tau: float = allowed(0.07, gt=0)  # temperature of L_nce
    kd_temperature: float = allowed(1.0, gt=0)  # temperature T of L_kd = T^2 BCE(s/T, sigmoid(t/T)) (ours)
    queue_size: int = allowed(4096, ge=1)  # MoCo-style queue of teacher token vectors (4096 reported best)
    nce_dim: int = allowed(128, ge=1)  # projection size of z_s, z_t in L_nce (ours)
    attention_layers: Literal["last", "uniform"] = "last"  # student<-teacher layer mapping
    online_teacher: bool = False  # run the teacher each step instead of reading the teacher store
    alignment: Literal["aligned", "index"] = "aligned"  # "aligned": teacher tokens are the student's (teacher regions pooled on the student's boxes; refused otherwise); "index": the unaligned ablation — teacher on its own detector's regions, tokens matched by position (see pkd.train.tasks.distillvlm.match_tokens)
    teacher_model: ModelConfig = field(
        default_factory=lambda: ModelConfig(arch="fusion", hidden_size=768, num_layers=12,
                                            num_heads=12, intermediate_size=3072)
    )  # teacher transformer (online teacher / teacher-adapt)
    teacher_checkpoint: str | None = None  # fine-tuned teacher checkpoint dir (online teacher)


@dataclass
class RUBiConfig:
    q_weight: float = allowed(1.0, ge=0)  # λ_q, weight of the question-only loss L_bce(c_q(q_logits)) (paper: 1)
    branch_dims: tuple[int, ...] = allowed((1024, 1024), ge=1)  # hidden widths of the question-only MLP c_1 (ours: RUBi's c_1 is an MLP; widths not taken from its code)
    end_classifier: bool = True  # the Linear(A, A) c_q on the branch's logits for its own loss (paper: yes)
    criterion: Literal["bce", "softmax"] = "bce"  # both RUBi terms: soft-score BCE (as UpDn) or soft-target cross-entropy (RUBi's code)


@dataclass
class LMHConfig:
    entropy_weight: float = allowed(0.36, ge=0)  # w_H of the bias entropy penalty (0.36 reported for VQA-CP; 0 = learned-mixin)
    smooth: bool = True  # learned smoothing t = t_0 + σ(a) of the prior (reference: on)
    smooth_init: float = allowed(-1.0, ge=-20, le=20)  # initial a of the learned smoothing (reference: -1)
    constant_smooth: float = allowed(0.0, ge=0, le=1)  # t_0, constant smoothing added to p and 1 - p (reference: 0)
    prior_eps: float = allowed(0.0, ge=0)  # ε pseudo-counts per answer in p(a | type) (reference: 0)


@dataclass
class LwfConfig:
    weight: float = allowed(1.0, ge=0)  # λ of L = L_vqa + λ (L_mlm + L_itm), the foundation model's outputs distilled into D (kd-id, lwf-oracle) (ours)
    temperature: float = allowed(1.0, gt=0)  # T of both KL terms (ours)
    caption_batch: int = allowed(64, ge=1)  # lwf-oracle: caption-image pairs per step from the caption corpus (ours)
    caption_regions: str = ""  # lwf-oracle: the regions store of the caption images (pkd extract regions --captions)


@dataclass
class MethodConfig:
    name: str = "baseline"  # which method runs: a key of pkd.train.tasks.METHODS
    pkd: PKDConfig = field(default_factory=PKDConfig)  # PKD settings (pkd-predictors, pkd)
    distill: DistillConfig = field(default_factory=DistillConfig)  # DistillVLM settings
    rubi: RUBiConfig = field(default_factory=RUBiConfig)  # RUBi settings (rubi)
    lmh: LMHConfig = field(default_factory=LMHConfig)  # learned-mixin +H settings (lmh)
    lwf: LwfConfig = field(default_factory=LwfConfig)  # distillation of the foundation model's outputs (kd-id, lwf-oracle)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)  # datasets and feature stores
    model: ModelConfig = field(default_factory=ModelConfig)  # the trained VQA model
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and lr schedule
    run: RunConfig = field(default_factory=RunConfig)  # run directory, steps, device, logging
    method: MethodConfig = field(default_factory=MethodConfig)  # method and its loss weights


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then each dotted ``key=value``;
    the result is checked as a whole by :func:`validate_config` (a later override may mend an
    earlier value). Errors name the file or override that set the offending key."""
    cfg, origin = TrainConfig(), {}
    if path is not None:
        data = _read_yaml(Path(path))
        cfg = merge_dict(cfg, data, source=str(path))
        origin.update(dict.fromkeys(_dotted_keys(data), str(path)))
    for text in overrides:
        data = _override_to_dict(text)
        cfg = merge_dict(cfg, data, source=f"override '{text}'")
        origin.update(dict.fromkeys(_dotted_keys(data), f"override '{text}'"))
    validate_config(cfg, origin, default_source=str(path) if path is not None else "config")
    return cfg


def config_from_dict(data: dict, source: str = "<config>") -> TrainConfig:
    """A validated :class:`TrainConfig` from a (possibly partial) nested dict."""
    cfg = merge_dict(TrainConfig(), data, source=source)
    validate_config(cfg, default_source=source)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (tuples become lists, ready for JSON / YAML)."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config atomically as JSON (``.json``) or YAML (``.yaml`` / ``.yml``)."""
    path = Path(path)
    data = config_to_dict(cfg)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise PkdError(f"{path}: config files end in .json, .yaml or .yml")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def merge_dict(base: Any, data: Any, source: str, where: str = "") -> Any:
    """A copy of dataclass ``base`` with the values of nested dict ``data`` checked and set."""
    if not isinstance(data, dict):
        raise PkdError(f"{source}: {where or 'config'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(type(base))
    names = [f.name for f in dataclasses.fields(base)]
    changes = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise PkdError(f"{source}: unknown key '{dotted}'{_suggest(str(key), names, where)}")
        changes[key] = _coerce(value, hints[key], getattr(base, key), source, dotted)
    return dataclasses.replace(base, **changes)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise PkdError(f"{path}: cannot read config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PkdError(f"{path}: invalid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PkdError(f"{path}: a config file is a mapping of sections, got {_kind(data)}")
    return data


def _dotted_keys(data: Any, prefix: str = "") -> list[str]:
    """Every section and leaf key of a nested dict, dotted (``a``, ``a.b``, ...)."""
    keys = []
    if isinstance(data, dict):
        for k, v in data.items():
            dotted = f"{prefix}{k}"
            keys += [dotted, *_dotted_keys(v, dotted + ".")]
    return keys


_OVERRIDE = re.compile(r"^([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)=(.*)$", re.DOTALL)


def _override_to_dict(text: str) -> dict:
    """``a.b.c=VALUE`` -> ``{"a": {"b": {"c": yaml.safe_load(VALUE)}}}``."""
    match = _OVERRIDE.match(text.strip())
    if match is None:
        raise PkdError(f"override '{text}': expected dotted key=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(match.group(2)) if match.group(2).strip() else ""
    except yaml.YAMLError:
        raise PkdError(f"override '{text}': value is not valid YAML") from None
    for part in reversed(match.group(1).split(".")):
        value = {part: value}
    return value


# ----------------------------------------------------------------------------- value checks


def validate_config(cfg: TrainConfig, origin: dict[str, str] | None = None,
                    default_source: str = "config") -> TrainConfig:
    """``cfg`` when every value is allowed; else a one-line :class:`PkdError`
    ``"<source>: <key>: <value> is not <allowed>"`` (e.g. ``optim.lr: -1.0 is not > 0``) for
    the first offending key.

    Each field's :class:`Allowed` (its metadata) is checked, walking every nested section, then
    the rules between fields (:func:`_cross_field_problems`). ``origin`` maps dotted keys to the
    file or override that set them (the message's source; ``default_source`` otherwise).
    """
    problems = _field_problems(cfg) or _cross_field_problems(cfg)
    if problems:
        key, text = problems[0]
        raise PkdError(f"{_origin_of(key, origin or {}, default_source)}: {key}: {text}")
    return cfg


def _field_problems(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, problem) of each value outside its field's :class:`Allowed`."""
    out = []
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _field_problems(value, key + ".")
            continue
        rule = f.metadata.get("allowed")
        if rule is None:
            continue
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, v in items:
            text = rule.problem(v)
            if text is not None:
                out.append((key if i is None else f"{key}[{i}]", f"{v!r} {text}"))
    return out


def _cross_field_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Rules between fields (each field is already within its own range); the method's own
    rules come from its :class:`~pkd.train.tasks.method.Method` (``problems``)."""
    from pkd.train.tasks import METHODS  # the tasks import this module

    r, d, m = cfg.run, cfg.data, cfg.method
    method = METHODS.get(m.name)
    if method is None:
        return [("method.name", f"{m.name!r} is not one of {', '.join(METHODS)}")]
    out = []
    zero_shot = cfg.model.arch == "vlm" and cfg.model.init == "pretrained"
    if r.max_steps == 0 and r.epochs == 0 and not zero_shot:
        out.append(("run.epochs", "0 is not >= 1 (with run.max_steps=0 the run counts epochs; "
                                  "0 = the zero-shot row needs a pre-trained model.arch=vlm)"))
    for key, mc in method.built_models(cfg):
        if mc.arch == "fusion" and mc.hidden_size % mc.num_heads:
            out.append((f"{key}.num_heads", f"{mc.num_heads} does not divide "
                                            f"{key}.hidden_size={mc.hidden_size}"))
        if mc.arch == "fusion" and mc.max_positions < d.max_question_length + 2:
            out.append((f"{key}.max_positions",
                        f"{mc.max_positions} is not >= data.max_question_length + 2 = "
                        f"{d.max_question_length + 2} ([CLS], the question, [SEP])"))
        if mc.arch == "vlm" and not mc.foundation:
            out.append((f"{key}.foundation", "is empty: arch vlm needs the pre-trained model "
                        "(an LxmertForPreTraining hub id or folder)"))
        if mc.arch == "vlm" and mc.use_foundation_features:
            out.append((f"{key}.use_foundation_features", "true does not apply to arch vlm "
                        "(the model is the foundation model)"))
        if mc.foundation_inputs == "predicted" and not mc.use_foundation_features:
            out.append((f"{key}.foundation_inputs", "'predicted' needs "
                        f"{key}.use_foundation_features=true (they are D's foundation inputs)"))
        if mc.use_foundation_features and mc.foundation_inputs == "predicted" and not d.predicted:
            out.append((f"{key}.foundation_inputs", "'predicted' needs data.predicted (a store "
                        "of pkd extract predicted, frozen predictors)"))
        for store in ("foundation_image", "foundation_text"):
            if mc.use_foundation_features and mc.foundation_inputs == "real" \
                    and not getattr(d, store):
                out.append((f"{key}.use_foundation_features",
                             f"true needs data.{store} (a store of pkd extract foundation)"))
    return out + method.problems(cfg)


def _origin_of(key: str, origin: dict[str, str], default: str) -> str:
    """The source that set ``key`` or the nearest section above it."""
    parts = key.split("[", 1)[0].split(".")
    for n in range(len(parts), 0, -1):
        source = origin.get(".".join(parts[:n]))
        if source is not None:
            return source
    return default


# ----------------------------------------------------------------------------- type checks


def _coerce(value: Any, tp: Any, current: Any, source: str, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (merged into ``current`` for dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        base = current if dataclasses.is_dataclass(current) else tp()
        return merge_dict(base, value, source, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, current, source, where)
            except PkdError:
                continue
        raise _type_error(value, tp, source, where)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _type_error(value, tp, source, where)
    if origin in (tuple, list):
        return _coerce_sequence(value, tp, source, where)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(value, tp, source, where)
        return {k: _coerce(v, args[1], None, source, f"{where}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, source, where)


def _coerce_sequence(value: Any, tp: Any, source: str, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _type_error(value, tp, source, where)
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        items = [_coerce(v, args[0], None, source, f"{where}[{i}]") for i, v in enumerate(value)]
    elif len(value) == len(args):
        items = [_coerce(v, a, None, source, f"{where}[{i}]") for i, (v, a) in
                 enumerate(zip(value, args, strict=True))]
    else:
        raise _type_error(value, tp, source, where)
    return list(items) if origin is list else tuple(items)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce_scalar(value: Any, tp: Any, source: str, where: str) -> Any:
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config field {where}: unsupported annotation {tp!r}")
    raise _type_error(value, tp, source, where)


def _type_error(value: Any, tp: Any, source: str, where: str) -> PkdError:
    return PkdError(f"{source}: {where}: expected {_type_name(tp)}, got {_kind(value)}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return f"a mapping of str to {_type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _suggest(key: str, names: list[str], where: str) -> str:
    """`` (did you mean 'x'?)`` from the same section, else from any section."""
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if close:
        prefix = f"{where}." if where else ""
        return " (did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?)"
    leaves = _all_keys(TrainConfig())
    close = [d for d in leaves if difflib.get_close_matches(key, [d.rsplit(".", 1)[-1]],
                                                               cutoff=0.8)][:3]
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)" if close else ""


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        dotted = f"{prefix}{f.name}"
        keys.append(dotted)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_all_keys(value, dotted + "."))
    return keys


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
