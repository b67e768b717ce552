"""``pkd pretrain``: pre-train the demo's models.

- ``pkd pretrain --data DIR --out MODEL_DIR``: the foundation model on captions. Parses the
  options into :class:`pkd.train.pretrain.PretrainConfig`, calls ``pretrain(cfg)`` and prints the
  retrieval / probe table (the same numbers are in ``MODEL_DIR/pretrain_metrics.json``).
- ``pkd pretrain --family lxmert --regions STORE --data DIR --out MODEL_DIR``: the foundation model
  F0, a tiny LXMERT, on the captions and their images' region features (MLM + ITM), via
  :func:`pkd.train.pretrain.lxmert.pretrain_lxmert`; prints the held-out ITM / MLM table.
- ``pkd pretrain regions --data DIR --out BACKBONE_DIR [--size student|teacher]``: a region
  backbone on the detection corpus with bottom-up's object + attribute heads
  (:func:`pkd.train.pretrain.regions.pretrain_regions`), for ``pkd extract regions --backbone``.

``pretrain`` is a command group whose callback is the foundation command, so ``pkd pretrain
--data ... --out ...`` works as before.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

Data = Annotated[Path, typer.Option(help="synthetic benchmark folder (captions.json, images/)")]
Out = Annotated[Path, typer.Option(help="model folder to write (save_pretrained layout)")]
Family = Annotated[str, typer.Option(help="clip (CLIPModel) | blip (BlipForImageTextRetrieval) | "
                                           "lxmert (LxmertForPreTraining; needs --regions)")]
Int = Annotated[int | None, typer.Option()]
Float = Annotated[float | None, typer.Option()]
SwapNegatives = Annotated[int | None, typer.Option(
    help="attribute-swapped negative captions per caption (0 = plain in-batch ITC)")]
SwapWeight = Annotated[float | None, typer.Option(
    help="weight of L_swap (image vs its caption and the swapped one; needs --swap-negatives)")]
TagWeight = Annotated[float | None, typer.Option(
    help="weight of L_tag (the image embedding predicts its captions' colour-shape pairs)")]
TagEpochs = Annotated[int | None, typer.Option(
    help="stage A: epochs training the image tower as a tagger of its captions' objects")]
LockVision = Annotated[bool | None, typer.Option(
    help="stage B: the ITC with the image tower frozen (LiT; needs --tag-epochs)")]
Regions = Annotated[Path | None, typer.Option(
    help="lxmert: regions store holding the caption images (pkd extract regions --captions)")]
LxmertLayers = Annotated[int | None, typer.Option(help="lxmert: language / cross / region layers")]
LxmertShare = Annotated[float | None, typer.Option(help="lxmert: see LxmertPretrainConfig")]


app = typer.Typer(help="Pre-train the foundation model (options below) or a region backbone "
                        "(`pkd pretrain regions`).", add_completion=False)
OptData = Annotated[Path | None, typer.Option(help="synthetic benchmark folder (captions.json, "
                                                   "images/)")]
OptOut = Annotated[Path | None, typer.Option(help="model folder to write (save_pretrained "
                                                  "layout)")]


@app.callback(invoke_without_command=True)
def foundation(ctx: typer.Context, data: OptData = None, out: OptOut = None,
               family: Family = "clip",
               epochs: Annotated[int | None, typer.Option(help="passes over the images")] = None,
               seed: Annotated[int, typer.Option(help="seed of everything random")] = 0,
               batch_size: Int = None, lr: Float = None, hidden: Int = None, layers: Int = None,
               heads: Int = None, patch_size: Int = None, proj_dim: Int = None,
               threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
               swap_negatives: SwapNegatives = None, swap_weight: SwapWeight = None,
               tag_weight: TagWeight = None, tag_epochs: TagEpochs = None,
               lock_vision: LockVision = None, regions: Regions = None,
               l_layers: LxmertLayers = None, x_layers: LxmertLayers = None,
               r_layers: LxmertLayers = None, attribute_mask_probability: LxmertShare = None,
               itm_negative_share: LxmertShare = None, hard_negative_share: LxmertShare = None,
               ) -> None:
    """Pre-train a tiny CLIP/BLIP (ITC, + ITM for BLIP) or LXMERT (MLM + ITM on region
    features) on the caption corpus and save it."""
    if ctx.invoked_subcommand is not None:
        return
    for value, name in ((data, "--data"), (out, "--out")):
        if value is None:
            raise typer.BadParameter("missing (needed by the foundation pre-training)",
                                     param_hint=name)
    lxmert_only = {"--regions": regions, "--l-layers": l_layers, "--x-layers": x_layers,
                   "--r-layers": r_layers,
                   "--attribute-mask-probability": attribute_mask_probability,
                   "--itm-negative-share": itm_negative_share,
                   "--hard-negative-share": hard_negative_share}
    if family == "lxmert":
        _refuse({"--layers": layers, "--patch-size": patch_size, "--proj-dim": proj_dim,
                 "--swap-negatives": swap_negatives, "--swap-weight": swap_weight,
                 "--tag-weight": tag_weight, "--tag-epochs": tag_epochs,
                 "--lock-vision": lock_vision}, "clip / blip")
        given = _given(epochs=epochs, batch_size=batch_size, lr=lr, threads=threads,
                       attribute_mask_probability=attribute_mask_probability,
                       itm_negative_share=itm_negative_share,
                       hard_negative_share=hard_negative_share)
        size = _given(hidden=hidden, heads=heads, l_layers=l_layers, x_layers=x_layers,
                      r_layers=r_layers)
        pretrain_lxmert(data, out, regions, seed, size, given)
        return
    _refuse(lxmert_only, "lxmert")
    pretrain(data, out, family, epochs, seed, batch_size, lr, hidden, layers, heads, patch_size,
             proj_dim, threads, swap_negatives, swap_weight, tag_weight, tag_epochs, lock_vision)


def pretrain(data: Data, out: Out, family: Family = "clip",
             epochs: Annotated[int | None, typer.Option(help="passes over the images")] = None,
             seed: Annotated[int, typer.Option(help="seed of everything random")] = 0,
             batch_size: Int = None, lr: Float = None, hidden: Int = None, layers: Int = None,
             heads: Int = None, patch_size: Int = None, proj_dim: Int = None,
             threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
             swap_negatives: SwapNegatives = None, swap_weight: SwapWeight = None,
             tag_weight: TagWeight = None, tag_epochs: TagEpochs = None,
             lock_vision: LockVision = None,
             ) -> None:
    """Pre-train a tiny CLIP/BLIP on the caption corpus (ITC, + ITM for BLIP) and save it."""
    from transformers.utils import logging as hf_logging  # transformers: only when the command runs

    from pkd.train.pretrain import (  # torch: loaded only when the command runs
        ModelSize,
        PretrainConfig,
    )
    from pkd.train.pretrain import pretrain as run  # torch: loaded only when the command runs

    def given(**values):
        return {k: v for k, v in values.items() if v is not None}

    size = replace(ModelSize(), **given(hidden=hidden, layers=layers, heads=heads,
                                        patch_size=patch_size, proj_dim=proj_dim))
    cfg = PretrainConfig(data, out, family=family, size=size, seed=seed,
                         **given(epochs=epochs, batch_size=batch_size, lr=lr, threads=threads,
                                 swap_negatives=swap_negatives, swap_weight=swap_weight,
                                 tag_weight=tag_weight, tag_epochs=tag_epochs,
                                 lock_vision=lock_vision))
    hf_logging.disable_progress_bar()
    metrics = run(cfg)
    print_metrics(metrics)
    typer.echo(f"model written to {out} ({metrics['seconds']:.0f} s)")


def print_metrics(metrics: dict) -> None:
    """One table: retrieval R@1/R@5 and the attribute probes, each against chance."""
    from rich.console import Console  # rich: loaded only when a table prints
    from rich.table import Table  # rich: loaded only when a table prints

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


def _given(**values) -> dict:
    """The options that were given (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def _refuse(options: dict, family: str) -> None:
    """BadParameter for the first given option of another family."""
    for name, value in options.items():
        if value is not None:
            raise typer.BadParameter(f"an option of --family {family} only", param_hint=name)


def pretrain_lxmert(data: Path, out: Path, regions: Path | None, seed: int, size: dict,
                    given: dict) -> None:
    """Pre-train the tiny LXMERT F0 (MLM + ITM) on the captions' region features and save it."""
    from transformers.utils import logging as hf_logging  # transformers: only when the command runs

    from pkd.train.pretrain.lxmert import (  # torch: loaded only when the command runs
        LxmertPretrainConfig,
        LxmertSize,
    )
    from pkd.train.pretrain.lxmert import pretrain_lxmert as run  # torch: only when pretraining

    if regions is None:
        raise typer.BadParameter("missing (--family lxmert reads region features)",
                                 param_hint="--regions")
    cfg = LxmertPretrainConfig(data, regions, out, size=LxmertSize(**size), seed=seed, **given)
    hf_logging.disable_progress_bar()
    metrics = run(cfg)
    print_lxmert_metrics(metrics)
    typer.echo(f"model written to {out} ({metrics['seconds']:.0f} s)")


def print_lxmert_metrics(metrics: dict) -> None:
    """One table: held-out ITM (binary, pairwise, held-out pairs) and MLM word accuracies."""
    from rich.console import Console  # rich: loaded only when a table prints
    from rich.table import Table  # rich: loaded only when a table prints

    h = metrics["heldout"]
    table = Table(title=f"lxmert: {h['captions']} held-out captions of {h['images']} images",
                  caption=f"final training loss {metrics['epochs'][-1]['loss']:.3f}")
    for name, justify in (("metric", "left"), ("%", "right"), ("chance %", "right")):
        table.add_column(name, justify=justify)

    def row(label: str, value: float | None, chance: float) -> None:
        table.add_row(label, "n/a" if value is None else f"{value:.1f}", f"{chance:.1f}")

    row("ITM caption vs swapped (binary)", h["itm_accuracy"], 50.0)
    row("ITM caption > swapped (pairwise)", h["itm_pairwise"], 50.0)
    row(f"  held-out colour-shape pairs (n={h['heldout_pairs_n']})", h["heldout_pairs"], 50.0)
    groups = [k.removeprefix("mlm_").removesuffix("_accuracy") for k in h
              if k.startswith("mlm_") and k.endswith("_accuracy")]
    for group in groups:
        row(f"MLM {group} word (n={h[f'mlm_{group}_n']})", h[f"mlm_{group}_accuracy"],
            h[f"mlm_{group}_chance"])
    Console().print(table)


@app.command("regions")
def regions(data: Annotated[Path, typer.Option(help="folder with detection/instances_*.json")],
            out: Annotated[Path, typer.Option(help="backbone folder to write")],
            size: Annotated[str, typer.Option(help="student | teacher (presets)")] = "student",
            epochs: Annotated[int | None, typer.Option(
                help="passes over the images (default: the size's, student 2, teacher 4)")] = None,
            seed: Annotated[int, typer.Option(help="seed of everything random")] = 0,
            batch_size: Int = None, lr: Float = None,
            threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
            ) -> None:
    """Pre-train a region backbone with bottom-up's object + attribute heads and save it."""
    from pkd.train.pretrain.regions import (  # torch: loaded only when the command runs
        RegionPretrainConfig,
        pretrain_regions,
    )

    given = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr,
                                    threads=threads).items() if v is not None}
    metrics = pretrain_regions(RegionPretrainConfig(data, out, size=size, seed=seed, **given))
    val = metrics["val"]
    scores = ", ".join(f"{k.removesuffix('_accuracy')} {v:.1f}%" for k, v in val.items()
                       if k.endswith("_accuracy"))
    typer.echo(f"val heads on {val['objects']} objects: {scores}")
    typer.echo(f"backbone written to {out} ({metrics['seconds']:.0f} s, "
               f"{metrics['cpu_seconds']:.0f} CPU s)")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="pretrain")
