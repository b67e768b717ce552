"""``pkd data``: data set utilities (the synthetic OOD benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Data sets: generate the synthetic VQA-CP-like benchmark.", no_args_is_help=True)

Count = Annotated[int, typer.Option(min=0, help="number of images")]


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="output folder (created; empty or an earlier synth run)")],
    seed: Annotated[int, typer.Option(help="random seed; same seed, identical files")] = 0,
    train_images: Count = 1500,
    val_images: Count = 300,
    test_images: Annotated[int, typer.Option(min=0, help="images of test and of test_iid")] = 600,
    caption_images: Count = 2000,
    image_size: Annotated[int, typer.Option(help="image side in pixels")] = 64,
    questions_per_image: Annotated[int, typer.Option(help="at most this many per image")] = 3,
    bias: Annotated[float, typer.Option(help="share of each question type's dominant answer")] = 0.6,
) -> None:
    """Write the synthetic benchmark (VQA v2 files, PNGs, boxes, captions) into OUT."""
    from pkd.data.synth import SynthConfig, generate

    cfg = SynthConfig(seed=seed, image_size=image_size, train_images=train_images,
                      val_images=val_images, test_images=test_images, test_iid_images=test_images,
                      caption_images=caption_images, questions_per_image=questions_per_image,
                      bias=bias)
    meta = generate(cfg, out)
    for split, info in meta["splits"].items():
        typer.echo(f"{split:9s} {info['images']:6d} images {info['questions']:6d} questions "
                   f"({info['prior']} prior)")
    typer.echo(f"captions  {meta['captions']['images']:6d} images {meta['captions']['captions']:6d}"
               f" captions -> {out}")
