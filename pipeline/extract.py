"""``pkd extract``: the frozen, heavy models run once over a data set into Zarr stores.

Two stages, each a plain function of a typed config:

- :func:`extract_foundation` — the frozen foundation model (CLIP- or BLIP-style) over every image
  (``foundation_images.zarr``: vision tokens + image embedding), every question
  (``foundation_questions.zarr``: text tokens, embedding, token ids) and optionally every caption.
- :func:`extract_regions` — boxes from a detector spec (``given:`` / ``hf:`` / ``detectron2:``) or
  from another store (``boxes_from``, the DistillVLM aligned teacher) and per-box features pooled
  from a backbone (or the detector's own per-box features).

Runs are resumable, shardable (``part``) and scale out on dask (see :mod:`pkd.pipeline.runner`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pkd.cores import usable_cores
from pkd.errors import PkdError
from pkd.pipeline.runner import (
    RunOptions,
    RunReport,
    cached,
    new_session,
    run_stage,
    shard_pool,
)
from pkd.pipeline.sources import SourceConfig, load_source
from pkd.pipeline.stages import FoundationImageStage, FoundationTextStage


@dataclass(frozen=True)
class FoundationRecipe:
    source: SourceConfig  # which data set / splits / images
    model: str  # Hugging Face id or local directory of a CLIP- or BLIP-ITM-style model
    target: str = "images"  # "images" | "questions" | "captions"
    device: str = "cpu"  # torch device
    dtype: str = "float32"  # autocast dtype: "float32" | "float16" | "bfloat16"
    max_text_len: int = 32  # text tokens kept per question / caption
    batch_size: int = 32  # items per forward pass
    attn: str = "eager"  # attention kernel of the foundation model: "eager" | "sdpa"
    decode: str = "draft"  # JPEG decoding: "draft" (scaled down to the model's input size) | "full"
    decode_workers: int = 0  # threads decoding + preprocessing; 0: cores - 1 on CUDA, else 1


@dataclass(frozen=True)
class RegionRecipe:
    source: SourceConfig  # which data set / splits / images
    detector: str | None = None  # "given:PATH" | "hf:MODEL" | "detectron2:CONFIG"
    boxes_from: str | None = None  # take boxes from this regions store instead of a detector
    backbone: str | None = None  # HF vision backbone (id/path) to pool features from
    pooling: str = "mean"  # per box: "mean" of the RoIAlign grid, or "grid:K" cells (C K² dims)
    conf: float | None = None  # detector score threshold (None: 0.2); model detectors only
    iou: float | None = None  # NMS IoU threshold (None: 0.5); model detectors only
    min_boxes: int | None = None  # at least this many boxes per image (None: 10, bottom-up)
    max_boxes: int | None = None  # at most this many boxes per image (= store padding);
    # None: 100 for a detector, exactly K*K for grid:K (a smaller value is refused)
    device: str = "cpu"  # torch device
    batch_size: int = 16  # images per forward pass


@dataclass
class ExtractReport:
    reports: list[RunReport] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Failed items of every store, including those recorded by an earlier (resumed) run."""
        return sum(len(r.failures) + len(r.earlier_failures) for r in self.reports)


def build_foundation_stage(recipe: FoundationRecipe):
    """Load the frozen foundation model and the stage for one target (runs once per process)."""
    from pkd.pipeline.foundation import (  # torch: loaded only when the stage is built
        FoundationSpec,
        load_foundation,
    )

    spec = FoundationSpec(recipe.model, device=recipe.device, dtype=recipe.dtype,
                          max_text_len=recipe.max_text_len, attn=recipe.attn)
    model = cached(spec, load_foundation)  # one model for the image and the text targets
    # the batch size changes numbers (padding, kernels: one float16 step), so resuming with
    # another one is refused like another model
    producer = {**model.provenance(), "stage": f"foundation/{recipe.target}",
                "batch_size": recipe.batch_size}
    source = load_source(recipe.source, with_images=recipe.target == "images")
    if recipe.target == "images":
        if recipe.decode not in ("draft", "full"):
            raise PkdError(f"--decode {recipe.decode!r}: expected draft or full")
        producer["decode"] = recipe.decode  # a draft-decoded JPEG gives other pixels
        return FoundationImageStage(model, source, recipe.batch_size, producer,
                                    decode_workers(recipe), recipe.decode == "draft")
    if recipe.target == "questions":
        return FoundationTextStage(model, source.questions, source.question_ids, "question_id",
                                   recipe.batch_size, producer)
    return FoundationTextStage(model, source.captions, source.caption_ids, "caption_id",
                               recipe.batch_size, producer)


def decode_workers(recipe: FoundationRecipe) -> int:
    """Decode + preprocess threads: as asked, else every core but one when a GPU computes
    (the host is the bottleneck), one beside torch's threads on a CPU."""
    if recipe.decode_workers > 0:
        return recipe.decode_workers
    return max(1, usable_cores() - 1) if recipe.device.startswith("cuda") else 1


def build_region_stage(recipe: RegionRecipe):
    """Build the detector / box source and backbone of a region stage (once per process)."""
    from pkd.pipeline.regions import make_region_stage  # torch: loaded only when the stage is built

    return make_region_stage(recipe, load_source(recipe.source))


def extract_foundation(recipe: FoundationRecipe, out: Path, opts: RunOptions,
                       targets: tuple[str, ...] = ("images", "questions")) -> ExtractReport:
    """Write ``out/foundation_<target>.zarr`` for each target (one dask pool for all)."""
    report, session = ExtractReport(), new_session()
    with shard_pool(opts) as pool:
        for target in targets:
            r = replace(recipe, target=target)
            store = Path(out) / f"foundation_{target}.zarr"
            report.reports.append(run_stage(r, build_foundation_stage, store, opts,
                                            f"foundation {target}", pool, session))
    return report


def extract_regions(recipe: RegionRecipe, out: Path, opts: RunOptions) -> ExtractReport:
    """Write the regions store at ``out``."""
    with shard_pool(opts) as pool:
        return ExtractReport([run_stage(recipe, build_region_stage, Path(out), opts, "regions",
                                        pool)])
