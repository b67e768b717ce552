"""``pkd evaluate --checkpoint RUN --split S``: predict answers with a trained run and score them.

Loads the run's resolved config, vocabularies and its best checkpoint (``RUN/best``; the last one
in ``RUN/ckpt`` with ``which="last"``), refuses stores whose provenance differs from the ones the
run was trained on, predicts the argmax answer per question and writes the official results
format ``[{"question_id", "answer"}]``; the caller scores it with the official metric. With
``adjust`` the argmax is taken over post-hoc adjusted scores instead, controls that need no
training (:mod:`pkd.train.prior_adjust`: mask the training favourite, or divide by the prior).

Only the stores the VQA model's forward reads are opened (``open_stores(evaluation=True)``): the
regions store, plus the foundation stores when ``model.use_foundation_features`` feeds their
embeddings to the model. A PKD run's test-time forward is its VQA model with the memory fusion
hook (memory and fusion weights are in the checkpoint); the predictors, the foundation matching
head and the foundation tokens serve its training losses only, so it evaluates on splits the
foundation model never saw (its memory width comes from the run's ``stores.json``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pkd.data.metric import evaluate_files, write_metrics
from pkd.data.prior import dominant_answers, prior_agreement
from pkd.data.vqa import dataset_files, load_annotations
from pkd.errors import PkdError
from pkd.fsio import write_json
from pkd.train import checkpoint as ck
from pkd.train.config_load import load_config
from pkd.train.distributed import World
from pkd.train.loop import make_sampler
from pkd.train.prepare import build_run_model, open_stores, split_batches, vocabs
from pkd.train.prior_adjust import EPS, TAU, PriorTable, adjust_logits, check_adjust, prior_table
from pkd.train.splits import CARVED_VAL
from pkd.train.store_checks import check_provenance, recorded_foundation_dims


def load_run_config(run_dir: Path):
    """The resolved config a run folder was trained with."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise PkdError(f"{run_dir}: not a pkd run folder (no config.yaml)")
    return load_config(run_dir / "config.yaml")


def load_run(run_dir: Path, which: str = "best"):
    """(cfg, vocabs, stores, model in eval mode) of a trained run folder."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    v = vocabs(cfg, run_dir, create=False)
    stores = open_stores(cfg, evaluation=True)  # what the model's forward reads, no more
    check_provenance(run_dir, stores)
    model = build_run_model(cfg, v, stores, recorded_foundation_dims(run_dir))
    root = run_dir / ("best" if which == "best" else "ckpt")
    weights, _ = ck.load_checkpoint(root, expected_config=cfg)
    if which != "best":  # a training checkpoint holds the whole task: keep the model's part
        weights = {k[len("model."):]: t for k, t in weights.items() if k.startswith("model.")}
    model.load_state_dict(weights)
    return cfg, v, stores, model.eval()


def eval_device(name: str) -> torch.device:
    """``run.device`` of the run, for prediction: cuda when asked for or (``auto``) present."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PkdError("run.device=cuda: no CUDA device is visible (use run.device=auto or cpu)")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


@dataclass
class Predictions:
    results: list[dict]  # official format [{"question_id", "answer"}]
    model_seconds: float  # time inside the model's forward passes (no store reads, no scoring)
    parameters: int  # the model's parameter count (PKD's memory buffers are not parameters)

    def inference(self) -> dict:
        """``{"questions", "parameters", "model_seconds", "ms_per_question"}``."""
        n = len(self.results)
        return {"questions": n, "parameters": self.parameters,
                "model_seconds": round(self.model_seconds, 4),
                "ms_per_question": round(1000 * self.model_seconds / max(1, n), 5)}


def predict(run_dir: Path, split: str, which: str = "best", adjust: str = "none") -> Predictions:
    """Official-format results of the run on ``split``, and the model time they took.

    ``adjust`` (:data:`pkd.train.prior_adjust.ADJUSTMENTS`): ``none`` answers the argmax of the
    logits; ``mask-favourite`` / ``prior-correction`` the argmax of the post-hoc adjusted scores
    of :mod:`pkd.train.prior_adjust` (timed with the forward pass).
    """
    check_adjust(adjust)
    cfg, v, stores, model = load_run(run_dir, which)
    device = eval_device(cfg.run.device)
    model.to(device)
    if adjust != "none":
        table, rows = posthoc_tables(cfg, v.answers.answers, split)
        table = table.to(device)
    data, batches = split_batches(cfg, split, v, stores)
    results, seconds = [], 0.0
    with torch.no_grad():  # read, then run: a reader thread beside the forward would inflate
        for positions in make_sampler(batches, cfg, World(), shuffle=False):  # its timing
            batch = batches[positions]
            question_ids = batch["question_id"].tolist()
            batch = {k: t.to(device, non_blocking=True) for k, t in batch.items()}
            if adjust != "none":  # (B,) each question's row of the training prior, -1: unseen
                types = torch.tensor([rows.get(q, -1) for q in question_ids]).to(device)
            start = time.perf_counter()
            scores = model(batch)["logits"]  # (B, A)
            if adjust != "none":
                scores = adjust_logits(scores, table, types, adjust)
            best = scores.argmax(-1).tolist()  # .tolist() waits for the device
            seconds += time.perf_counter() - start
            for qid, a in zip(question_ids, best, strict=True):
                results.append({"question_id": int(qid), "answer": v.answers.answer(a)})
    return Predictions(results, seconds, sum(p.numel() for p in model.parameters()))


