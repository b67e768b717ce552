"""Training-step cost of the methods, side by side on the demo's stores and models.

Builds (or reuses with ``--demo DIR``) the demo chain of :mod:`pkd.demo` — synthetic benchmark,
tiny foundation model, stores, PKD stage-1 predictors, adapted DistillVLM teacher and its cache —
then, for each method, a :class:`pkd.train.loop.Trainer` exactly as ``pkd train`` builds it, and
times on the same training batches:

PKD stage 2 is timed as the demo runs it (8 pooled predicted tokens, ``L_mkd`` on an eighth of
each batch, frozen stage-1 outputs read from the ``predicted`` store), with the predictors run
online, and in the reading before these (every token, full ``L_mkd``, online).

- ``step``: forward + backward + optimizer step on batches already read (the model's work);
- ``read``: assembling the batch from the stores (``VQABatches``: the cached teacher's arrays are
  part of DistillVLM's read), first pass over the batches (cold chunk cache) and later passes.

Ratios printed (issue targets): PKD stage 2 step / baseline step; DistillVLM student step with
the cached teacher / with the online teacher (and each / the undistilled student's step); and
inference (eval forward of a test batch) of the teacher / the student, with parameter counts.
Variants are interleaved ``--repeat`` times and the fastest round is kept (shared machine).

Run: ``python benchmarks/bench_steps.py [--demo demo_out] [--steps 30 --repeat 3]``.
Without ``--demo`` a small demo (2 pre-training epochs, 1 training epoch: timing does not need
accuracy) is built in a temporary folder first (~2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import machine, print_table

from pkd.demo import DemoConfig, Paths, prepare, row_config, row_vars, train_run
from pkd.train.config import TrainConfig
from pkd.train.loop import Trainer, _to
from pkd.train.tasks.distillvlm import teacher_view

TOKENWISE = "<tokenwise predictors>"  # replaced by the run of tokenwise_predictors
METHODS = {  # label -> (demo run spec, extra overrides)
    "baseline (UpDn)": ("baseline", {}),
    "PKD stage 2 (UpDn + memory + L_mkd)": ("pkd", {}),
    "PKD stage 2, predictors run online": ("pkd", {"data.predicted": ""}),
    "PKD stage 2, online, every token, full L_mkd": ("pkd", {
        "data.predicted": "", "method.pkd.predictor_tokens": 0, "method.pkd.mkd_fraction": 1.0,
        "method.pkd.predictors": TOKENWISE}),
    "student (fusion, no distillation)": ("student", {}),
    "DistillVLM, cached teacher": ("distillvlm", {}),
    "DistillVLM, online teacher": ("distillvlm", {"method.distill.online_teacher": True}),
}


def build_demo(out: Path, cfg: DemoConfig) -> tuple[Paths, Path]:
    """Stores + the runs the methods build on (predictors, their cache, teacher, teacher cache);
    (paths, the token-wise stage-1 run)."""
    paths = prepare(cfg)
    train_run(cfg, paths, "predictors", 0)
    train_run(cfg, paths, "teacher", 0)
    from pkd.train.predicted_extract import extract_predicted
    from pkd.train.teacher_extract import extract_teacher

    pcfg = _config(cfg, "pkd", {}, out / "probe")
    if not (Path(pcfg.data.predicted) / "zarr.json").is_file():
        extract_predicted(pcfg)
    tokenwise = tokenwise_predictors(cfg, paths, out)

    tcfg = _config(cfg, "distillvlm", {}, out / "probe")
    if not (Path(tcfg.data.teacher) / "zarr.json").is_file():
        extract_teacher(tcfg)
    return paths, tokenwise


def tokenwise_predictors(cfg: DemoConfig, paths: Paths, out: Path) -> Path:
    """A 1-epoch stage-1 run with every predicted token (the reading before pooling): timing
    needs its shapes, not its accuracy."""
    run = out / "predictors-tokenwise"
    if not (run / "ckpt" / "latest.json").is_file():
        from pkd.train.loop import fit

        fit(_config(cfg, "predictors", {"method.pkd.predictor_tokens": 0, "run.epochs": 1}, run))
    return run


def _config(cfg: DemoConfig, spec: str, extra: dict, run_dir: Path) -> TrainConfig:
    """The demo's row ``spec`` (configs/rows/) on seed 0, ``extra`` keys on top, in ``run_dir``."""
    return row_config(spec, row_vars(cfg, 0), {**extra, "run.out_dir": str(run_dir)})


def trainer(cfg: DemoConfig, paths: Paths, spec: str, extra: dict, work: Path) -> Trainer:
    run_dir = work / f"{spec}-{len(list(work.iterdir()))}"
    return Trainer(_config(cfg, spec, extra, run_dir), resume=False)


