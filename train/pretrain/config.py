"""What to pre-train: :class:`PretrainConfig` (data, output, optimisation) and :class:`ModelSize`
(the tiny architecture), validated before anything is read or written."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pkd.errors import PkdError

FAMILIES = ("clip", "blip")


@dataclass
class ModelSize:
    hidden: int = 128  # width of both towers
    layers: int = 3  # transformer layers of each tower
    heads: int = 4  # attention heads
    patch_size: int = 8  # ViT patch side in pixels (64 px images -> 64 patches)
    proj_dim: int = 64  # joint embedding width (CLIP projection_dim, BLIP image_text_hidden_size)
    vocab_size: int = 400  # tokenizer vocabulary (the synthetic corpus needs ~100)
    max_positions: int = 64  # text positions of the model (>= the longest tokenized text)


@dataclass
class PretrainConfig:
    data_dir: Path  # folder with captions.json, images/ and (optional) *_questions.json
    out_dir: Path  # model folder to write (save_pretrained layout)
    family: str = "clip"  # "clip" (CLIPModel) | "blip" (BlipForImageTextRetrieval)
    size: ModelSize = field(default_factory=ModelSize)  # architecture of the tiny model
    epochs: int = 30  # passes over the training images (one random caption each)
    batch_size: int = 128  # images per step (in-batch negatives)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # AdamW weight decay
    warmup_fraction: float = 0.05  # share of the steps with linear warmup, cosine decay after
    itc_temperature: float = 0.07  # BLIP's fixed ITC temperature τ (CLIP learns its own)
    itm_weight: float = 1.0  # weight of the BLIP ITM loss
    # weight of L_swap: each image vs its caption and that caption's swapped negative (needs
    # swap_negatives > 0)
    swap_weight: float = 0.0
    # weight of L_tag: the image embedding predicts the (colour, shape) pairs its captions name
    # (pkd.train.pretrain.tags; 0 = off)
    tag_weight: float = 0.0
    # stage A: epochs training the image tower as a tagger of its captions' objects before the ITC
    # (pkd.train.pretrain.tag_pretrain; 0 = off)
    tag_epochs: int = 0
    # stage B: the ITC trains with the image tower frozen (LiT; needs tag_epochs > 0)
    lock_vision: bool = False
    # attribute-swapped negative captions drawn per caption (one per step joins the ITC; 0 = plain
    # in-batch ITC)
    swap_negatives: int = 0
    eval_fraction: float = 0.1  # share of caption images held out for evaluation
    seed: int = 0  # seeds init, held-out split, data order and hard-negative sampling
    # torch CPU threads (0 = every usable core: the data sit in RAM, no reader thread; 1 for bitwise
    # reproducibility)
    threads: int = 0

    def validate(self) -> None:
        """Raise PkdError naming the first unusable field."""
        checks = [
            (self.family in FAMILIES, f"family must be 'clip' or 'blip', not {self.family!r}"),
            (self.epochs >= 1 and self.batch_size >= 2, "need epochs >= 1 and batch_size >= 2"),
            (0 < self.eval_fraction < 1, "eval_fraction must be in (0, 1)"),
            (self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.threads >= 0 and self.itc_temperature > 0, "need threads >= 0, τ > 0"),
            (self.swap_negatives >= 0, "swap_negatives must be >= 0"),
            (self.tag_weight >= 0, "tag_weight must be >= 0"),
            (self.tag_epochs >= 0, "tag_epochs must be >= 0"),
            (not self.lock_vision or self.tag_epochs > 0,
             "lock_vision needs tag_epochs > 0 (a locked random tower learns nothing)"),
            (self.swap_weight >= 0 and (self.swap_weight == 0 or self.swap_negatives > 0),
             "swap_weight must be >= 0 and needs swap_negatives > 0"),
            (self.size.hidden % self.size.heads == 0, "hidden must be a multiple of heads"),
        ]
        for ok, problem in checks:
            if not ok:
                raise PkdError(f"PretrainConfig: {problem}")


def config_dict(cfg: PretrainConfig) -> dict:
    """``cfg`` as a nested dict with paths as strings (for the metrics JSON)."""
    return _jsonable(asdict(cfg))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, Path) else obj
