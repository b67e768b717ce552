"""Small training fixtures: a tiny synthetic benchmark and a regions store built from its boxes.

The regions store is written directly with :class:`pkd.stores.StoreWriter` (features = a fixed
random projection of each object's colour/shape/size one-hot plus noise), so trainer tests do not
depend on running a model for extraction, yet the features carry the answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pkd.data.synth import SynthConfig, generate
from pkd.stores import ArraySpec, StoreSpec, StoreWriter

FEATURE_DIM = 16
MAX_REGIONS = 4


def make_benchmark(root: Path, seed: int = 0) -> Path:
    cfg = SynthConfig(seed=seed, train_images=60, val_images=16, test_images=16,
                      test_iid_images=16, caption_images=4, pilot_scenes=400)
    generate(cfg, root)
    return root


def make_regions_store(data: Path, out: Path, seed: int = 0, producer: str = "fixture",
                       own_detector: bool = False) -> Path:
    """A `regions` store for every image in ``data/boxes.json``; ``own_detector``: another
    detector's view of the same images — the boxes in reverse order plus a whole-image box
    (up to ``MAX_REGIONS + 1`` regions), so no region token lines up with the given boxes'."""
    max_regions = MAX_REGIONS + 1 if own_detector else MAX_REGIONS
    coco = json.loads((data / "boxes.json").read_text())
    by_image: dict[int, list] = {int(im["id"]): [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[int(ann["image_id"])].append(ann)
    names = sorted({f"{a['attributes']['color']}/{c['name']}/{a['attributes']['size']}"
                    for a in coco["annotations"] for c in coco["categories"]
                    if c["id"] == a["category_id"]})
    rng = np.random.default_rng(seed)
    code = rng.normal(size=(len(names), FEATURE_DIM)).astype(np.float32)
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    ids = sorted(by_image)
    spec = StoreSpec(
        kind="regions", key="image_id",
        arrays=(ArraySpec("boxes", (max_regions, 4), "float32"),
                ArraySpec("region_features", (max_regions, FEATURE_DIM), "float16"),
                ArraySpec("region_geometry", (max_regions, 6), "float32"),
                ArraySpec("num_regions", (), "int32")),
        producer={"model": producer}, dims={"max_regions": max_regions, "feature_dim": FEATURE_DIM},
        items_per_chunk=8, items_per_shard=32)
    with StoreWriter(out, spec, ids) as writer:
        for k in range(writer.n_shards):
            shard = writer.shard_ids(k)
            arrays = {a.name: np.zeros((len(shard), *a.item_shape), a.dtype) for a in spec.arrays}
            for i, image_id in enumerate(shard):
                anns = by_image[int(image_id)][:MAX_REGIONS]
                if own_detector:
                    anns = anns[::-1]
                for j, a in enumerate(anns):
                    x, y, w, h = a["bbox"]
                    key = (f"{a['attributes']['color']}/{cats[a['category_id']]}/"
                           f"{a['attributes']['size']}")
                    arrays["boxes"][i, j] = (x, y, x + w, y + h)
                    arrays["region_features"][i, j] = code[names.index(key)] + 0.1 * rng.normal(
                        size=FEATURE_DIM)
                    arrays["region_geometry"][i, j] = (x / 64, y / 64, (x + w) / 64, (y + h) / 64,
                                                       w / 64, h / 64)
                if own_detector:  # a whole-image proposal after the objects
                    j = len(anns)
                    arrays["boxes"][i, j] = (0, 0, 64, 64)
                    arrays["region_features"][i, j] = rng.normal(size=FEATURE_DIM)
                    arrays["region_geometry"][i, j] = (0, 0, 1, 1, 1, 1)
                arrays["num_regions"][i] = len(anns) + own_detector
            writer.write_shard(k, arrays)
    return out


def train_overrides(data: Path, regions: Path, out: Path, **extra) -> list[str]:
    """Dotted overrides of a tiny, fast, dropout-free UpDn run."""
    base = {
        "data.root": data, "data.regions": regions, "data.answer_min_count": 1,
        "model.hidden_size": 32, "model.word_dim": 16, "model.dropout": 0.0,
        "model.classifier_dropout": 0.0, "run.out_dir": out, "run.batch_size": 16,
        "run.max_steps": 8, "run.eval_every": 4, "run.checkpoint_every": 4, "run.log_every": 2,
        "run.device": "cpu", "optim.lr": 0.003,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def sharpen(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Larger query/key weights: BERT init (std 0.02) gives near-uniform maps and L_att ~ 1e-7."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for lin in (layer.attention.query, layer.attention.key):
                lin.weight.copy_(0.5 * torch.randn(lin.weight.shape, generator=g))
    return model


def benchmark_and_regions(tmp_path_factory, name: str = "bench"):
    """(data folder, regions store) of a small synthetic benchmark: the module-scoped ``bench``
    fixture of the training tests."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(name)
    data = make_benchmark(root / "data")
    return data, make_regions_store(data, root / "regions.zarr")
