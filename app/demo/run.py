"""Train, evaluate and tabulate the demo's rows: :func:`run_demo` is the whole chain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pkd.data.metric import evaluate_files
from pkd.data.prior import dominant_answers, inverted_prior_answers, prior_agreement
from pkd.data.vqa import dataset_files, load_annotations
from pkd.demo.config import CONTROLS, KNOWN, SPLITS, DemoConfig, draw_config, row_vars, run_dir
from pkd.demo.controls import POSTHOC, posthoc_rows
from pkd.demo.jobs import locked, run_tasks, threads_per_job
from pkd.demo.prepare import Paths, _stage, draw_facts, machine, prepare_draw
from pkd.demo.results_file import merge_into, write_tables
from pkd.demo.row_cache import cached_rows
from pkd.demo.rows import needs, row_config
from pkd.demo.vlm import VLM_ROWS, forgetting, make_wise_ft
from pkd.errors import PkdError
from pkd.fsio import write_json

if TYPE_CHECKING:
    from pkd.train.config import TrainConfig


def _complete(store: str) -> bool:
    """A cache store that exists with every shard written (an interrupted one resumes)."""
    from pkd.stores import FeatureStore  # zarr: loaded only when a cache store is checked

    return (Path(store) / "zarr.json").is_file() and FeatureStore.open(store).complete


def run_config(cfg: DemoConfig, name: str, seed: int) -> TrainConfig:
    """The config of row ``name``'s run on ``seed`` in ``cfg``'s draw: ``configs/rows/{name}.yaml``
    with the draw's variables, and one torch thread per job's share of the cores with
    ``--jobs`` > 1 (:func:`pkd.demo.jobs.threads_per_job`)."""
    extra = {"run.threads": threads_per_job(cfg.jobs)} if cfg.jobs > 1 else {}
    return row_config(name, row_vars(cfg, seed), extra)


def train_run(cfg: DemoConfig, paths: Paths, name: str, seed: int) -> Path:
    """Train one run (and what it builds on) unless it is finished; return its folder."""
    from pkd.train.loop import fit  # torch: loaded only when a row trains

    for need in needs(name):
        train_run(cfg, paths, need, seed)
    if name == "wise-ft":  # nothing trained: the fine-tuned run mixed with F0
        with locked(cfg.out, f"wise-ft-seed{seed}"):
            return make_wise_ft(run_dir(cfg, "finetune", seed), run_dir(cfg, name, seed))
    tcfg = run_config(cfg, name, seed)
    run = Path(tcfg.run.out_dir)
    with locked(cfg.out, run.name):  # one process per run (pkd.demo.jobs)
        if tcfg.method.name == "distillvlm" and not tcfg.method.distill.online_teacher:
            with locked(cfg.out, Path(tcfg.data.teacher).name):  # shared by a seed's rows
                if not _complete(tcfg.data.teacher):
                    from pkd.train.teacher_extract import extract_teacher  # torch: only to train

                    _stage(f"caching the adapted teacher (seed {seed})")
                    extract_teacher(tcfg)
        if tcfg.method.name == "pkd" and tcfg.data.predicted and tcfg.method.pkd.use_predictors:
            with locked(cfg.out, Path(tcfg.data.predicted).name):  # and its split stores
                _predicted_stores(tcfg, seed)
        if not (run / "ckpt" / "latest.json").is_file() or not (run / "done").is_file():
            _stage(f"training {name} (seed {seed})")
            fit(tcfg, resume=(run / "ckpt" / "latest.json").is_file())
            (run / "done").write_text("")
    return run


def _predicted_stores(tcfg, seed: int) -> None:
    """The frozen predictors' outputs on the training split (cached once), and on every split
    D validates and is scored on when it reads them (``model.foundation_inputs=predicted``)."""
    from pkd.train.prepare import reads_predicted  # torch: only when predicted stores are made
    from pkd.train.splits import (  # torch: loaded only when predicted stores are made
        CARVED_VAL,
        val_split_name,
    )

    if not _complete(tcfg.data.predicted):
        from pkd.train.predicted_extract import extract_predicted  # torch: for predicted stores

        _stage(f"caching the frozen PKD predictors' outputs (seed {seed})")
        extract_predicted(tcfg)
    if reads_predicted(tcfg):
        from pkd.train.predicted_extract import split_predictions  # torch: for predicted stores

        for split in dict.fromkeys((val_split_name(tcfg), *SPLITS)):
            if split != CARVED_VAL:  # the training split's store covers it
                split_predictions(tcfg, split)


def evaluate_run(run: Path, name: str, seed: int) -> list[dict]:
    """One row per split of a finished run (official metric, inference time, prior shares,
    per answer and question type); reused from ``RUN/demo_rows.json`` while the run and the split
    files are unchanged (:mod:`pkd.demo.row_cache`)."""
    from pkd.train.config_load import load_config  # torch: loaded only when a run is evaluated
    from pkd.train.predict import evaluate_checkpoint  # torch: loaded only when a run is evaluated

    data = load_config(run / "config.yaml").data
    inputs = [f for split in SPLITS for f in dataset_files(Path(data.root), data.dataset, split)]

    def compute() -> list[dict]:
        rows = []
        for split in SPLITS:
            metrics, _ = evaluate_checkpoint(run, split)
            rows.append({"method": name, "seed": seed, "split": split,
                         "overall": metrics["overall"], "perAnswerType": metrics["perAnswerType"],
                         "perQuestionType": metrics["perQuestionType"],
                         "ms_per_question": metrics["inference"]["ms_per_question"],
                         "prior": metrics["prior"]["prior"],
                         "prior_gold": metrics["prior"]["gold"]})
        return rows

    return cached_rows(run, inputs, compute)


def control_rows(cfg: DemoConfig, paths: Paths, name: str, seed: int) -> list[dict]:
    """Rows of the ``inverted-prior`` control (Teney et al., NeurIPS 2020), scored like a run:
    every question gets its type's least frequent training answer, yes/no the minority one
    (:func:`pkd.data.prior.inverted_prior_answers`); no model, so ``ms_per_question`` is 0."""
    train = load_annotations(dataset_files(paths.data, "synth", "train")[1])
    answers, favourites = inverted_prior_answers(train), dominant_answers(train)
    rows = []
    for split in SPLITS:
        qpath, apath = dataset_files(paths.data, "synth", split)
        anns = load_annotations(apath)
        results = [{"question_id": a.question_id, "answer": answers.get(a.question_type, "")}
                   for a in anns]
        out = run_dir(cfg, name, seed) / f"results_{split}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, results)
        metrics = evaluate_files(qpath, apath, out)
        prior = prior_agreement({r["question_id"]: r["answer"] for r in results}, anns, favourites)
        rows.append({"method": name, "seed": seed, "split": split, "overall": metrics["overall"],
                     "perAnswerType": metrics["perAnswerType"],
                     "perQuestionType": metrics["perQuestionType"], "ms_per_question": 0.0,
                     "prior": prior["prior"], "prior_gold": prior["gold"]})
    return rows


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or finish) the demo; write ``results.json``, ``.md`` and ``.png``; return the
    results."""
    unknown = [m for m in cfg.methods if m not in KNOWN]
    if unknown:
        raise PkdError(f"pkd demo: unknown method {unknown[0]!r} (known: {', '.join(KNOWN)})")
    if cfg.jobs < 1:
        raise PkdError(f"pkd demo: jobs must be >= 1, not {cfg.jobs}")
    if not cfg.data_seeds or any(d < 0 for d in cfg.data_seeds):
        raise PkdError(f"pkd demo: data seeds must be >= 0, at least one: {cfg.data_seeds}")
    start = time.monotonic()
    seconds: dict[str, float] = {}  # wall time of each stage in this invocation
    cfg.out.mkdir(parents=True, exist_ok=True)
    draws = tuple(dict.fromkeys(cfg.data_seeds))
    _stage(f"{cfg.preset} size: {cfg.synth.train_images} training images, {cfg.seeds} "
           f"seed{'' if cfg.seeds == 1 else 's'} x data draws {', '.join(map(str, draws))}, "
           f"{len(cfg.methods)} rows"
           + (" (the README's table: pkd demo --preset full)" if cfg.preset == "quick" else ""))
    jobs = min(cfg.jobs, len(draws))  # one draw: prepared here, with every core
    paths = dict(zip(draws, _timed(seconds, "prepare (data, pre-training, extraction)",
                                   lambda: run_tasks([(d, jobs) for d in draws], jobs,
                                                     prepare_draw, cfg)), strict=True))
    tasks = [(d, name, seed) for d in draws for name in dict.fromkeys(cfg.methods)
             for seed in range(cfg.seeds)]
    if cfg.jobs > 1:
        _stage(f"{len(tasks)} (draw, row, seed) tasks in {cfg.jobs} processes, "
               f"{threads_per_job(cfg.jobs)} torch thread(s) each")
    rows = []
    for task_rows, task_seconds in run_tasks(tasks, cfg.jobs, draw_rows, cfg, paths):
        rows += task_rows
        for key, s in task_seconds.items():  # summed over processes: CPU-side stage time
            seconds[key] = round(seconds.get(key, 0.0) + s, 1)
    results = {"elapsed_s": round(time.monotonic() - start, 1), "rows": rows,
               "models": model_sizes(draw_config(cfg, draws[0])),
               "draws": {str(d): draw_facts(paths[d]) for d in draws},
               "stage_seconds": seconds, "preset": cfg.preset, "machine": machine()}
    save_results(results, cfg.out)
    return results



