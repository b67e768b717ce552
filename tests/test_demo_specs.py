"""`pkd demo` run specs: every row resolves to a typed config that differs from its reference
where the ablation says; presets, budgets, and a data folder of another size."""

from __future__ import annotations

import json

import pytest

from pkd.data.synth import SynthConfig
from pkd.demo import (
    ABLATIONS,
    CONTROLS,
    KNOWN,
    MAIN_METHODS,
    POSTHOC_ROWS,
    DemoConfig,
    reference_of,
    row_config,
    row_vars,
)
from pkd.demo.prepare import OWN_REGIONS
from pkd.demo.vlm import PREDICTOR_RUNS
from pkd.train.config import OptimConfig
from pkd.train.config_load import config_to_dict


def test_every_demo_run_spec_is_a_valid_config(tmp_path):
    """Each row of the table (and the runs they build on) resolves to a typed config that
    differs from its reference run exactly where the ablation says."""
    cfg = DemoConfig(out=tmp_path)

    def resolved(name):
        return row_config(name, row_vars(cfg, 1))

    configs = {n: resolved(n) for n in (*KNOWN, "predictors", "predictors-cross", "predictors-mmd",
                                        "predictors-emb", *PREDICTOR_RUNS)
               if n not in CONTROLS and n not in POSTHOC_ROWS}  # no run of their own
    cross = configs["pkd-cross"]
    assert (cross.method.pkd.predictor_inputs == "cross"
            == configs["predictors-cross"].method.pkd.predictor_inputs)
    assert cross.method.pkd.predictors.endswith("predictors-cross-seed1")
    assert cross.data.predicted != configs["pkd"].data.predicted  # its own cache
    assert set(MAIN_METHODS) | set(ABLATIONS) <= set(KNOWN)
    assert configs["pkd-mkd3"].method.pkd.lambda_mkd == 3.0
    assert configs["pkd-lmh"].method.pkd.vqa_loss == "lmh" and reference_of("pkd-lmh") == "lmh"
    assert configs["pkd-lmh"].data.predicted == configs["pkd"].data.predicted  # one stage 1
    assert configs["pkd-memory-train"].method.pkd.memory_at_test is False
    assert configs["pkd-memory-train"].data.predicted == configs["pkd"].data.predicted
    mmd = configs["pkd-mmd"]
    assert mmd.method.pkd.divergence == "mmd" == configs["predictors-mmd"].method.pkd.divergence
    assert mmd.method.pkd.predictors.endswith("predictors-mmd-seed1")
    assert mmd.data.predicted not in (configs["pkd"].data.predicted,
                                      configs["pkd-cross"].data.predicted)
    assert {n: configs[n].method.name for n in ("question-only", "rubi", "lmh")} == {
        "question-only": "question-only", "rubi": "rubi", "lmh": "lmh"}
    assert configs["baseline-foundation"].model.use_foundation_features is True
    vlm = {n: configs[n] for n in ("finetune", "pkd-vlm", "pkd-vlm-memory", "lwf-oracle")}
    assert {c.model.arch for c in vlm.values()} == {"vlm"}
    assert vlm["pkd-vlm"].method.pkd.predictors.endswith("pkd-vlm-predictors-seed1")
    assert vlm["pkd-vlm-memory"].method.pkd.use_memory is False
    assert configs["pkd-vlm-predictors"].method.name == "pkd-vlm-predictors"
    assert reference_of("pkd-vlm") == "finetune" == reference_of("lwf-oracle")
    from pkd.demo import needs

    assert needs("pkd-vlm-mlm-real") == ("pkd-vlm-predictors",)
    assert needs("pkd-vlm-predictors") == ()
    for row, weight in (("pkd-vlm-noitm", "lambda_itm"), ("pkd-vlm-nodiv", "lambda_div")):
        stage1, stage2 = configs[f"{row}-predictors"].method.pkd, configs[row]
        assert getattr(stage1, weight) == 0.0 and needs(row) == (f"{row}-predictors",)
        assert stage2.method.pkd.predictors.endswith(f"{row}-predictors-seed1")
        headline = configs["pkd-vlm-mlm-real"].method.pkd
        assert (stage2.method.pkd.mkd_heads, stage2.method.pkd.mkd_vision) == (
            headline.mkd_heads, headline.mkd_vision)
    assert configs["baseline"].model.use_foundation_features is False
    for item in ("pkd-item", "pkd-item-full"):  # D fed its item's predicted e_v, e_t
        m = configs[item].model
        assert (m.use_foundation_features, m.foundation_inputs) == (True, "predicted")
        assert configs[item].data.predicted == configs["pkd"].data.predicted  # pkd's stage 1
    p = configs["pkd-item"].method.pkd
    assert (p.use_memory, p.use_model_kd) == (False, False)  # L_vqa only: the item reading alone
    p = configs["pkd-item-full"].method.pkd
    assert (p.use_memory, p.use_model_kd) == (True, True)
    assert configs["baseline-foundation"].model.foundation_inputs == "real"
    emb = configs["pkd-item-emb"]
    assert (emb.method.pkd.divergence_on, emb.method.pkd.divergence) == ("embeddings", "cosine")
    assert emb.method.pkd.divergence_on == configs["predictors-emb"].method.pkd.divergence_on
    assert emb.method.pkd.predictors.endswith("predictors-emb-seed1")
    assert emb.model.foundation_inputs == "predicted"
    assert emb.data.predicted not in (configs["pkd"].data.predicted, mmd.data.predicted)
    assert configs["pkd"].method.pkd.divergence_on == "tokens"
    assert configs["pkd-memory"].method.pkd.use_memory is False
    assert configs["pkd-model-kd"].method.pkd.use_model_kd is False
    assert configs["pkd-predictors-off"].method.pkd.use_predictors is False
    d = {n: c.method.distill for n, c in configs.items() if n.startswith("distillvlm")}
    assert (d["distillvlm-att"].alpha, d["distillvlm-nce"].beta,
            d["distillvlm-kd"].gamma) == (0, 0, 0)
    assert d["distillvlm"].queue_size == 4096
    assert (d["distillvlm-queue256"].queue_size,
            d["distillvlm-queue16384"].queue_size) == (256, 16384)
    own, unaligned = configs["teacher-own"], configs["distillvlm-unaligned"]
    assert own.method.name == "teacher-adapt" and own.data.teacher_regions.endswith(OWN_REGIONS)
    assert unaligned.data.teacher_regions == own.data.teacher_regions
    assert unaligned.data.teacher == ""
    assert (unaligned.method.distill.alignment, unaligned.method.distill.online_teacher) == (
        "index", True) and d["distillvlm"].alignment == "aligned"
    assert unaligned.method.distill.teacher_checkpoint.endswith("teacher-own-seed1/best")
    assert (reference_of("distillvlm-unaligned"), reference_of("teacher-own")) == (
        "distillvlm", "teacher")
    assert all(c.run.seed == 1 for c in configs.values())
    assert len({c.run.out_dir for c in configs.values()}) == len(configs)  # no shared run folder


