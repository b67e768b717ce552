"""``pkd pretrain --data DIR --out MODEL_DIR``: pre-train the demo foundation model on captions.

Parses the options into :class:`pkd.train.pretrain.PretrainConfig`, calls ``pretrain(cfg)`` and
prints the retrieval / probe table (the same numbers are in ``MODEL_DIR/pretrain_metrics.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Data = Annotated[Path, typer.Option(help="synthetic benchmark folder (captions.json, images/)")]
Out = Annotated[Path, typer.Option(help="model folder to write (save_pretrained layout)")]
Family = Annotated[str, typer.Option(help="clip (CLIPModel) | blip (BlipForImageTextRetrieval)")]
Int = Annotated[int | None, typer.Option()]
Float = Annotated[float | None, typer.Option()]


def pretrain(data: Data, out: Out, family: Family = "clip",
             epochs: Annotated[int | None, typer.Option(help="passes over the images")] = None,
             seed: Annotated[int, typer.Option(help="seed of everything random")] = 0,
             batch_size: Int = None, lr: Float = None, hidden: Int = None, layers: Int = None,
             heads: Int = None, patch_size: Int = None, proj_dim: Int = None,
             threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
             ) -> None:
    """Pre-train a tiny CLIP/BLIP on the caption corpus (ITC, + ITM for BLIP) and save it."""
    from dataclasses import replace

    from transformers.utils import logging as hf_logging

    from pkd.train.pretrain import ModelSize, PretrainConfig
    from pkd.train.pretrain import pretrain as run

    def given(**values):
        return {k: v for k, v in values.items() if v is not None}

    size = replace(ModelSize(), **given(hidden=hidden, layers=layers, heads=heads,
                                        patch_size=patch_size, proj_dim=proj_dim))
    cfg = PretrainConfig(data, out, family=family, size=size, seed=seed,
                         **given(epochs=epochs, batch_size=batch_size, lr=lr, threads=threads))
    hf_logging.disable_progress_bar()
    metrics = run(cfg)
    print_metrics(metrics)
    typer.echo(f"model written to {out} ({metrics['seconds']:.0f} s)")


def print_metrics(metrics: dict) -> None:
    """One table: retrieval R@1/R@5 and the attribute probes, each against chance."""
    from rich.console import Console
    from rich.table import Table

    r = metrics["retrieval"]
    table = Table(title=f"{metrics['family']}: {r['images']} held-out images",
                  caption=f"final training loss {metrics['epochs'][-1]['loss']:.3f}")
    for name, justify in (("metric", "left"), ("%", "right"), ("chance %", "right")):
        table.add_column(name, justify=justify)
    for key, label in (("i2t", "image->text"), ("t2i", "text->image")):
        for k in (1, 5):
            table.add_row(f"{label} R@{k}", f"{r[f'{key}_r{k}']:.1f}", f"{r[f'chance_r{k}']:.1f}")
    for name, probe in metrics["probes"].items():
        value = "n/a" if probe["accuracy"] is None else f"{probe['accuracy']:.1f}"
        table.add_row(f"{name} probe (n={probe['n']})", value, f"{probe['chance']:.1f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
