"""``pkd demo``: the whole chain on the built-in synthetic benchmark, end to end on a CPU.

synthetic data -> pre-train the demo foundation model on the unbiased captions -> extract
foundation + region features into stores -> train each method (per seed) -> evaluate on the
shifted ``test`` (OOD) and the in-distribution ``test_iid`` split -> ``results.json``, a table
and ``results.png``. Every stage is resumable: re-running the command skips what is done.

``results.json``: ``{"elapsed_s": float, "rows": [{"method", "seed", "split", "overall",
"perAnswerType"}]}`` (percent, official metric).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pkd.data.synth import SynthConfig

SPLITS = ("test", "test_iid")


@dataclass
class DemoConfig:
    out: Path  # everything goes here: data/, foundation/, stores/, runs/, results.json
    seeds: int = 1  # training seeds per method
    synth: SynthConfig = field(default_factory=SynthConfig)  # the benchmark
    pretrain_epochs: int = 40  # caption pre-training epochs of the demo foundation model
    train_epochs: int = 12  # VQA training epochs per run
    batch_size: int = 64  # VQA training batch size
    methods: tuple[str, ...] = ("baseline",)  # rows of the results table


def _stage(label: str):
    print(f"[demo] {label}", flush=True)


def make_data(cfg: DemoConfig) -> Path:
    from pkd.data.synth import generate

    data = cfg.out / "data"
    if not (data / "synth_meta.json").is_file():
        _stage("generating the synthetic benchmark")
        generate(cfg.synth, data)
    return data


def make_foundation(cfg: DemoConfig, data: Path) -> Path:
    from pkd.train.pretrain import PretrainConfig, pretrain

    model = cfg.out / "foundation"
    if not (model / "pretrain_metrics.json").is_file():
        _stage("pre-training the demo foundation model on the caption corpus")
        pretrain(PretrainConfig(data_dir=data, out_dir=model, epochs=cfg.pretrain_epochs))
    return model


def make_backbone(cfg: DemoConfig) -> Path:
    """The demo's region-feature backbone: a small ResNet from a config (random, fixed seed)."""
    from pkd.hf.tiny_models import build_tiny_resnet

    path = cfg.out / "backbone"
    if not (path / "config.json").is_file():
        build_tiny_resnet(path, image_size=cfg.synth.image_size, hidden=32, seed=0)
    return path


def make_stores(cfg: DemoConfig, data: Path, model: Path, backbone: Path) -> Path:
    from pkd.pipeline.extract import (
        FoundationRecipe,
        RegionRecipe,
        extract_foundation,
        extract_regions,
    )
    from pkd.pipeline.runner import RunOptions
    from pkd.pipeline.sources import SourceConfig

    stores, opts = cfg.out / "stores", RunOptions(items_per_shard=256)
    source = SourceConfig(root=data)
    _stage("extracting foundation features (images, questions)")
    extract_foundation(FoundationRecipe(source, str(model)), stores, opts)
    _stage("extracting region features (given boxes, backbone pooled)")
    recipe = RegionRecipe(source, detector=f"given:{data / 'boxes.json'}", backbone=str(backbone),
                          min_boxes=1, max_boxes=cfg.synth.max_objects)
    extract_regions(recipe, stores / "regions.zarr", opts)
    return stores


def train_config(cfg: DemoConfig, method: str, seed: int, data: Path, stores: Path):
    from pkd.train.config import load_config

    overrides = {
        "data.root": data, "data.regions": stores / "regions.zarr", "data.answer_min_count": 1,
        "model.hidden_size": 256, "model.word_dim": 64, "run.seed": seed,
        "run.out_dir": cfg.out / "runs" / f"{method}-seed{seed}", "run.epochs": cfg.train_epochs,
        "run.batch_size": cfg.batch_size, "run.eval_every": 0, "run.checkpoint_every": 0,
        "run.log_every": 20, "run.device": "auto", "optim.lr": 0.002, "method.name": method,
    }
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def run_method(cfg: DemoConfig, method: str, seed: int, data: Path, stores: Path) -> list[dict]:
    from pkd.train.loop import fit
    from pkd.train.predict import evaluate_checkpoint

    tcfg = train_config(cfg, method, seed, data, stores)
    run = Path(tcfg.run.out_dir)
    if not (run / "metrics_test_iid.json").is_file():
        _stage(f"training {method} (seed {seed})")
        fit(tcfg, resume=(run / "ckpt" / "latest.json").is_file())
    rows = []
    for split in SPLITS:
        metrics, _ = evaluate_checkpoint(run, split)
        rows.append({"method": method, "seed": seed, "split": split,
                     "overall": metrics["overall"], "perAnswerType": metrics["perAnswerType"]})
    return rows


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or finish) the demo; write ``results.json`` + ``results.png``; return the results."""
    start = time.monotonic()
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = make_data(cfg)
    model = make_foundation(cfg, data)
    stores = make_stores(cfg, data, model, make_backbone(cfg))
    rows = [row for method in cfg.methods for seed in range(cfg.seeds)
            for row in run_method(cfg, method, seed, data, stores)]
    results = {"elapsed_s": round(time.monotonic() - start, 1), "rows": rows}
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2))
    plot_results(results, cfg.out / "results.png")
    return results


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (method, split)."""
    import numpy as np

    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["split"]), []).append(r["overall"])
    return [{"method": m, "split": s, "mean": float(np.mean(v)), "std": float(np.std(v)),
             "n": len(v)} for (m, s), v in groups.items()]


def plot_results(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results["rows"])
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(methods), 3.2))
    for j, split in enumerate(SPLITS):
        cells = [next((s for s in summary if s["method"] == m and s["split"] == split), None)
                 for m in methods]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
        ax.bar(xs, [c["mean"] if c else 0 for c in cells], 0.36,
               yerr=[c["std"] if c else 0 for c in cells], label=split)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("VQA accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