def draw_rows(cfg: DemoConfig, paths: dict[int, Paths], draw: int, name: str,
              seed: int) -> tuple[list[dict], dict]:
    """:func:`table_rows` of one data draw, each row stamped with its ``data_seed``."""
    rows, seconds = table_rows(draw_config(cfg, draw), paths[draw], name, seed)
    return [{**r, "data_seed": draw} for r in rows], seconds


def table_rows(cfg: DemoConfig, paths: Paths, name: str, seed: int) -> tuple[list[dict], dict]:
    """(rows of ``name`` on ``seed``, seconds per stage): train it and what it builds on, then
    score it (under the run's lock); controls are computed, nothing trained; the post-hoc
    controls (:data:`pkd.demo.controls.POSTHOC`) score their trained run with its answers
    adjusted."""
    seconds: dict[str, float] = {}
    if name in CONTROLS:  # same rows on every seed, so paired differences line up
        return _timed(seconds, "controls", lambda: control_rows(cfg, paths, name, seed)), seconds
    if name in POSTHOC:
        base, adjust = POSTHOC[name]
        run = _timed(seconds, f"{base}-seed{seed}", lambda: train_run(cfg, paths, base, seed))
        with locked(cfg.out, run.name):
            return _timed(seconds, "evaluation",
                          lambda: posthoc_rows(run, name, seed, adjust, SPLITS)), seconds
    for need in needs(name):
        _timed(seconds, f"{need}-seed{seed}", lambda n=need: train_run(cfg, paths, n, seed))
    run = _timed(seconds, f"{name}-seed{seed}", lambda: train_run(cfg, paths, name, seed))
    with locked(cfg.out, run.name):
        rows = _timed(seconds, "evaluation", lambda: evaluate_run(run, name, seed))
        if name in VLM_ROWS:  # D's caption metrics against F0's (forgetting)
            caption = _timed(seconds, "forgetting", lambda: forgetting(run, paths.data,
                                                                       paths.stores))
            rows = [{**r, "forgetting": caption} for r in rows]
    return rows, seconds


