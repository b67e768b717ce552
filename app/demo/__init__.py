"""``pkd demo``: the whole chain on the built-in synthetic benchmark, end to end on a CPU.

synthetic data -> pre-train the demo foundation model on the unbiased captions -> extract
foundation features, student regions and aligned teacher regions into stores -> train each method
(per seed) -> evaluate on the shifted ``test`` (OOD) and the in-distribution ``test_iid`` split ->
``results.json``, ``results.md`` (the table :func:`results_table` builds, as Markdown) and
``results.png``. Every stage is resumable: re-running the command skips what is done.

``results.json`` accumulates over invocations on one folder (:mod:`pkd.demo.results_file`: an
invocation's rows replace those with the same ``(method, seed, data_seed, split)``, the others
stay; ``pkd results OUT`` rebuilds every table from it): ``{"elapsed_s": float, "rows":
[{"method", "seed", "data_seed", "split", "overall", "perAnswerType", "perQuestionType",
"ms_per_question", "prior", "prior_gold"}]}`` (``data_seed``: the data draw, 0 when absent;
percent, official metric; model forward time per question while evaluating; share of answers
that are the training favourite of their question type, and the share of gold answers that
are — :mod:`pkd.data.prior`) plus
``"models"`` (parameter counts), ``"draws"`` (per data draw: ``"region_probes"``, the
linear-probe accuracy of shape and colour from each regions store, :mod:`pkd.demo.probe`;
``"foundation_probes"``; ``"blind_rules"``, :mod:`pkd.demo.blind`; ``"answer_priors"``) and
``"stage_seconds"`` (wall time of each stage, summed over the processes of ``--jobs``; a
resumed stage costs ~0) — dicts merged key by key over invocations — ``"elapsed_s"``,
``"preset"``, ``"machine"`` of the latest invocation, ``"invocations"`` (one entry each:
``elapsed_s``, ``machine``, ``preset``, ``methods``, ``finished``) and ``"summary"``
(:func:`summarize`: per method and split, ``mean``, ``ci_low``, ``ci_high`` — the 95%
Student-t interval over seeds, or over data draws' means when there are several, None for one
seed — ``n``, ``seeds``, ``data_seeds``, ``runs``, and the paired difference of overall
accuracy to the ``reference`` row on the same runs, ``diff_mean``, ``diff_ci_low``,
``diff_ci_high``; :data:`REFERENCE`).

The demo's models are tiny and randomly initialised where no pre-trained weights exist (the
region backbones): the numbers show the methods' mechanics on this benchmark, not their
published results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pkd.demo.jobs import locked, run_tasks, threads_per_job
from pkd.demo.vlm import (
    PREDICTOR_RUNS,
    VLM_NEEDS,
    VLM_ROWS,
    forgetting,
    forgetting_table,
    make_wise_ft,
    prepare_vlm,
    vlm_overrides,
)
from pkd.fsio import write_json

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
KNOWN = (*MAIN_METHODS, "student-best", *ABLATIONS, *SWEEPS, *READINGS, *ALIGNMENT, *DEBIAS,
         *CONTROLS, *POSTHOC_ROWS,
         "pkd-lmh", *VLM_ROWS)
# the README's table (pkd demo --preset full): the main rows, the reference debiasing rows, the
# ablations and PKD on LMH (D trained with LMH's loss, paired to lmh)
# v6: the headline rows on 3 seeds x 3 draws (the ablations with --ablations)
# student-best: the undistilled student at its plateau budget (DistillVLM trains the student's
# equal steps; both comparisons are in the grounding checks)
FULL_METHODS = (*MAIN_METHODS, "student-best", *DEBIAS, *CONTROLS, *POSTHOC_ROWS, "pkd-lmh")

STUDENT = {"model.arch": "fusion", "model.hidden_size": 64, "model.num_layers": 2,
           "model.num_heads": 2, "model.intermediate_size": 128, "model.dropout": 0.0}
TEACHER = {"method.distill.teacher_model.arch": "fusion",
           "method.distill.teacher_model.hidden_size": 128,
           "method.distill.teacher_model.num_layers": 4,
           "method.distill.teacher_model.num_heads": 4,
           "method.distill.teacher_model.intermediate_size": 256,
           "method.distill.teacher_model.dropout": 0.0}
# the fusion transformers' optimizer, chosen on draw 0's val (quick size, README "Benchmark v6"):
# the v5 settings (lr 5e-4, no warmup, clip 0.25) left the student answering the prior (val 77.5,
# the favourite rule's score) after 10 epochs; these reach 81.4 (student, 30 epochs) and 84.3
# (teacher, 20 epochs; UpDn 83.8)
TRANSFORMER_OPTIM = {"optim.lr": 0.001, "optim.warmup_steps": 100, "optim.grad_clip": 1.0}
# predicted tokens pooled to 8 per modality and L_mkd on an eighth of each batch, with the frozen
# stage-1 outputs cached (data.predicted): a stage-2 step costs ~1.7x the baseline's instead of
# ~9-12x (benchmarks/bench_steps.py)
PKD = {"method.pkd.predictor_hidden": 64, "method.pkd.predictor_layers": 1,
       "method.pkd.memory_size": 256, "method.pkd.kd_temperature": 4.0,
       "method.pkd.predictor_tokens": 8, "method.pkd.mkd_fraction": 0.125}

# PKD's item reading: D's foundation inputs are its own item's predicted embeddings e_v, e_t
ITEM = {"model.use_foundation_features": True, "model.foundation_inputs": "predicted"}
# L_div on the foundation head's embeddings of ṽ, t̃ (cosine to the real item's e_I, e_Q)
EMB = {"method.pkd.divergence_on": "embeddings", "method.pkd.divergence": "cosine"}


def _synth_defaults() -> SynthConfig:
    from pkd.data.synth import SynthConfig  # numpy & co. load only when a demo is built

    return SynthConfig()


@dataclass
class DemoConfig:
    out: Path  # everything goes here: draw{d}/ (data/, foundation/, stores/, runs/), results.json
    seeds: int = 1  # training seeds per method (and data draw)
    data_seeds: tuple[int, ...] = (0,)  # benchmark draws (SynthConfig.seed): each its own folder
    methods: tuple[str, ...] = MAIN_METHODS  # rows of the results table (see ABLATIONS too)
    synth: SynthConfig = field(default_factory=lambda: _synth_defaults())  # the benchmark
    pretrain_epochs: int = 6  # caption ITC epochs of the demo foundation model (stage B)
    pretrain_tag_epochs: int = 12  # stage A: image-tower tagging epochs, then the tower is locked for the ITC (0 = a plain ITC from scratch; pkd.train.pretrain.tag_pretrain)
    train_epochs: int = 10  # VQA training epochs per run (UpDn, PKD, debiasing rows)
    student_epochs: int = 30  # the fusion student's epochs (DistillVLM: the same, equal steps)
    student_best_epochs: int = 120  # the student at its val plateau (row student-best)
    teacher_epochs: int = 20  # the fusion teacher's epochs (adapted on the student's regions)
    batch_size: int = 64  # VQA training batch size
    vlm_epochs: int = 6  # fine-tuning epochs of the rows in PKD's setting (pkd.demo.vlm)
    vlm_pretrain_epochs: int = 10  # F0's masked-LM + matching pre-training epochs on the captions (10: 6 min on one core at quick size)
    preset: str = "quick"  # the size name printed with the results (see DemoConfig.of)
    jobs: int = 1  # runs trained side by side, in processes (pkd.demo.jobs)

    @classmethod
    def of(cls, preset: str, out: Path, **overrides) -> DemoConfig:
        """The demo of one size: ``quick`` (the README's main command: one seed, the main
        methods, ≤ 10 min on 2 cores) or ``full`` (the README's table: 3 seeds x data draws
        1-3, the headline rows, the full-size benchmark :meth:`SynthConfig.preset`); ``overrides``
        replace fields."""
        from pkd.data.synth import SynthConfig
        from pkd.errors import PkdError

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
    # draws 1-3: nothing was tuned on them (design choices are made on draw 0 and val)
    "full": {"seeds": 3, "data_seeds": (1, 2, 3), "methods": FULL_METHODS, "pretrain_epochs": 6,
             "pretrain_tag_epochs": 12, "train_epochs": 8, "student_epochs": 24,
             "student_best_epochs": 72, "teacher_epochs": 16},
}


def draw_config(cfg: DemoConfig, draw: int) -> DemoConfig:
    """The demo of one data draw: the benchmark generated with ``SynthConfig.seed = draw`` in
    ``OUT/draw{draw}``, with its own foundation model and region backbones (seeded from the
    draw), stores and runs."""
    from dataclasses import replace

    return replace(cfg, out=cfg.out / f"draw{draw}", synth=replace(cfg.synth, seed=draw),
                   data_seeds=(draw,))


@dataclass
class Paths:
    data: Path
    foundation: Path
    stores: Path

    def store(self, name: str) -> Path:
        return self.stores / name


def _stage(label: str) -> None:
    print(f"[demo] {label}", flush=True)


def prepare(cfg: DemoConfig) -> Paths:
    """Data, foundation model, backbones and every store the methods read (each step once)."""
    from pkd.data.synth import SYNTH_VERSION, generate
    from pkd.errors import PkdError
    from pkd.train.pretrain import PretrainConfig, pretrain
    from pkd.train.pretrain.regions import RegionPretrainConfig, pretrain_regions

    out = cfg.out
    paths = Paths(out / "data", out / "foundation", out / "stores")
    meta = paths.data / "synth_meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("version") != SYNTH_VERSION:
        raise PkdError(f"{paths.data}: a benchmark of another version (this pkd writes version "
                       f"{SYNTH_VERSION}); give a fresh --out folder")
    if meta.is_file():
        check_same_benchmark(json.loads(meta.read_text()).get("config", {}), cfg, paths.data)
    else:
        _stage("generating the synthetic benchmark")
        generate(cfg.synth, paths.data)
    if not (paths.foundation / "pretrain_metrics.json").is_file():
        _stage("pre-training the demo foundation model on the caption corpus")
        pretrain(PretrainConfig(data_dir=paths.data, out_dir=paths.foundation,
                                epochs=cfg.pretrain_epochs, tag_epochs=cfg.pretrain_tag_epochs,
                                lock_vision=cfg.pretrain_tag_epochs > 0, seed=cfg.synth.seed))
    for size, epochs, seed in (("student", 0, 0), ("teacher", 2, 1)):  # trained like bottom-up's
        if not (out / f"backbone-{size}" / "config.json").is_file():
            _stage(f"training the {size} region backbone on the detection corpus")
            pretrain_regions(RegionPretrainConfig(
                data_dir=paths.data, out_dir=out / f"backbone-{size}", size=size, epochs=epochs,
                seed=seed + 2 * cfg.synth.seed))  # draw 0: seeds 0, 1
    extract(cfg, paths)
    if any(m in VLM_ROWS for m in cfg.methods):
        _stage("extracting the caption images' regions; pre-training F0 (tiny LXMERT) on captions")
        prepare_vlm(paths.data, out, paths.stores, cfg.synth.max_objects, cfg.vlm_pretrain_epochs,
                    cfg.synth.seed, threads_per_job(cfg.jobs) if cfg.jobs > 1 else 0)
    return paths


def check_same_benchmark(saved: dict, cfg: DemoConfig, where: Path) -> None:
    """Refuse a data folder generated with another :class:`SynthConfig` (e.g. the quick size
    when ``--preset full`` is asked), naming the first field that differs. A field the saved
    config lacks was added later within the same ``SYNTH_VERSION``, whose default reproduces
    the earlier output: it counts as its default."""
    from dataclasses import asdict

    from pkd.data.synth import SynthConfig
    from pkd.errors import PkdError

    wanted = json.loads(json.dumps(asdict(cfg.synth)))  # tuples -> lists, as in the file
    defaults = json.loads(json.dumps(asdict(SynthConfig())))
    for key, value in wanted.items():
        got = saved.get(key, defaults[key])
        if got != value:
            raise PkdError(f"{where}: generated with {key}={got!r}, this demo "
                           f"({cfg.preset}) needs {value!r}; give another --out folder")


def machine() -> dict:
    """The CPU model and usable cores the timings were measured on (timings differ ~3x
    between machines of one kind)."""
    import platform

    from pkd.cores import usable_cores

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": usable_cores()}


def extract(cfg: DemoConfig, paths: Paths) -> None:
    from pkd.pipeline.extract import (
        FoundationRecipe,
        RegionRecipe,
        extract_foundation,
        extract_regions,
    )
    from pkd.pipeline.runner import RunOptions
    from pkd.pipeline.sources import SourceConfig

    source = SourceConfig(root=paths.data, splits=("train", "val", *SPLITS))
    opts = RunOptions(items_per_shard=256)
    _stage("extracting foundation features (images, questions)")
    extract_foundation(FoundationRecipe(source, str(paths.foundation)), paths.stores, opts)
    _stage("extracting student regions (given boxes) and aligned teacher regions (same boxes)")
    student = RegionRecipe(source, detector=f"given:{paths.data / 'boxes.json'}",
                           backbone=str(cfg.out / "backbone-student"),
                           max_boxes=cfg.synth.max_objects)
    extract_regions(student, paths.store("regions.zarr"), opts)
    teacher = RegionRecipe(source, boxes_from=str(paths.store("regions.zarr")),
                           backbone=str(cfg.out / "backbone-teacher"))
    extract_regions(teacher, paths.store("teacher_regions.zarr"), opts)
    if any(m in ALIGNMENT for m in cfg.methods):  # the teacher's own detector (simulated)
        _stage("extracting teacher regions on the teacher's own simulated detector's boxes")
        own = RegionRecipe(source, detector=f"simulated:teacher:{paths.data / 'boxes.json'}",
                           backbone=str(cfg.out / "backbone-teacher"),
                           max_boxes=cfg.synth.max_objects + 2)
        extract_regions(own, paths.store(OWN_REGIONS), opts)


OWN_REGIONS = "teacher_own_regions.zarr"  # teacher features on its own detector's boxes


def run_dir(cfg: DemoConfig, name: str, seed: int) -> Path:
    return cfg.out / "runs" / f"{name}-seed{seed}"


def overrides(cfg: DemoConfig, paths: Paths, name: str, seed: int) -> dict:
    """The config of one demo run: shared settings + the method's own (one table, explicit)."""
    base = {
        "data.root": paths.data, "data.regions": paths.store("regions.zarr"),
        "data.foundation_image": paths.store("foundation_images.zarr"),
        "data.foundation_text": paths.store("foundation_questions.zarr"),
        "data.teacher_regions": paths.store("teacher_regions.zarr"),
        "data.answer_min_count": 1, "model.hidden_size": 256, "model.word_dim": 64,
        "run.seed": seed, "run.out_dir": run_dir(cfg, name, seed), "run.epochs": cfg.train_epochs,
        "run.batch_size": cfg.batch_size, "run.eval_every": 0, "run.checkpoint_every": 0,
        "run.log_every": 20, "run.device": "auto", "optim.lr": 0.002,
        **({"run.threads": threads_per_job(cfg.jobs)} if cfg.jobs > 1 else {}),
    }
    teacher_run = run_dir(cfg, "teacher", seed)
    distill = {**STUDENT, **TEACHER, "method.name": "distillvlm", **TRANSFORMER_OPTIM,
               "run.epochs": cfg.student_epochs,
               "method.distill.teacher_checkpoint": teacher_run / "best",
               "data.teacher": paths.store(f"teacher-seed{seed}.zarr")}
    pkd = {**PKD, "method.name": "pkd", "method.pkd.predictors": run_dir(cfg, "predictors", seed),
           "data.predicted": paths.store(f"predicted-seed{seed}.zarr")}  # frozen stage 1, cached
    specific = {
        "baseline": {"method.name": "baseline"},
        # reference, not a method: the foundation model's own embeddings of the real image and
        # question as extra inputs, at training and test time (PKD never sees them at test time)
        "baseline-foundation": {"method.name": "baseline", "model.use_foundation_features": True},
        "predictors": {**PKD, "method.name": "pkd-predictors",
                       "run.epochs": max(1, cfg.train_epochs // 2)},
        "pkd": pkd,
        "pkd-memory": {**pkd, "method.pkd.use_memory": False},
        "pkd-model-kd": {**pkd, "method.pkd.use_model_kd": False},
        "pkd-predictors-off": {**pkd, "method.pkd.use_predictors": False,
                               "method.pkd.learnable_slots": 64},
        "pkd-mkd0.3": {**pkd, "method.pkd.lambda_mkd": 0.3},
        "pkd-mkd3": {**pkd, "method.pkd.lambda_mkd": 3.0},
        "pkd-kdT1": {**pkd, "method.pkd.kd_temperature": 1.0},
        "pkd-lmh": {**pkd, "method.pkd.vqa_loss": "lmh"},  # same stage 1 and cache as pkd
        "pkd-memory-train": {**pkd, "method.pkd.memory_at_test": False},
        "pkd-memory-features": {**pkd, "method.pkd.memory_holds": "features"},
        # stage 2 trains the predictors too (L_itm, L_div on): no cache of their outputs
        "pkd-finetune": {**pkd, "method.pkd.finetune_predictors": True, "data.predicted": '""'},
        "pkd-item": {**pkd, **ITEM, "method.pkd.use_memory": False,
                     "method.pkd.use_model_kd": False},
        "pkd-item-full": {**pkd, **ITEM},
        # twice the VQA epochs (full size: 6, the other stage-1 runs 1): after one epoch e_v's
        # own-image R@1 is 0.8% of the 5,000 test images, after six 2.9% (chance 0.02%)
        "predictors-emb": {**PKD, **EMB, "method.name": "pkd-predictors",
                           "run.epochs": max(1, 2 * cfg.train_epochs)},
        "pkd-item-emb": {**pkd, **ITEM, **EMB, "method.pkd.use_memory": False,
                         "method.pkd.use_model_kd": False,
                         "method.pkd.predictors": run_dir(cfg, "predictors-emb", seed),
                         "data.predicted": paths.store(f"predicted-emb-seed{seed}.zarr")},
        "predictors-mmd": {**PKD, "method.name": "pkd-predictors", "method.pkd.divergence": "mmd",
                           "run.epochs": max(1, cfg.train_epochs // 2)},
        "pkd-mmd": {**pkd, "method.pkd.divergence": "mmd",
                    "method.pkd.predictors": run_dir(cfg, "predictors-mmd", seed),
                    "data.predicted": paths.store(f"predicted-mmd-seed{seed}.zarr")},
        "predictors-cross": {**PKD, "method.name": "pkd-predictors",
                             "method.pkd.predictor_inputs": "cross",
                             "run.epochs": max(1, cfg.train_epochs // 2)},
        "pkd-cross": {**pkd, "method.pkd.predictor_inputs": "cross",
                      "method.pkd.predictors": run_dir(cfg, "predictors-cross", seed),
                      "data.predicted": paths.store(f"predicted-cross-seed{seed}.zarr")},
        "question-only": {"method.name": "question-only"},
        "rubi": {"method.name": "rubi", "method.rubi.branch_dims": [256, 256]},  # = hidden size
        "lmh": {"method.name": "lmh"},
        "teacher": {**TEACHER, "method.name": "teacher-adapt", **TRANSFORMER_OPTIM,
                    "run.epochs": cfg.teacher_epochs},
        "student": {**STUDENT, "method.name": "baseline", **TRANSFORMER_OPTIM,
                    "run.epochs": cfg.student_epochs},
        "student-best": {**STUDENT, "method.name": "baseline", **TRANSFORMER_OPTIM,
                         "run.epochs": cfg.student_best_epochs},
        "distillvlm": distill,
        "distillvlm-att": {**distill, "method.distill.alpha": 0.0},
        "distillvlm-nce": {**distill, "method.distill.beta": 0.0},
        "distillvlm-kd": {**distill, "method.distill.gamma": 0.0},
        "distillvlm-queue256": {**distill, "method.distill.queue_size": 256},
        "distillvlm-queue16384": {**distill, "method.distill.queue_size": 16384},
        "teacher-own": {**TEACHER, "method.name": "teacher-adapt", **TRANSFORMER_OPTIM,
                        "run.epochs": cfg.teacher_epochs,
                        "data.teacher_regions": paths.store(OWN_REGIONS)},
        "distillvlm-unaligned": {**distill, "data.teacher_regions": paths.store(OWN_REGIONS),
                                 "method.distill.alignment": "index",
                                 "method.distill.online_teacher": True, "data.teacher": '""',
                                 "method.distill.teacher_checkpoint":
                                     run_dir(cfg, "teacher-own", seed) / "best"},
    }
    if name in (*VLM_ROWS, *PREDICTOR_RUNS):
        return {**base, **vlm_overrides(cfg.out, paths.stores, name, cfg.vlm_epochs,
                                        lambda row: run_dir(cfg, row, seed))}
    return {**base, **specific[name]}


NEEDS = {"pkd": ("predictors",), "distillvlm": ("teacher",),  # runs a method builds on
         "pkd-cross": ("predictors-cross",), "pkd-mmd": ("predictors-mmd",),
         "pkd-item-emb": ("predictors-emb",),
         "distillvlm-unaligned": ("teacher-own",), **VLM_NEEDS}


def needs(name: str) -> tuple[str, ...]:
    """The runs ``name`` builds on: its own entry of :data:`NEEDS`, else its family's."""
    return NEEDS.get(name, NEEDS.get(name.split("-")[0], ()))


def _complete(store: str) -> bool:
    """A cache store that exists with every shard written (an interrupted one resumes)."""
    from pkd.stores import FeatureStore

    return (Path(store) / "zarr.json").is_file() and FeatureStore.open(store).complete


def train_run(cfg: DemoConfig, paths: Paths, name: str, seed: int) -> Path:
    """Train one run (and what it builds on) unless it is finished; return its folder."""
    from pkd.train.config import load_config
    from pkd.train.loop import fit

    for need in needs(name):
        train_run(cfg, paths, need, seed)
    if name == "wise-ft":  # nothing trained: the fine-tuned run mixed with F0
        with locked(cfg.out, f"wise-ft-seed{seed}"):
            return make_wise_ft(run_dir(cfg, "finetune", seed), run_dir(cfg, name, seed))
    tcfg = load_config(None, [f"{k}={v}" for k, v in overrides(cfg, paths, name, seed).items()])
    run = Path(tcfg.run.out_dir)
    with locked(cfg.out, run.name):  # one process per run (pkd.demo.jobs)
        if name.startswith("distillvlm") and not tcfg.method.distill.online_teacher:
            with locked(cfg.out, Path(tcfg.data.teacher).name):  # shared by a seed's rows
                if not _complete(tcfg.data.teacher):
                    from pkd.train.teacher_extract import extract_teacher

                    _stage(f"caching the adapted teacher (seed {seed})")
                    extract_teacher(tcfg)
        if name.startswith("pkd") and tcfg.data.predicted and tcfg.method.pkd.use_predictors:
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
    from pkd.train.prepare import CARVED_VAL, reads_predicted, val_split_name

    if not _complete(tcfg.data.predicted):
        from pkd.train.predicted_extract import extract_predicted

        _stage(f"caching the frozen PKD predictors' outputs (seed {seed})")
        extract_predicted(tcfg)
    if reads_predicted(tcfg):
        from pkd.train.predicted_extract import split_predictions

        for split in dict.fromkeys((val_split_name(tcfg), *SPLITS)):
            if split != CARVED_VAL:  # the training split's store covers it
                split_predictions(tcfg, split)


def evaluate_run(run: Path, name: str, seed: int) -> list[dict]:
    """One row per split of a finished run (official metric, inference time, prior shares,
    per answer and question type); reused from ``RUN/demo_rows.json`` while the run and the split
    files are unchanged (:mod:`pkd.demo.row_cache`)."""
    from pkd.data.vqa import dataset_files
    from pkd.demo.row_cache import cached_rows
    from pkd.train.config import load_config
    from pkd.train.predict import evaluate_checkpoint

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
    from pkd.data.metric import evaluate_files
    from pkd.data.prior import dominant_answers, inverted_prior_answers, prior_agreement
    from pkd.data.vqa import dataset_files, load_annotations

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
    """Run (or finish) the demo; write ``results.json``, ``.md`` and ``.png``; return the results."""
    from pkd.errors import PkdError

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


def prepare_draw(cfg: DemoConfig, draw: int, jobs: int = 1) -> Paths:
    """:func:`prepare` of one data draw (:func:`draw_config`), under its lock; with ``jobs``
    draws prepared side by side, in a worker with its share of the cores."""
    dcfg = draw_config(cfg, draw)
    if jobs > 1:
        import torch

        torch.set_num_threads(threads_per_job(jobs))
    with locked(dcfg.out, "prepare"):
        return prepare(dcfg)


def draw_facts(paths: Paths) -> dict:
    """What one draw's inputs are: region probes, foundation probes, its answer priors and the
    blind-rule table of its benchmark (``synth_meta.json``, :mod:`pkd.data.blind_rules`)."""
    meta = json.loads((paths.data / "synth_meta.json").read_text())
    return {"region_probes": region_probes(paths), "foundation_probes": foundation_probes(paths),
            "blind_rules": meta["priors"]["blind_rules"], "answer_priors": meta["answer_priors"]}


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
    from pkd.demo.controls import POSTHOC, posthoc_rows

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
    from pkd.demo.results_file import merge_into, write_tables

    merge_into(results, out)
    write_tables(results, out)
    return results


def region_probes(paths: Paths) -> dict:
    """Linear-probe accuracy of shape and colour from each regions store (train -> test images):
    what the VQA models can see at all (:mod:`pkd.demo.probe`)."""
    from pkd.demo.probe import probe_benchmark_store

    return {name: probe_benchmark_store(paths.store(f"{name}.zarr"), paths.data)
            for name in ("regions", "teacher_regions")}


def foundation_probes(paths: Paths) -> dict:
    """Zero-shot probes (colour, shape, size) and retrieval of the demo foundation model on
    its held-out caption images, as measured by pre-training (``pretrain_metrics.json``)."""
    metrics = json.loads((paths.foundation / "pretrain_metrics.json").read_text())
    return {"probes": {k: v["accuracy"] for k, v in metrics.get("probes", {}).items()},
            "retrieval": metrics.get("retrieval", {})}


def model_sizes(cfg: DemoConfig) -> dict:
    """Parameter count of each trained method's VQA model (seed 0, best checkpoint)."""
    from safetensors.torch import load_file

    from pkd.train.checkpoint import resolve_checkpoint

    sizes = {}
    for name in cfg.methods:
        best = run_dir(cfg, name, 0) / "best"
        if (best / "latest.json").is_file():
            weights = load_file(str(resolve_checkpoint(best) / "model.safetensors"))
            sizes[name] = sum(t.numel() for k, t in weights.items() if "memory" not in k)
    return sizes


# The row each method's paired difference is taken to (same seeds, same stores): the model it
# changes. DistillVLM rows compress the teacher into the student; every other row (PKD, its
# ablations and sweeps, the debiasing methods, the teacher) is compared with the baseline.
# The references themselves (None) have no difference.
REFERENCE: dict[str, str | None] = {
    "baseline": None, "student": None, "student-best": None,
    "distillvlm": "student", "distillvlm-att": "student", "distillvlm-nce": "student",
    "distillvlm-kd": "student", "distillvlm-queue256": "student",
    "distillvlm-queue16384": "student",
    "teacher-own": "teacher", "distillvlm-unaligned": "distillvlm",  # the alignment ablation
    # PKD's setting (pkd.demo.vlm): every row against plain fine-tuning, which is compared
    # with the zero-shot foundation model
    "finetune": "zero-shot", "zero-shot": None,
    **{row: "finetune" for row in VLM_ROWS if row not in ("finetune", "zero-shot")},
    "pkd-lmh": "lmh",  # PKD on a debiasing base: its gain over that base
}


# Further rows a method must beat, paired like its reference (grounding checks,
# :func:`checks_table`): the controls scored on the baseline run itself (its training favourite
# masked, its answers corrected by the training prior) for the debiasing methods and PKD; the
# student at equal steps and at its plateau budget (student-best) for DistillVLM.
CONTROLS_BEATEN = ("baseline-masked", "baseline-prior-corrected")
CHECKS: dict[str, tuple[str, ...]] = {
    "lmh": CONTROLS_BEATEN, "rubi": CONTROLS_BEATEN, "pkd": CONTROLS_BEATEN,
    "distillvlm": ("student", "student-best"),
}


def reference_of(method: str) -> str | None:
    """The reference row of ``method`` (:data:`REFERENCE`, default ``"baseline"``)."""
    return REFERENCE.get(method, "baseline")


RunsOf = dict[tuple[str, str], dict[tuple[int, int], float]]  # (method, split) -> runs


def _overall_runs(rows: list[dict]) -> RunsOf:
    """``{(method, split): {(seed, data_seed): overall}}`` (:func:`pkd.demo.draws.run_key`)."""
    from pkd.demo.draws import run_key

    out: RunsOf = {}
    for r in rows:
        out.setdefault((r["method"], r["split"]), {})[run_key(r)] = r["overall"]
    return out


def _over_seeds(runs: dict[tuple[int, int], float]) -> dict:
    """``mean``, ``ci_low``, ``ci_high`` (95% t interval over seeds, or over the data draws'
    means with several draws; None for one seed: :mod:`pkd.demo.draws`), ``n`` (seeds, or
    draws), ``seeds``, ``data_seeds`` (sorted distinct) and ``runs`` (seed, draw pairs)."""
    from pkd.demo.draws import mean_over_runs

    e = mean_over_runs(runs)
    return {"mean": e.mean, "ci_low": e.low, "ci_high": e.high, "n": e.n,
            "seeds": sorted({s for s, _ in runs}), "data_seeds": sorted({d for _, d in runs}),
            "runs": len(runs)}


def _paired(method: str, split: str, overall: RunsOf) -> dict:
    """``reference`` (:func:`reference_of`) and the paired difference of overall accuracy to it
    on the same runs: ``diff_mean``, ``diff_ci_low``, ``diff_ci_high``
    (None without a reference row; the interval None for one seed), over seeds or data draws
    (:func:`pkd.demo.draws.paired_over_runs`). Unpaired runs are a PkdError."""
    from pkd.demo.draws import paired_over_runs

    ref = reference_of(method)
    none = {"reference": ref, "diff_mean": None, "diff_ci_low": None, "diff_ci_high": None}
    if ref is None or (ref, split) not in overall:
        return none
    d = paired_over_runs(overall[(method, split)], overall[(ref, split)],
                         names=(f"{method} ({split})", ref))
    return {**none, "diff_mean": d.mean, "diff_ci_low": d.low, "diff_ci_high": d.high}


def summarize(rows: list[dict]) -> list[dict]:
    """Per (method, split), over its runs ``x_{d,s}`` (data draw ``d`` = ``data_seed``, 0 when
    absent; seed ``s``): overall accuracy's mean with its 95% Student-t CI, ``n``, ``seeds``,
    ``data_seeds`` and ``runs``; the paired difference to the reference row (:func:`_paired`);
    and the plain means over runs of the answer types, prior shares and timing.

    One draw: over seeds, ``mean ± t_{0.975, n-1} s / sqrt(n)`` (:func:`pkd.stats.mean_ci`;
    ``ci_low``/``ci_high`` None with one seed), ``n`` = seeds. D > 1 draws: the two-stage
    (cluster) estimator, ``m_d = mean_s x_{d,s}``, ``mean = (1/D) Σ_d m_d``, ``mean ±
    t_{0.975, D-1} s_m / sqrt(D)`` with ``s_m`` the sd of the draw means, ``n`` = D: the
    variance of the grand mean is ``s²_m / D``, which holds the seed noise too (``Var(m_d) =
    σ²_draw + σ²_seed / |S_d|``). The paired difference is the same estimator on
    ``x_{d,s} - ref_{d,s}`` over the runs both rows hold (:mod:`pkd.demo.draws`)."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["split"]), []).append(r)
    overall = _overall_runs(rows)
    out = []
    for (m, s), rs in groups.items():
        types = sorted({t for r in rs for t in r["perAnswerType"]})
        out.append({"method": m, "split": s, **_over_seeds(overall[(m, s)]),
                    **_paired(m, s, overall),
                    **{k: float(np.mean([r.get(k, np.nan) for r in rs]))
                       for k in ("ms_per_question", "prior", "prior_gold")},
                    "perAnswerType": {t: float(np.mean([r["perAnswerType"].get(t, 0.0)
                                                        for r in rs])) for t in types}})
    return out


def overall_cell(s: dict) -> str:
    """``mean ± half-width`` of the 95% CI over seeds; the bare mean for one seed."""
    if s["ci_low"] is None:
        return f"{s['mean']:.2f}"
    return f"{s['mean']:.2f} ± {(s['ci_high'] - s['ci_low']) / 2:.2f}"


def delta_cell(s: dict) -> str:
    """``vs baseline +1.70 [+0.30, +3.10]`` (paired Δ and its 95% CI); no interval for one
    seed; empty for a reference row or when the reference row was not run."""
    if s["diff_mean"] is None:
        return ""
    cell = f"vs {s['reference']} {s['diff_mean']:+.2f}"
    if s["diff_ci_low"] is not None:
        cell += f" [{s['diff_ci_low']:+.2f}, {s['diff_ci_high']:+.2f}]"
    return cell


def results_table(results: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The results table of ``pkd demo`` and ``results.md``: title, header, one row of cells per
    (method, split) and the notes printed under it. Overall accuracy is ``mean ± hw`` (hw: half
    the 95% t interval over seeds), the bare mean where a row has one seed; ``paired Δ`` is its
    difference to the reference row on the same seeds with that difference's 95% interval.
    With several data draws the intervals are over the draws' means (:func:`summarize`) and a
    ``draws`` column counts each row's draws."""
    summary = summarize(results["rows"])
    seeds = max((len(s["seeds"]) for s in summary), default=0)
    draws = max((len(s["data_seeds"]) for s in summary), default=0)
    title = f"pkd demo — VQA accuracy (%), {seeds} seed{'' if seeds == 1 else 's'}"
    if draws > 1:
        title += f" x {draws} data draws"
    types = sorted({t for s in summary for t in s["perAnswerType"]})
    several = any(s["n"] > 1 for s in summary)
    header = ["method", "split", "overall (mean ± 95% CI)" if several else "overall", "seeds",
              *(["draws"] if draws > 1 else []),
              "paired Δ", *types, "prior %", "params", "µs/question"]
    params = results.get("models", {})
    rows = [[s["method"], s["split"], overall_cell(s), str(len(s["seeds"])),
             *([str(len(s["data_seeds"]))] if draws > 1 else []), delta_cell(s),
             *(f"{s['perAnswerType'].get(t, 0.0):.2f}" for t in types),
             f"{s['prior']:.1f}",
             f"{params[s['method']]:,}" if s["method"] in params else "",
             f"{1000 * s['ms_per_question']:.0f}"] for s in summary]
    return title, header, rows, _table_notes(summary, several) + _probe_notes(results)


def _probe_notes(results: dict) -> list[str]:
    """What the inputs can carry: linear probes of the region stores, zero-shot probes of the
    foundation model, and where the timings come from."""
    notes = []
    draws = results.get("draws") or {"0": results}  # an older file: its probes at the top
    for d, facts in sorted(draws.items(), key=lambda kv: int(kv[0])):
        where = f"draw {d} " if len(draws) > 1 else ""
        regions = facts.get("region_probes", {})
        if regions:
            notes.append(f"{where}region probes (linear, test images): " + "; ".join(
                f"{store} shape {p['shape']['accuracy']:.1f}%, colour "
                f"{p['color']['accuracy']:.1f}%" for store, p in regions.items()))
        probes = facts.get("foundation_probes", {}).get("probes", {})
        if probes:
            notes.append(f"{where}foundation zero-shot probes (held-out caption images): "
                         + ", ".join(f"{k} {v:.1f}%" for k, v in probes.items() if v is not None))
    if "machine" in results:
        m = results["machine"]
        notes.append(f"{results.get('preset', '')} size, {results['elapsed_s']:.0f} s in this "
                     f"invocation on {m['cpu']} ({m['cores']} cores)")
    return notes


def _table_notes(summary: list[dict], several: bool) -> list[str]:
    notes = []
    if any(len(s["data_seeds"]) > 1 for s in summary):
        notes.append("overall: mean over data draws of each draw's mean over seeds ± half-width "
                     "of the 95% Student-t interval over the draw means (it holds the seed "
                     "noise too); paired Δ: per draw, the mean over seeds of (row - reference) "
                     "on the same runs, then the mean over draws [95% t interval over draws]")
    elif several:
        notes.append("overall: mean ± half-width of the 95% Student-t interval over seeds; "
                     "paired Δ: mean over seeds of (row - reference) on the same seeds "
                     "[95% t interval]")
    elif summary:
        notes.append("paired Δ: row - reference on the same seed; one seed gives no interval "
                     "(a single seed is an anecdote: use --seeds 5)")
    present = {(s["method"], s["split"]) for s in summary}
    absent = sorted({s["reference"] for s in summary
                     if s["reference"] and (s["reference"], s["split"]) not in present})
    if absent:
        notes.append(f"paired Δ blank: reference row not run ({', '.join(absent)})")
    gold = {s["split"]: s["prior_gold"] for s in summary}
    if gold:
        notes.append("prior %: answers that are the training favourite of their question type "
                     "(gold " + ", ".join(f"{k} {v:.1f}%" for k, v in gold.items()) + ")")
    return notes


TEXT_COLUMNS = 2  # method, split: left-aligned; the other columns are numbers (right-aligned)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, its columns padded to a common width so it also reads as plain text."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    cells = [[cell(c) for c in r] for r in [header, *rows]]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < TEXT_COLUMNS else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    rule = "| " + " | ".join("-" * w if i < TEXT_COLUMNS else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def results_markdown(results: dict) -> str:
    """``results.md``: the title, the table of :func:`results_table` and its notes, then the
    grounding checks of :func:`checks_table` where any pair of its rows was run."""
    title, header, rows, notes = results_table(results)
    parts = [f"## {title}", markdown_table(header, rows), *notes]
    for title, header, rows, notes in extra_tables(results):
        parts += [f"### {title}", markdown_table(header, rows), *notes]
    return "\n\n".join(parts) + "\n"


def extra_tables(results: dict) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """The tables printed under the results table, those with rows: the grounding checks
    (:func:`checks_table`) and the blind rules with the benchmark's targets
    (:func:`pkd.demo.blind.blind_table`)."""
    from pkd.demo.blind import blind_table

    return [t for t in (checks_table(results), forgetting_table(results), blind_table(results))
            if t[2]]


def verdict(d) -> str:
    """``beats`` when the 95% CI of a paired Δ (:class:`pkd.stats.Estimate`) lies above 0,
    ``loses`` below 0, ``n.s.`` when it covers 0, ``anecdote`` without an interval (one run)."""
    if d.low is None:
        return "anecdote"
    return "beats" if d.low > 0 else "loses" if d.high < 0 else "n.s."


def checks_table(results: dict) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The grounding checks (title, header, rows, notes): for each (method, other) of
    :data:`CHECKS` whose rows both exist, per split, the paired Δ of overall accuracy
    ``method - other`` on the same runs with its 95% CI (the estimator of :func:`summarize`,
    over seeds or data draws) and its :func:`verdict`. No rows when no such pair was run."""
    from pkd.demo.draws import paired_over_runs

    overall = _overall_runs(results["rows"])
    splits = list(dict.fromkeys(split for _, split in overall))
    rows = []
    for method, others in CHECKS.items():
        for other in others:
            for split in splits:
                if (method, split) not in overall or (other, split) not in overall:
                    continue
                d = paired_over_runs(overall[(method, split)], overall[(other, split)],
                                     names=(f"{method} ({split})", other))
                cell = f"{d.mean:+.2f}" + ("" if d.low is None
                                           else f" [{d.low:+.2f}, {d.high:+.2f}]")
                rows.append([method, split, other, cell, str(d.n), verdict(d)])
    header = ["method", "split", "must beat", "paired Δ (95% CI)", "n", "verdict"]
    if all(r[-1] == "anecdote" for r in rows):
        notes = ["paired Δ: row - the row it must beat on the same seed; one seed gives no "
                 "interval, so every verdict is an anecdote (use --seeds 5)"]
    else:
        notes = ["paired Δ: row - the row it must beat, on the same seeds (with several data "
                 "draws: per draw, then over draws) [95% t interval]; n: seeds, or data draws",
                 "verdict: beats (interval above 0), loses (below 0), n.s. (covers 0), "
                 "anecdote (one seed: no interval)"]
    return "grounding checks — paired Δ of overall accuracy (%)", header, rows, notes


def plot_results(results: dict, out: Path) -> Path:
    """``results.png``: overall accuracy per method and split, bars with their 95% CI."""
    import io

    import matplotlib

    from pkd.fsio import write_atomic

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results["rows"])
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(methods), 3.4))
    for j, split in enumerate(SPLITS):
        cells = [next((s for s in summary if s["method"] == m and s["split"] == split), None)
                 for m in methods]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
        ax.bar(xs, [c["mean"] if c else 0 for c in cells], 0.36,
               yerr=[(c["ci_high"] - c["ci_low"]) / 2 if c and c["ci_low"] is not None else 0
                     for c in cells], label=split)  # 95% CI over seeds
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("VQA accuracy (%)")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(out, png.getvalue())  # a full disk leaves the old plot, not half
