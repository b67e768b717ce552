"""The demo's sizes (presets), its groups of rows and the config of one data draw.

A row is a file in ``configs/rows/`` (:mod:`pkd.demo.rows`): :data:`KNOWN` lists every row the
demo can tabulate — those files, less the stage-1 runs other rows build on
(:data:`STAGE_RUNS`), plus the rows computed without a run of their own (:data:`CONTROLS`,
:data:`POSTHOC_ROWS`). The groups below only choose which rows an invocation shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pkd.demo.rows import row_names
from pkd.demo.vlm import PREDICTOR_RUNS
from pkd.errors import PkdError

if TYPE_CHECKING:
    from pkd.data.synth import SynthConfig

SPLITS = ("test", "test_comp", "test_iid")  # prior shift, held-out combinations, train priors
MAIN_METHODS = ("baseline", "pkd", "student", "teacher", "distillvlm")
ABLATIONS = ("pkd-memory", "pkd-model-kd", "pkd-predictors-off",
             "distillvlm-att", "distillvlm-nce", "distillvlm-kd")
SWEEPS = ("pkd-mkd0.3", "pkd-mkd3", "pkd-kdT1",  # PKD loss weight / temperature (--methods)
          "distillvlm-queue256", "distillvlm-queue16384")  # DistillVLM queue size (4096: main)
# Other readings of PKD (METHODS.md) and a reference row (--methods, in the full run's folder
# after it; at full size each PKD reading adds about one stage-2 run per seed, pkd-cross and
# pkd-mmd a stage-1 run and its cache too)
READINGS = ("pkd-cross",  # P_v(q), P_t(r): each side from the other modality only
            "pkd-mmd",  # L_div as distribution matching (batch MMD), its own stage 1
            "pkd-memory-train",  # D reads the memory in training only
            "pkd-memory-features",  # the memory holds ṽ, t̃ themselves, not their embeddings
            "pkd-finetune",  # predictors fine-tuned jointly in stage 2 (L_itm, L_div kept on)
            # item reading: D fed its own item's predicted e_v, e_t (the frozen predictors run on
            # every split, cached), as baseline-foundation is fed the real embeddings; L_vqa only
            "pkd-item",
            "pkd-item-full",  # the item reading with PKD's memory and L_mkd on too
            # the item reading on predictors whose L_div pins what the head reads: cosine of
            # their embeddings to the real ones, D(e_v, e_I) + D(e_t, e_Q); its own stage 1
            "pkd-item-emb",
            # reference, not a method: the foundation model's embeddings as D's extra inputs
            "baseline-foundation")
# DistillVLM's alignment ablation (--methods): the teacher adapted on its own (simulated)
# detector's regions, distilled with tokens paired by position (method.distill.alignment=index)
ALIGNMENT = ("teacher-own", "distillvlm-unaligned")
DEBIAS = ("question-only", "rubi", "lmh")  # reference debiasing methods on UpDn (--methods)
CONTROLS = ("inverted-prior",)  # rows computed from the training answers, nothing trained
# eval-only controls on the baseline run (pkd.demo.controls): its training favourite masked at
# test time; its answers divided by the training prior (post-hoc logit adjustment)
POSTHOC_ROWS = ("baseline-masked", "baseline-prior-corrected")
# runs that rows build on (their files' ``needs``), not rows of a table: PKD's stage 1
STAGE_RUNS = ("predictors", "predictors-emb", "predictors-mmd", "predictors-cross",
              *PREDICTOR_RUNS)
KNOWN = (*(n for n in row_names() if n not in STAGE_RUNS), *CONTROLS, *POSTHOC_ROWS)
# the README's table (pkd demo --preset full): the main rows, the reference debiasing rows, the
# ablations and PKD on LMH (D trained with LMH's loss, paired to lmh)
# v6: the headline rows on 3 seeds x 3 draws (the ablations with --ablations)
# student-best: the undistilled student at its plateau budget (DistillVLM trains the student's
# equal steps; both comparisons are in the grounding checks)
FULL_METHODS = (*MAIN_METHODS, "student-best", *DEBIAS, *CONTROLS, *POSTHOC_ROWS, "pkd-lmh")


def _synth_defaults() -> SynthConfig:
    from pkd.data.synth import SynthConfig  # PIL: loaded only when a demo is set up

    return SynthConfig()


@dataclass
class DemoConfig:
    out: Path  # everything goes here: draw{d}/ (data/, foundation/, stores/, runs/), results.json
    seeds: int = 1  # training seeds per method (and data draw)
    data_seeds: tuple[int, ...] = (0,)  # benchmark draws (SynthConfig.seed): each its own folder
    methods: tuple[str, ...] = MAIN_METHODS  # rows of the results table (see ABLATIONS too)
    synth: SynthConfig = field(default_factory=lambda: _synth_defaults())  # the benchmark
    pretrain_epochs: int = 6  # caption ITC epochs of the demo foundation model (stage B)
    # stage A: image-tower tagging epochs, then the tower is locked for the ITC (0 = a plain ITC
    # from scratch; pkd.train.pretrain.tag_pretrain)
    pretrain_tag_epochs: int = 12
    train_epochs: int = 10  # VQA training epochs per run (UpDn, PKD, debiasing rows)
    student_epochs: int = 30  # the fusion student's epochs (DistillVLM: the same, equal steps)
    student_best_epochs: int = 120  # the student at its val plateau (row student-best)
    teacher_epochs: int = 20  # the fusion teacher's epochs (adapted on the student's regions)
    batch_size: int = 64  # VQA training batch size
    vlm_epochs: int = 6  # fine-tuning epochs of the rows in PKD's setting (pkd.demo.vlm)
    # F0's masked-LM + matching pre-training epochs on the captions (10: 6 min, one core, quick)
    vlm_pretrain_epochs: int = 10
    preset: str = "quick"  # the size name printed with the results (see DemoConfig.of)
    jobs: int = 1  # runs trained side by side, in processes (pkd.demo.jobs)

    @classmethod
    def of(cls, preset: str, out: Path, **overrides) -> DemoConfig:
        """The demo of one size: ``quick`` (the README's main command: one seed, the main
        methods, ≤ 10 min on 2 cores) or ``full`` (the README's table: 3 seeds x data draws
        10-12, the headline rows, the full-size benchmark :meth:`SynthConfig.preset`); ``overrides``
        replace fields."""
        from pkd.data.synth import SynthConfig  # PIL: loaded only when a demo is set up

        if preset not in DEMO_PRESETS:
            raise PkdError(f"pkd demo: unknown preset {preset!r} (choose "
                           f"{' | '.join(DEMO_PRESETS)})")
        fields = {"synth": SynthConfig.preset(preset), "preset": preset, **DEMO_PRESETS[preset]}
        return cls(out=out, **{**fields, **overrides})


# The two sizes (DemoConfig fields; the benchmark itself is SynthConfig.preset of the same name).
# full: 8x the training questions, so fewer epochs give more steps than quick's 10.
DEMO_PRESETS: dict[str, dict] = {
    "quick": {"seeds": 1, "data_seeds": (0,), "methods": MAIN_METHODS, "pretrain_epochs": 6,
              "pretrain_tag_epochs": 12, "train_epochs": 10, "student_epochs": 30,
              "student_best_epochs": 120, "teacher_epochs": 20},
    # draws 10-12: nothing was tuned on them (design choices on draw 0 and val; the benchmark's
    # model-free blind-rule settings were chosen looking at draws 0-9, README "Benchmark v6")
    "full": {"seeds": 3, "data_seeds": (10, 11, 12), "methods": FULL_METHODS, "pretrain_epochs": 6,
             "pretrain_tag_epochs": 12, "train_epochs": 8, "student_epochs": 24,
             "student_best_epochs": 72, "teacher_epochs": 16},
}


def draw_config(cfg: DemoConfig, draw: int) -> DemoConfig:
    """The demo of one data draw: the benchmark generated with ``SynthConfig.seed = draw`` in
    ``OUT/draw{draw}``, with its own foundation model and region backbones (seeded from the
    draw), stores and runs."""
    return replace(cfg, out=cfg.out / f"draw{draw}", synth=replace(cfg.synth, seed=draw),
                   data_seeds=(draw,))


def run_dir(cfg: DemoConfig, name: str, seed: int) -> Path:
    return cfg.out / "runs" / f"{name}-seed{seed}"


def row_vars(cfg: DemoConfig, seed: int) -> dict:
    """The variables of a row file in one data draw's demo (``cfg.out``: the draw's folder)."""
    return {"draw": str(cfg.out), "seed": seed, "epochs": cfg.train_epochs,
            "epochs_half": max(1, cfg.train_epochs // 2), "epochs_double": 2 * cfg.train_epochs,
            "student_epochs": cfg.student_epochs, "student_best_epochs": cfg.student_best_epochs,
            "teacher_epochs": cfg.teacher_epochs, "batch_size": cfg.batch_size,
            "vlm_epochs": cfg.vlm_epochs, "vlm_epochs_half": max(1, cfg.vlm_epochs // 2)}
