"""``pkd data``: data set utilities (the synthetic OOD benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.data.resplit import resplit as run
from pkd.data.resplit_config import ResplitConfig

app = typer.Typer(help="Data sets: generate the synthetic VQA-CP-like benchmark; re-split VQA "
                      "data.", no_args_is_help=True)

Count = Annotated[int | None, typer.Option(min=0, help="number of images (default: the preset's)")]


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(
        help="output folder (created; empty or an earlier synth run)")],
    preset: Annotated[str, typer.Option(help="quick (the demo's sizes) | full (>= 30k train, "
                                             ">= 10k per test split)")] = "quick",
    seed: Annotated[int, typer.Option(help="random seed; same seed, identical files")] = 0,
    train_images: Count = None,
    val_images: Count = None,
    test_images: Annotated[int | None, typer.Option(
        min=0, help="images of each of test, test_comp and test_iid")] = None,
    caption_images: Count = None,
    image_size: Annotated[int | None, typer.Option(help="image side in pixels")] = None,
    questions_per_image: Annotated[int | None, typer.Option(
        help="at most this many per image")] = None,
    bias: Annotated[float | None, typer.Option(
        help="share of each type's favourite answer")] = None,
    direct_weight: Annotated[float | None, typer.Option(
        help="share of questions the direct colour / shape families keep (1 = v4's equal "
             "mix)")] = None,
    caption_relations: Annotated[bool, typer.Option(
        help="each caption also states one spatial relation that holds")] = False,
) -> None:
    """Write the synthetic benchmark (VQA v2 files, PNGs, boxes, captions, detection corpus)."""
    from pkd.data.synth import SynthConfig, generate  # PIL: loaded only when the command runs

    given = {"train_images": train_images, "val_images": val_images, "test_images": test_images,
             "test_comp_images": test_images, "test_iid_images": test_images,
             "caption_images": caption_images, "image_size": image_size,
             "questions_per_image": questions_per_image, "bias": bias,
             "direct_weight": direct_weight, "caption_relations": caption_relations or None}
    cfg = SynthConfig.preset(preset, seed=seed, **{k: v for k, v in given.items() if v is not None})
    meta = generate(cfg, out)
    for split, info in meta["splits"].items():
        typer.echo(f"{split:9s} {info['images']:6d} images {info['questions']:6d} questions "
                   f"({info['prior']} prior)")
    typer.echo(f"captions  {meta['captions']['images']:6d} images {meta['captions']['captions']:6d}"
               f" captions; detection {meta['detection']['train']['images']} + "
               f"{meta['detection']['val']['images']} images -> {out}")


@app.command()
def resplit(
    out: Annotated[Path, typer.Argument(help="output folder (vqacp_v2_{train,test}_*.json)")],
    questions: Annotated[list[Path], typer.Option(
        help="VQA v2-format questions file (repeatable)")],
    annotations: Annotated[list[Path], typer.Option(help="its annotations file (same order)")],
    seed: Annotated[int, typer.Option(help="random seed; same seed, identical files")] = 0,
    test_share: Annotated[float, typer.Option(
        help="target test share of each question type")] = 0.3,
    shift: Annotated[float, typer.Option(help="0 = i.i.d. split of every (type, answer) group, "
                                         "1 = whole groups to a side (VQA-CP)")] = 0.3,
    disjoint_images: Annotated[bool, typer.Option(
        "--disjoint-images",
        help="no image in both splits (drops the questions that conflict)")] = False,
    min_per_type: Annotated[int, typer.Option(help="questions a type needs to be split")] = 10,
    seen_share: Annotated[float, typer.Option(help="share of a group kept in train when no other "
                                              "train question holds its answer")] = 0.1,
    blind_sample: Annotated[int, typer.Option(min=0, help="score the blind-rule table on at most "
                                              "this many test questions (0 = all)")] = 5000,
) -> None:
    """Re-split VQA v2-format data VQA-CP-style (Agrawal et al., CVPR 2018) into OUT."""
    s = run(ResplitConfig(tuple(questions), tuple(annotations), out, seed, test_share, min_per_type,
                          seen_share, shift, disjoint_images, blind_sample))
    _shift_table(s["shift"])
    _blind_table(s["blind_rules"])
    z, share = s["sizes"], s["test_share"]
    typer.echo(f"train {z['train']['questions']} questions / {z['train']['images']} images, test "
               f"{z['test']['questions']} / {z['test']['images']} ({z['images_in_both']} images in "
               f"both); test share {share['achieved']:.3f} (requested {share['requested']:g}); "
               f"dropped {z['dropped_image']} (image in both) + {z['dropped_unseen']} (answer "
               f"unseen in train) of {z['input_questions']} -> {out}")
    for line in s["warnings"]:
        typer.echo(f"warning: {line}", err=True)


def _shift_table(rows: dict) -> None:
    typer.echo(f"{'question type':24s} {'train':>7s} {'test':>7s} {'favourite':>12s} "
               f"{'test_fav':>8s} {'kl':>8s}")
    for qtype, r in rows.items():
        typer.echo(f"{qtype[:24]:24s} {r['train']:7d} {r['test']:7d} "
                   f"{str(r['train_favourite'])[:12]:>12s} "
                   f"{r['test_favourite']:8.4f} {r['kl']:8.4f}")


def _blind_table(blind: dict) -> None:
    """The blind rules on test; the 'favourite of <type>' family as its best member."""
    table = blind["table"]
    family = [r for r in table if r.startswith("favourite of ")]
    shown = [r for r in table if r not in family]
    if family:
        shown.insert(-2, max(family, key=lambda r: table[r]))
    typer.echo(f"{'blind rule (from train)':40s} {'test %':>7s}  ({blind['test_questions']} test "
               "questions scored)")
    for rule in shown:
        note = f"  (best of {len(family)} 'favourite of' rules)" if rule in family else ""
        typer.echo(f"{rule[:40]:40s} {table[rule]:7.2f}{note}")
    per = blind["per_answer_type"]
    for rule in dict.fromkeys([blind["best"]["rule"], "favourite", "least frequent"]):
        by = ", ".join(f"{t} {v:.2f}" for t, v in per[rule].items())
        lead = "best blind rule" if rule == blind["best"]["rule"] else "rule"
        typer.echo(f"{lead} {rule!r} on test per answer type: {by}")
