"""``pkd evaluate``: the official VQA metric on a results file (or a trained run).

Mode 1: ``--questions Q.json --annotations A.json --results R.json [--out M.json]``.
Mode 2: ``--checkpoint RUN --split test [--which best|last]`` predicts with a trained run
(``RUN/results_<split>.json``), then scores it (``RUN/metrics_<split>.json`` or ``--out``); it
opens only the stores the run's model reads (regions; foundation stores only for a model fed their
embeddings), so a PKD run evaluates on a split no foundation features were extracted for.
``--bootstrap N`` (both modes; ``N`` ≥ 100 or 0) adds the 95% percentile-bootstrap CI over
questions of the overall and each answer type's accuracy (``N`` resamples, seed 0;
:mod:`pkd.stats`) to the table and to the metrics JSON (``"bootstrap"``). It is the test-set
noise of one model; the spread over training seeds is the larger one (``pkd demo --seeds``).
``--adjust mask-favourite|prior-correction`` (with ``--checkpoint``) scores a post-hoc control of
the trained run instead of its plain argmax: the training favourite of each question type masked,
or the scores divided by the training prior (:mod:`pkd.train.prior_adjust`); files
``RUN/{results,metrics}_<split>_<adjust>.json``, so the plain evaluation stays as it was.
Every option is optional for Typer; the combinations are checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pkd.data.metric import evaluate_files, write_metrics
from pkd.errors import PkdError
from pkd.fsio import check_writable

MIN_RESAMPLES = 100  # fewer resamples than this give a CI that is mostly noise

Questions = Annotated[Path | None, typer.Option(help="questions JSON (VQA v2 / VQA-CP v2 / synth)")]
Answers = Annotated[Path | None, typer.Option("--annotations", help="annotations JSON")]
Results = Annotated[Path | None, typer.Option(help="results JSON [{question_id, answer}]")]
Out = Annotated[Path | None, typer.Option(help="write the metrics JSON here")]
Checkpoint = Annotated[Path | None, typer.Option(help="trained run folder (pkd train run.out_dir)")]
Which = Annotated[str, typer.Option(help="best (on val) or last checkpoint of the run")]
Split = Annotated[str | None, typer.Option(
    help="split to predict with --checkpoint (default: the run's data.test_split)")]
Bootstrap = Annotated[int, typer.Option(
    help="bootstrap resamples for a 95% CI over questions (0: off; 1000 is usual)")]
Adjust = Annotated[str, typer.Option(
    help="post-hoc control with --checkpoint: none, mask-favourite or prior-correction")]


def evaluate(questions: Questions = None, annotations: Answers = None, results: Results = None,
             out: Out = None, checkpoint: Checkpoint = None, split: Split = None,
             which: Which = "best", bootstrap: Bootstrap = 0, adjust: Adjust = "none") -> None:
    """Score VQA results with the official metric (same numbers as vqaEval.py)."""
    if bootstrap < 0:
        raise PkdError(f"--bootstrap {bootstrap}: expected 0 (off) or a number of resamples")
    if 0 < bootstrap < MIN_RESAMPLES:
        raise PkdError(f"--bootstrap {bootstrap}: a 95% CI needs at least {MIN_RESAMPLES} "
                       "resamples (1000 is usual; 0 turns it off)")
    if out is not None:
        _check_output_file(out)
    if adjust != "none":
        from pkd.train.prior_adjust import ADJUSTMENTS  # torch: loaded only when the command runs

        if adjust not in ADJUSTMENTS:
            raise PkdError(f"--adjust {adjust!r}: expected one of {', '.join(ADJUSTMENTS)}")
    if checkpoint is not None:
        from pkd.train.predict import (  # torch: loaded only when the command runs
            evaluate_checkpoint,
            run_file,
        )

        if which not in ("best", "last"):
            raise PkdError(f"--which {which!r}: expected best or last")
        if split is None:  # the run's own test split (data.test_split)
            from pkd.train.predict import load_run_config  # torch: only when the command runs

            split = load_run_config(checkpoint).data.test_split
        check_writable(checkpoint, "run folder")  # before the predictions, not after them
        metrics, _ = evaluate_checkpoint(checkpoint, split, which, out, bootstrap, adjust)
        _print_metrics(metrics, out or run_file(checkpoint, "metrics", split, adjust))
        return
    if split is not None:
        raise PkdError("--split: only valid with --checkpoint")
    if adjust != "none":
        raise PkdError("--adjust: only valid with --checkpoint")
    given = {"--questions": questions, "--annotations": annotations, "--results": results}
    lacking = [name for name, value in given.items() if value is None]
    if lacking:
        raise PkdError(f"pkd evaluate: missing {', '.join(lacking)} "
                       "(give --questions, --annotations and --results)")
    metrics = evaluate_files(questions, annotations, results, bootstrap=bootstrap)
    if out is not None:
        write_metrics(metrics, out)
    _print_metrics(metrics, out)


def _check_output_file(out: Path) -> None:
    """``--out`` must name a file in a writable folder: refused in one line before any work."""
    if out.is_dir():
        raise PkdError(f"{out}: --out is a folder, a file was expected (give a file path)")
    check_writable(out.parent, "--out's folder")


def _print_metrics(metrics: dict, out: Path | None) -> None:
    """One table: overall, then each answer type, then each question type (with a 95% CI
    column for the first two when ``metrics`` has ``bootstrap``)."""
    from rich.console import Console  # rich: loaded only when a table prints
    from rich.table import Table  # rich: loaded only when a table prints

    boot = metrics.get("bootstrap")
    table = Table(title=f"VQA accuracy ({metrics['answered']}/{metrics['questions']} answered)")
    table.add_column("group")
    table.add_column("type")
    table.add_column("accuracy %", justify="right")
    if boot:
        table.add_column("95% CI", justify="right", no_wrap=True)

    def ci(interval: list[float] | None) -> list[str]:
        if not boot:
            return []
        return [f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""]

    table.add_row("overall", "", f"{metrics['overall']:.2f}", *ci(boot and boot["overall"]),
                  end_section=True)
    for group, key in (("answer type", "perAnswerType"), ("question type", "perQuestionType")):
        for i, (name, value) in enumerate(metrics[key].items()):
            interval = boot["perAnswerType"].get(name) if boot and key == "perAnswerType" else None
            table.add_row(group if i == 0 else "", name, f"{value:.2f}", *ci(interval),
                          end_section=i == len(metrics[key]) - 1)
    console = Console()
    console.print(table)
    if boot:
        console.print(f"95% CI: percentile bootstrap over questions, {boot['resamples']} "
                      f"resamples (seed {boot['seed']}); test-set noise only, not seed noise",
                      markup=False, highlight=False)
    if metrics["missing"]:
        console.print(f"{metrics['missing']} questions had no prediction (scored 0)")
    if "prior" in metrics:
        prior = metrics["prior"]
        console.print(f"training prior: {prior['prior']:.1f}% of answers are their question type's "
                      f"favourite training answer (gold: {prior['gold']:.1f}%)")
    if "adjust" in metrics:
        adj = metrics["adjust"]
        console.print(f"post-hoc control: {adj['method']} (tau {adj['tau']}, eps {adj['eps']})")
    if "inference" in metrics:
        inf = metrics["inference"]
        console.print(f"model: {inf['parameters']:,} parameters, {inf['ms_per_question']:.3f} ms "
                      "per question (forward passes only)")
    if out is not None:
        console.print(f"metrics written to {out}")
