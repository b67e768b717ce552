"""Pre-train a region backbone the way bottom-up-attention's detector was trained:
``pretrain_regions(cfg) -> metrics``.

Bottom-up features (Anderson et al. 2018, "Bottom-Up and Top-Down Attention for Image Captioning
and VQA", §3.1) are the pooled box features of a Faster R-CNN trained on Visual Genome with two
heads on every RoI: a class head over objects and an *attribute* head. A random backbone has
neither signal (a linear probe reads an object's shape at 40.8% from a random tiny ResNet,
chance 25%). This stage trains a ``transformers`` ``ResNetModel`` on a detection corpus
(:mod:`pkd.train.pretrain.detection`) with those two heads and saves it with
``save_pretrained`` plus its PIL image processor, so ``pkd extract regions --backbone OUT``
loads it like any HF backbone.

Per step (B images):

1. pixels as the extraction makes them (:func:`~pkd.train.pretrain.detection.decode_pixels`),
   map ``F = backbone(pixels).last_hidden_state`` (B, C, Hf, Wf);
2. RoIs per image (Fast R-CNN sampling, Girshick 2015): the ground-truth boxes, jittered
   copies (foreground when IoU >= 0.5 with their object, background otherwise) and random
   background boxes (IoU < 0.3 with every object), :func:`sample_rois`;
3. features ``v = pool_regions(F_i, rois)`` (N, C): RoIAlign + mean, **the very function the
   extraction calls** (:func:`pkd.roi.pool_regions`), so training and extraction see the same
   features;
4. :class:`RegionHeads` and :func:`region_losses`:
   ``L = CE(W_c v + b_c, y) + λ Σ_g CE(W_g ReLU(W_h [v; E(y)] + b_h), a_g)`` over foreground
   RoIs for the attribute groups g (colour, size), y in 0..K (0 = background).

No box regression and no RPN: proposals are given boxes (or a simulated detector) at extraction.
AdamW, linear warmup + cosine decay. Determinism: one seed gives identical weights (same thread
count; ``threads=1`` for bitwise reproducibility).

Output ``OUT/`` (staging folder renamed into place, :mod:`pkd.train.pretrain.save`): the
backbone's ``config.json`` + ``model.safetensors``, ``preprocessor_config.json`` and
``pretrain_metrics.json`` ``{stage: "regions", size, config, corpus, epochs: [{epoch, loss,
class_loss, attribute_loss}], val: {class_accuracy, <group>_accuracy, objects}, seconds,
cpu_seconds}``. ``config.json`` also records ``pkd_region_pretrain`` = the recipe and the corpus
(file hash, counts, vocabularies).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from pkd.cores import torch_threads, usable_cores
from pkd.errors import PkdError
from pkd.progress import track
from pkd.roi import box_iou, pool_regions
from pkd.train.pretrain.config import config_dict
from pkd.train.pretrain.detection import (
    DetectionSplit,
    check_same_vocabulary,
    decode_pixels,
    load_detection_split,
)
from pkd.train.pretrain.loop import adamw
from pkd.train.pretrain.save import check_out_dir, save_model
from pkd.train.schedule import make_scheduler

RECIPE = ("bottom-up (Anderson et al. 2018): object class head + attribute head (on the pooled "
          "feature and the class embedding) over RoIAlign-mean pooled box features; "
          "Fast R-CNN RoI sampling (gt, jittered, background); no RPN, no box regression")


@dataclass(frozen=True)
class RegionBackboneSize:
    embedding: int  # stem channels (7x7 stride-2 conv + stride-2 max-pool: stride 4)
    hidden: tuple[int, ...]  # channels of each ResNet stage (stages after the first: stride 2)
    depths: tuple[int, ...]  # basic blocks per stage
    image_side: int  # the image processor's shortest_edge (images resized to it)
    attribute_hidden: int  # width of the attribute head's hidden layer
    class_embedding: int  # width of the class embedding fed to the attribute head
    epochs: int  # default passes over the corpus (RegionPretrainConfig.epochs = 0)


SIZES = {  # feature dim = hidden[-1]; maps of 64 px images: student 16 x 16, teacher 8 x 8
    "student": RegionBackboneSize(32, (64,), (2,), 64, 128, 32, epochs=2),
    "teacher": RegionBackboneSize(32, (64, 128), (2, 2), 64, 256, 64, epochs=4),
}


@dataclass
class RegionPretrainConfig:
    data_dir: Path  # folder holding detection/instances_{train,val}.json and detection/images/
    out_dir: Path  # backbone folder to write (save_pretrained layout)
    size: str = "student"  # a key of SIZES
    epochs: int = 0  # passes over the training images (0 = the size's preset)
    batch_size: int = 32  # images per step
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 1e-4  # AdamW weight decay (matrices only)
    warmup_fraction: float = 0.05  # share of steps with linear warmup, cosine decay after
    jitter_per_box: int = 1  # jittered copies of each ground-truth box per epoch
    jitter_scale: float = 0.1  # std of the jitter, as a fraction of the box side
    background_per_image: int = 2  # random background RoIs per image per epoch
    attribute_weight: float = 1.0  # λ of the attribute loss
    output_size: int = 7  # RoIAlign grid (the extraction's default)
    sampling_ratio: int = -1  # RoIAlign samples per bin (-1 adaptive, the extraction's default)
    seed: int = 0  # seeds init, RoI sampling and data order
    threads: int = 0  # torch CPU threads (0 = every usable core)

    def validate(self) -> None:
        """Raise PkdError naming the first unusable field."""
        checks = [
            (self.size in SIZES, f"size must be one of {', '.join(SIZES)}, not {self.size!r}"),
            (self.epochs >= 0 and self.batch_size >= 1, "need epochs >= 0 and batch_size >= 1"),
            (self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.jitter_per_box >= 0 and self.background_per_image >= 0,
             "jitter_per_box and background_per_image must be >= 0"),
            (self.jitter_scale >= 0 and self.attribute_weight >= 0,
             "jitter_scale and attribute_weight must be >= 0"),
            (self.output_size >= 1 and self.threads >= 0, "need output_size >= 1, threads >= 0"),
        ]
        for ok, problem in checks:
            if not ok:
                raise PkdError(f"RegionPretrainConfig: {problem}")


# --- model ------------------------------------------------------------------------------------

def build_backbone(size: RegionBackboneSize, seed: int):
    """``(ResNetModel, ConvNextImageProcessorPil)``: basic blocks, no stride in the first stage,
    so the map is ``image_side / 4 / 2^(stages-1)`` cells a side."""
    from transformers import (  # transformers: loaded only when a backbone is built
        ConvNextImageProcessorPil,
        ResNetConfig,
        ResNetModel,
    )

    config = ResNetConfig(embedding_size=size.embedding, hidden_sizes=list(size.hidden),
                          depths=list(size.depths), layer_type="basic",
                          downsample_in_first_stage=False)
    torch.manual_seed(seed)
    processor = ConvNextImageProcessorPil(size={"shortest_edge": size.image_side})
    return ResNetModel(config), processor


class RegionHeads(nn.Module):
    """Bottom-up's two heads on pooled box features ``v`` (N, C) (Anderson et al. 2018):

    - class: ``W_c v + b_c`` -> (N, K + 1), class 0 = background;
    - attributes: ``h = ReLU(W_h [v; E(y)] + b_h)`` with ``E`` a learned embedding of the
      (ground-truth at training) class y, then one ``W_g h + b_g`` -> (N, A_g) per group g.
    """

    def __init__(self, dim: int, num_classes: int, groups: dict[str, int], hidden: int,
                 class_embedding: int):
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes + 1)
        self.class_embed = nn.Embedding(num_classes + 1, class_embedding)
        self.attribute_hidden = nn.Linear(dim + class_embedding, hidden)
        self.attributes = nn.ModuleDict({g: nn.Linear(hidden, n) for g, n in groups.items()})

    def forward(self, feats: Tensor, classes: Tensor) -> dict:
        """``{"class_logits": (N, K+1), "attribute_logits": {g: (N, A_g)}}``."""
        joint = torch.cat([feats, self.class_embed(classes)], dim=1)  # (N, C + e)
        hidden = torch.relu(self.attribute_hidden(joint))  # (N, hidden)
        return {"class_logits": self.classifier(feats),
                "attribute_logits": {g: head(hidden) for g, head in self.attributes.items()}}


def region_losses(out: dict, labels: Tensor, attributes: dict[str, Tensor],
                  attribute_weight: float = 1.0) -> dict[str, Tensor]:
    """``loss = class_loss + λ · attribute_loss``:
    ``class_loss = mean_r CE(class_logits_r, y_r)`` over all RoIs;
    ``attribute_loss = Σ_g mean_{r: y_r > 0} CE(attribute_logits_g,r, a_g,r)`` over the
    foreground RoIs (0 when there are none)."""
    class_loss = nn.functional.cross_entropy(out["class_logits"], labels)
    foreground = labels > 0
    attribute_loss = out["class_logits"].new_zeros(())
    if foreground.any():
        for group, logits in out["attribute_logits"].items():
            attribute_loss = attribute_loss + nn.functional.cross_entropy(
                logits[foreground], attributes[group][foreground])
    return {"loss": class_loss + attribute_weight * attribute_loss, "class_loss": class_loss,
            "attribute_loss": attribute_loss}


# --- RoIs -------------------------------------------------------------------------------------

def sample_rois(boxes: Tensor, labels: Tensor, attributes: dict[str, Tensor], width: float,
                height: float, cfg: RegionPretrainConfig, generator: torch.Generator
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """RoIs ``(R, 4)``, classes ``(R,)`` and attributes ``{g: (R,)}`` of one image: the
    ground-truth boxes; ``jitter_per_box`` copies of each moved by ``N(0, jitter_scale)`` times
    its side (its object's class when IoU >= 0.5, background 0 otherwise); and up to
    ``background_per_image`` random boxes (side U(0.1, 0.5) of the image) with IoU < 0.3
    against every object (class 0)."""
    side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (N, 4) w h w h
    jit = boxes.repeat(cfg.jitter_per_box, 1)
    jit = jit + torch.randn(jit.shape, generator=generator) * cfg.jitter_scale * side.repeat(
        cfg.jitter_per_box, 1)
    limit = torch.tensor([width, height, width, height])
    jit = torch.minimum(jit.clamp(min=0), limit)
    source = torch.arange(len(boxes)).repeat(cfg.jitter_per_box)
    kept = box_iou(jit, boxes)[torch.arange(len(jit)), source] >= 0.5  # (N * j,)
    count = 4 * cfg.background_per_image
    wh = (0.1 + 0.4 * torch.rand((count, 2), generator=generator)) * limit[:2]
    xy = torch.rand((count, 2), generator=generator) * (limit[:2] - wh)
    cand = torch.cat([xy, xy + wh], 1)
    if len(boxes):
        cand = cand[box_iou(cand, boxes).max(1).values < 0.3]
    cand = cand[: cfg.background_per_image]
    rois = torch.cat([boxes, jit, cand])
    classes = torch.cat([labels, torch.where(kept, labels[source], 0),
                         torch.zeros(len(cand), dtype=torch.long)])
    attrs = {g: torch.cat([a, a[source], torch.zeros(len(cand), dtype=torch.long)])
             for g, a in attributes.items()}
    return rois, classes, attrs


# --- training ---------------------------------------------------------------------------------

def batch_features(backbone, pixels: list[Tensor], boxes: list[Tensor],
                   sizes: list[tuple[float, float]], cfg: RegionPretrainConfig) -> Tensor:
    """Pooled features (sum N_i, C) of each image's boxes, via :func:`pkd.roi.pool_regions`
    (images of one batch share one pixel size)."""
    fmap = backbone(pixel_values=torch.stack(pixels)).last_hidden_state  # (B, C, Hf, Wf)
    return pool_regions(fmap, boxes, sizes, cfg.output_size, cfg.sampling_ratio)  # (R, C)


def epoch_batches(pixels: list[Tensor], batch_size: int, generator: torch.Generator
                  ) -> list[list[int]]:
    """Image indices of each step: a seeded order, batches within one pixel size."""
    order = torch.randperm(len(pixels), generator=generator).tolist()
    by_size: dict[tuple, list[int]] = {}
    for i in order:
        by_size.setdefault(tuple(pixels[i].shape), []).append(i)
    batches = [ids[k:k + batch_size] for ids in by_size.values()
               for k in range(0, len(ids), batch_size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]


def fit_regions(backbone, heads: RegionHeads, split: DetectionSplit, pixels: list[Tensor],
                cfg: RegionPretrainConfig) -> list[dict]:
    """Train backbone + heads in place; per-epoch mean losses ``[{epoch, loss, ...}]``."""
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = len(epoch_batches(pixels, cfg.batch_size, torch.Generator().manual_seed(cfg.seed)))
    optimizer = adamw([backbone, heads], cfg)
    total = cfg.epochs * steps
    scheduler = make_scheduler(optimizer, round(cfg.warmup_fraction * total), total, "cosine")
    backbone.train()
    heads.train()
    history = []
    for epoch in track(range(cfg.epochs), description="region pre-training", every_s=15.0):
        sums: dict[str, float] = {}
        for batch in epoch_batches(pixels, cfg.batch_size, generator):
            rois = [sample_rois(torch.from_numpy(split.boxes[i]),
                                torch.from_numpy(split.labels[i]),
                                {g: torch.from_numpy(v[i]) for g, v in split.attributes.items()},
                                *split.sizes[i], cfg, generator) for i in batch]
            feats = batch_features(backbone, [pixels[i] for i in batch], [r[0] for r in rois],
                                   [split.sizes[i] for i in batch], cfg)  # (R, C)
            labels = torch.cat([r[1] for r in rois])
            attrs = {g: torch.cat([r[2][g] for r in rois]) for g in split.attributes}
            parts = region_losses(heads(feats, labels), labels, attrs, cfg.attribute_weight)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
    return history


@torch.no_grad()
def evaluate_regions(backbone, heads: RegionHeads, split: DetectionSplit, pixels: list[Tensor],
                     cfg: RegionPretrainConfig) -> dict:
    """Head accuracies (percent) on the split's ground-truth boxes: the class (argmax over the
    object classes) and each attribute group given that predicted class."""
    backbone.eval()
    heads.eval()
    correct: dict[str, int] = {}
    objects = 0
    for batch in epoch_batches(pixels, cfg.batch_size, torch.Generator().manual_seed(0)):
        boxes = [torch.from_numpy(split.boxes[i]) for i in batch]
        feats = batch_features(backbone, [pixels[i] for i in batch], boxes,
                               [split.sizes[i] for i in batch], cfg)
        labels = torch.cat([torch.from_numpy(split.labels[i]) for i in batch])
        predicted = heads.classifier(feats)[:, 1:].argmax(1) + 1
        out = heads(feats, predicted)
        hits = {"class": predicted == labels}
        for g, logits in out["attribute_logits"].items():
            truth = torch.cat([torch.from_numpy(split.attributes[g][i]) for i in batch])
            hits[g] = logits.argmax(1) == truth
        for name, hit in hits.items():
            correct[name] = correct.get(name, 0) + int(hit.sum())
        objects += len(labels)
    return {**{f"{k}_accuracy": 100.0 * v / max(objects, 1) for k, v in correct.items()},
            "objects": objects}


# --- the stage --------------------------------------------------------------------------------

def corpus_record(train: DetectionSplit, val: DetectionSplit) -> dict:
    """What the saved config records about the corpus."""
    return {"path": str(train.path.parent.resolve()),
            "instances_train_sha256": hashlib.sha256(train.path.read_bytes()).hexdigest(),
            "instances_val_sha256": hashlib.sha256(val.path.read_bytes()).hexdigest(),
            "train_images": len(train.image_ids), "val_images": len(val.image_ids),
            "train_objects": int(sum(len(b) for b in train.boxes)),
            "categories": train.categories, "attribute_names": train.attribute_names}


def pretrain_regions(cfg: RegionPretrainConfig) -> dict:
    """Load the corpus, build, train, evaluate and save the region backbone (module doc);
    returns the metrics also written to ``OUT/pretrain_metrics.json``."""
    cfg.validate()
    size = SIZES[cfg.size]
    cfg = replace(cfg, epochs=cfg.epochs or size.epochs)
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir)
    train = load_detection_split(cfg.data_dir, "train")
    val = load_detection_split(cfg.data_dir, "val")
    check_same_vocabulary(train, val)
    with torch_threads(cfg.threads or usable_cores()):
        work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        try:
            start, cpu = time.monotonic(), time.process_time()
            backbone, processor = build_backbone(size, cfg.seed)
            heads = RegionHeads(size.hidden[-1], len(train.categories),
                                {g: len(v) for g, v in train.attribute_names.items()},
                                size.attribute_hidden, size.class_embedding)
            train_px = decode_pixels(train.files, processor)
            history = fit_regions(backbone, heads, train, train_px, cfg)
            metrics = {"stage": "regions", "size": cfg.size, "config": config_dict(cfg),
                       "corpus": corpus_record(train, val), "epochs": history,
                       "val": evaluate_regions(backbone, heads, val,
                                               decode_pixels(val.files, processor), cfg)}
            metrics["seconds"] = round(time.monotonic() - start, 1)
            metrics["cpu_seconds"] = round(time.process_time() - cpu, 1)
            backbone.config.pkd_region_pretrain = {
                "recipe": RECIPE, "size": cfg.size, "config": config_dict(cfg),
                "corpus": metrics["corpus"], "pooling": "roi_align_mean",
                "output_size": cfg.output_size, "sampling_ratio": cfg.sampling_ratio}
            processor.save_pretrained(work / "init")
            save_model(backbone, work / "init", work / "model", out_dir, metrics)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return metrics


__all__ = ["RECIPE", "SIZES", "RegionBackboneSize", "RegionHeads", "RegionPretrainConfig",
           "batch_features", "build_backbone", "corpus_record", "epoch_batches",
           "evaluate_regions", "fit_regions", "pretrain_regions",
           "region_losses", "sample_rois"]