def time_reads(t: Trainer, positions: list) -> tuple[float, float, list]:
    """(seconds per batch cold, warm) of assembling the batches; the batches."""
    start = time.perf_counter()
    batches = [t.train[p] for p in positions]
    cold = (time.perf_counter() - start) / len(positions)
    start = time.perf_counter()
    for p in positions:
        t.train[p]
    return cold, (time.perf_counter() - start) / len(positions), batches


def time_steps(t: Trainer, batches: list) -> float:
    t.task.train()
    t.train_step(batches[0])  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    for b in batches:
        t.train_step(b)
    return (time.perf_counter() - start) / len(batches)


@torch.no_grad()
def time_inference(model: torch.nn.Module, batches: list, device) -> float:
    model.eval()
    model(_to(batches[0], device))
    start = time.perf_counter()
    for b in batches:
        model(_to(b, device))
    return (time.perf_counter() - start) / len(batches)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "memory" not in n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a pkd demo output folder to reuse (else built)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per method and round")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (fastest kept)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_steps_"))
    try:
        demo = args.demo or tmp / "demo"
        small = {"pretrain_epochs": 2, "pretrain_tag_epochs": 1, "train_epochs": 1,
                 "student_epochs": 1, "teacher_epochs": 1}
        cfg = DemoConfig(out=demo, **(small if args.demo is None else {}))  # else the demo's
        paths, tokenwise = build_demo(tmp, cfg)
        work = tmp / "runs"
        work.mkdir()
        trainers = {label: trainer(cfg, paths, spec, {k: tokenwise if v == TOKENWISE else v
                                                       for k, v in extra.items()}, work)
                    for label, (spec, extra) in METHODS.items()}
        positions = list(next(iter(trainers.values())).epoch_batches())[: args.steps]
        reads = {label: time_reads(t, positions) for label, t in trainers.items()}
        best = {label: float("inf") for label in trainers}
        for _ in range(args.repeat):
            for label, t in trainers.items():
                best[label] = min(best[label], time_steps(t, reads[label][2]))
        teacher = trainers["DistillVLM, online teacher"].task.teacher
        student = trainers["student (fusion, no distillation)"]
        infer_batches = [student.train[p] for p in positions[:10]]  # inference cost only
        device = student.world.device
        online_data = trainers["DistillVLM, online teacher"].train
        teacher_batches = [teacher_view(online_data[p]) for p in positions[:10]]
        infer = {"student": float("inf"), "teacher": float("inf")}
        for _ in range(args.repeat):
            infer["student"] = min(infer["student"], time_inference(student.model, infer_batches,
                                                                     device))
            infer["teacher"] = min(infer["teacher"], time_inference(teacher, teacher_batches,
                                                                     device))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = best["baseline (UpDn)"]
    stud = best["student (fusion, no distillation)"]
    rows = [{"method": label, "step ms": 1000 * s, "read ms (cold)": 1000 * reads[label][0],
             "read ms (warm)": 1000 * reads[label][1], "x baseline": s / base,
             "x student": s / stud} for label, s in best.items()]
    print(f"bench_steps: {len(positions)} batches of {cfg.batch_size} questions, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeat} rounds, "
          f"demo {'reused: ' + str(args.demo) if args.demo else 'built (small)'}")
    print(machine())
    print_table(rows, "method")
    cached = best["DistillVLM, cached teacher"]
    online = best["DistillVLM, online teacher"]
    pkd = best["PKD stage 2 (UpDn + memory + L_mkd)"]
    print(f"PKD stage 2 step / baseline step = {pkd / base:.2f}x (predictors run online "
          f"{best['PKD stage 2, predictors run online'] / base:.2f}x; every token, full L_mkd, "
          f"online {best['PKD stage 2, online, every token, full L_mkd'] / base:.2f}x)")
    print(f"DistillVLM step: online teacher / cached teacher = {online / cached:.2f}x "
          f"(cached read+step {1000 * (cached + reads['DistillVLM, cached teacher'][1]):.1f} ms, "
          f"online read+step {1000 * (online + reads['DistillVLM, online teacher'][1]):.1f} ms)")
    ps, pt = n_params(student.model), n_params(teacher)
    print(f"inference per batch: teacher {1000 * infer['teacher']:.1f} ms, student "
          f"{1000 * infer['student']:.1f} ms -> student / teacher = "
          f"{infer['student'] / infer['teacher']:.2f}x time, {ps / pt:.2f}x parameters "
          f"({ps:,} vs {pt:,})")


if __name__ == "__main__":
    main()