def posthoc_tables(cfg, answers: list[str], split: str) -> tuple[PriorTable, dict[int, int]]:
    """The run's training prior over its answer vocabulary (:func:`pkd.train.prior_adjust.
    prior_table`) and ``{question_id: row}`` of ``split``'s questions (-1: type unseen in
    training), their types read from the split's annotations."""
    root = Path(cfg.data.root)
    _, train = dataset_files(root, cfg.data.dataset, cfg.data.train_split)
    name = cfg.data.train_split if split == CARVED_VAL else split
    _, apath = dataset_files(root, cfg.data.dataset, name)
    if apath is None:
        raise PkdError(f"split {split!r} has no annotations: no question types to adjust by")
    table = _training_table(str(train), train.stat().st_mtime_ns, tuple(answers))
    anns = load_annotations(apath)
    index = table.type_index([a.question_type for a in anns]).tolist()
    return table, {a.question_id: row for a, row in zip(anns, index, strict=True)}


@functools.lru_cache(maxsize=2)
def _training_table(path: str, mtime_ns: int, answers: tuple[str, ...]) -> PriorTable:
    """:func:`pkd.train.prior_adjust.prior_table` of a training annotation file, built once per
    file version and vocabulary (a run is adjusted on several splits)."""
    return prior_table(load_annotations(path), answers)


def run_file(run_dir: Path, kind: str, split: str, adjust: str = "none") -> Path:
    """``RUN/<kind>_<split>.json``, or ``RUN/<kind>_<split>_<adjust>.json`` for an adjusted
    evaluation (so it never overwrites the plain one); ``kind``: results | metrics."""
    suffix = "" if adjust == "none" else f"_{adjust}"
    return Path(run_dir) / f"{kind}_{split}{suffix}.json"


def write_results(results: list[dict], path: Path) -> Path:
    """Write a VQA results list ``[{question_id, answer}]`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, results)


def evaluate_checkpoint(run_dir: Path, split: str, which: str = "best",
                        out: Path | None = None, bootstrap: int = 0,
                        adjust: str = "none") -> tuple[dict, Path]:
    """Predict ``split`` with the run, write ``RUN/results_<split>.json``, score it officially.

    Returns (metrics, results path); metrics (with ``inference``: the model's parameter count and
    forward time per question, batches of ``run.batch_size``; ``prior``: how often it answers
    with the training split's favourite answer, :mod:`pkd.data.prior`; with ``bootstrap > 0``,
    ``bootstrap``: CIs over questions, :func:`pkd.data.metric.bootstrap_metrics`) are also
    written to ``out`` (default ``RUN/metrics_<split>.json``). With ``adjust`` other than
    ``none`` (a post-hoc control, :mod:`pkd.train.prior_adjust`) the files are
    ``RUN/{results,metrics}_<split>_<adjust>.json`` and the metrics carry ``adjust``.
    """
    run_dir = Path(run_dir)
    predictions = predict(run_dir, split, which, adjust)
    results_path = write_results(predictions.results, run_file(run_dir, "results", split, adjust))
    cfg = load_config(run_dir / "config.yaml")
    qpath, apath = dataset_files(Path(cfg.data.root), cfg.data.dataset, split)
    if apath is None:
        raise PkdError(f"{qpath}: split {split!r} has no annotations; results written to "
                       f"{results_path} (submit them to the evaluation server)")
    metrics = evaluate_files(qpath, apath, results_path, bootstrap=bootstrap)
    metrics["inference"] = predictions.inference()
    metrics["prior"] = training_prior(cfg, predictions.results, apath)
    if adjust != "none":
        metrics["adjust"] = {"method": adjust, "tau": TAU, "eps": EPS}
    write_metrics(metrics, out or run_file(run_dir, "metrics", split, adjust))
    return metrics, results_path


def training_prior(cfg, results: list[dict], annotations: Path) -> dict:
    """:func:`pkd.data.prior.prior_agreement` of ``results`` against the run's training split."""
    _, train = dataset_files(Path(cfg.data.root), cfg.data.dataset, cfg.data.train_split)
    dominant = _training_favourites(str(train), train.stat().st_mtime_ns)
    predictions = {r["question_id"]: r["answer"] for r in results}
    return prior_agreement(predictions, load_annotations(annotations), dominant)


@functools.lru_cache(maxsize=4)
def _training_favourites(path: str, mtime_ns: int) -> dict:
    """:func:`pkd.data.prior.dominant_answers` of a training annotation file, read once per
    file version (a run is scored on several splits; VQA-CP's train file holds 438k answers)."""
    return dominant_answers(load_annotations(path))