def test_presets_quick_and_full():
    from pathlib import Path

    from pkd.demo import DEBIAS, FULL_METHODS

    quick, full = DemoConfig.of("quick", Path("q")), DemoConfig.of("full", Path("f"))
    assert quick.synth == SynthConfig() and (quick.seeds, quick.methods) == (1, MAIN_METHODS)
    assert full.synth == SynthConfig.preset("full") and full.seeds == 3
    assert full.data_seeds == (10, 11, 12)  # draws nothing was tuned on
    assert set(FULL_METHODS) == (set(MAIN_METHODS) | set(DEBIAS) | set(CONTROLS)
                                 | set(POSTHOC_ROWS) | {"pkd-lmh", "student-best"})  # no ablations
    assert full.methods == FULL_METHODS and full.preset == "full"
    assert DemoConfig.of("full", Path("f"), seeds=2).seeds == 2
    from pkd.errors import PkdError

    with pytest.raises(PkdError, match="unknown preset 'huge'"):
        DemoConfig.of("huge", Path("x"))


def test_a_data_folder_of_another_size_is_refused(tmp_path):
    from dataclasses import asdict

    from pkd.demo import check_same_benchmark
    from pkd.errors import PkdError

    saved = json.loads(json.dumps(asdict(SynthConfig())))  # the quick benchmark's config
    check_same_benchmark(saved, DemoConfig.of("quick", tmp_path), tmp_path)  # same: accepted
    older = {k: v for k, v in saved.items() if k != "caption_relations"}  # before the field
    check_same_benchmark(older, DemoConfig.of("quick", tmp_path), tmp_path)  # its default
    with pytest.raises(PkdError, match="generated with caption_relations=True"):
        check_same_benchmark({**saved, "caption_relations": True}, DemoConfig.of("quick", tmp_path),
                             tmp_path)
    with pytest.raises(PkdError, match=r"generated with max_objects=4, this demo \(full\) "
                                       r"needs 6; give another --out"):
        check_same_benchmark(saved, DemoConfig.of("full", tmp_path), tmp_path)


def test_fusion_rows_train_with_their_own_budget_and_optimizer(tmp_path):
    """Student and DistillVLM share one budget (equal steps), the teacher has its own; the three
    use the transformer optimizer (warmup, lr 1e-3, clip 1.0), UpDn rows keep theirs."""
    cfg = DemoConfig(out=tmp_path, train_epochs=7, student_epochs=11, student_best_epochs=33,
                     teacher_epochs=5)
    spec = {n: row_config(n, row_vars(cfg, 0)) for n in (
        "baseline", "student", "distillvlm", "teacher", "teacher-own", "student-best")}
    assert [spec[n].run.epochs for n in spec] == [7, 11, 11, 5, 5, 33]

    def unbudgeted(c):
        d = config_to_dict(c)
        del d["run"]["epochs"], d["run"]["out_dir"]
        return d

    assert unbudgeted(spec["student-best"]) == unbudgeted(spec["student"])
    for n in ("student", "distillvlm", "teacher", "teacher-own"):
        o = spec[n].optim
        assert (o.lr, o.warmup_steps, o.grad_clip) == (0.001, 100, 1.0), n
    assert spec["baseline"].optim.lr == 0.002
    assert spec["baseline"].optim.warmup_steps == OptimConfig().warmup_steps