def _timed(seconds: dict[str, float], key: str, fn):
    """``fn()``, adding its wall time to ``seconds[key]``."""
    t = time.monotonic()
    out = fn()
    seconds[key] = round(seconds.get(key, 0.0) + time.monotonic() - t, 1)
    return out


def save_results(results: dict, out: Path) -> dict:
    """Merge this invocation's ``results`` into ``OUT/results.json`` (rows keyed by method,
    seed, data_seed and split; dicts key by key; :mod:`pkd.demo.results_file`), then write
    ``results.md`` (:func:`results_markdown`), ``results_families.md`` (per question family,
    :mod:`pkd.demo.families`) and ``results.png`` from the merged rows, each file atomically.

    ``results`` is updated in place to the merged content with ``"summary"`` (:func:`summarize`
    of every row the file holds) and returned. A ``results.json`` that is not JSON or has no
    ``"rows"`` is a PkdError, never overwritten."""
    merge_into(results, out)
    write_tables(results, out)
    return results


def model_sizes(cfg: DemoConfig) -> dict:
    """Parameter count of each trained method's VQA model (seed 0, best checkpoint)."""
    from safetensors.torch import load_file  # safetensors.torch: only when model sizes are read

    from pkd.train.checkpoint import resolve_checkpoint  # torch: only when model sizes are read

    sizes = {}
    for name in cfg.methods:
        best = run_dir(cfg, name, 0) / "best"
        if (best / "latest.json").is_file():
            weights = load_file(str(resolve_checkpoint(best) / "model.safetensors"))
            sizes[name] = sum(t.numel() for k, t in weights.items() if "memory" not in k)
    return sizes

