"""The demo's rows are files (configs/rows/*.yaml): what they hold and how the demo reads them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pkd.demo.config import (
    ABLATIONS,
    ALIGNMENT,
    CONTROLS,
    DEBIAS,
    FULL_METHODS,
    KNOWN,
    MAIN_METHODS,
    POSTHOC_ROWS,
    READINGS,
    STAGE_RUNS,
    SWEEPS,
    DemoConfig,
    draw_config,
    row_vars,
)
from pkd.demo.rows import ROWS_DIR, needs, row_config, row_names
from pkd.demo.vlm import VLM_ROWS
from pkd.errors import PkdError
from pkd.train.method_lines import METHOD_LINES

CFG = draw_config(DemoConfig.of("quick", Path("/demo")), 0)


def config(name: str, seed: int = 0, cfg: DemoConfig = CFG):
    return row_config(name, row_vars(cfg, seed))


def test_the_table_of_rows_is_the_list_of_files() -> None:
    files = set(row_names())
    assert set(KNOWN) == (files - set(STAGE_RUNS)) | set(CONTROLS) | set(POSTHOC_ROWS)
    groups = (*MAIN_METHODS, *ABLATIONS, *SWEEPS, *READINGS, *ALIGNMENT, *DEBIAS, *FULL_METHODS,
              *VLM_ROWS)
    assert set(groups) <= set(KNOWN)
    assert set(STAGE_RUNS) <= files
    for name in files:  # a row builds on runs that have files
        assert set(needs(name)) <= files, name


@pytest.mark.parametrize("name", row_names())
def test_every_row_is_a_valid_run_of_a_known_method(name: str) -> None:
    cfg = config(name, seed=2)
    assert cfg.method.name in METHOD_LINES
    assert str(cfg.run.out_dir) == f"/demo/draw0/runs/{name}-seed2" and cfg.run.seed == 2
    assert str(cfg.data.root) == "/demo/draw0/data"


def test_rows_are_their_parents_with_the_settings_they_name() -> None:
    pkd, memory = config("pkd"), config("pkd-memory")
    assert memory.method.pkd.use_memory is False
    assert replace(memory.method.pkd, use_memory=True) == pkd.method.pkd
    assert needs("pkd") == needs("pkd-memory") == ("predictors",)
    assert needs("distillvlm-att") == ("teacher",) and needs("pkd-item-emb") == ("predictors-emb",)
    assert needs("pkd-vlm-noitm") == ("pkd-vlm-noitm-predictors",)
    assert config("pkd-vlm-noitm-predictors").method.pkd.lambda_itm == 0.0
    assert config("pkd-vlm-nodiv-predictors").method.pkd.lambda_div == 0.0
    student, distill = config("student"), config("distillvlm")
    assert distill.model == student.model and distill.optim == student.optim
    assert distill.run.epochs == student.run.epochs == CFG.student_epochs  # equal steps
    assert config("student-best").run.epochs == CFG.student_best_epochs
    assert str(distill.method.distill.teacher_checkpoint) == "/demo/draw0/runs/teacher-seed0/best"
    assert str(config("lp-ft").model.init_from) == "/demo/draw0/runs/lp-seed0"
    assert config("zero-shot").run.epochs == 0 and config("finetune").model.arch == "vlm"


def test_the_preset_sets_the_budgets() -> None:
    full = draw_config(DemoConfig.of("full", Path("/demo")), 1)
    assert config("baseline", cfg=full).run.epochs == full.train_epochs == 8
    assert config("predictors", cfg=full).run.epochs == 4  # max(1, epochs // 2)
    assert config("predictors-emb", cfg=full).run.epochs == 16
    assert config("teacher", cfg=full).run.epochs == full.teacher_epochs
    assert str(config("baseline", cfg=full).data.regions) == "/demo/draw1/stores/regions.zarr"


def test_extra_keys_go_on_top_and_an_unknown_row_names_the_rows() -> None:
    assert row_config("baseline", row_vars(CFG, 0), {"run.threads": 1}).run.threads == 1
    with pytest.raises(PkdError, match=r"no-such-row.yaml: no such row \(rows: baseline"):
        row_config("no-such-row", row_vars(CFG, 0))


def test_defaults_are_the_quick_demo_of_draw_0() -> None:
    """``pkd train configs/rows/ROW.yaml`` re-runs a row of ``pkd demo --out demo_out``."""
    from pkd.train.config_files import read_config_file

    defaults = read_config_file(ROWS_DIR / "_base.yaml").vars
    assert defaults == row_vars(draw_config(DemoConfig.of("quick", Path("demo_out")), 0), 0)


def test_pkd_train_reads_a_row_file_with_its_variables_and_overrides() -> None:
    from pkd.train.config_load import load_config

    cfg = load_config(ROWS_DIR / "lmh.yaml", ["vars.seed=3", "vars.draw=/d", "run.epochs=2"])
    assert cfg.method.name == "lmh" and cfg.run.seed == 3 and cfg.run.epochs == 2
    assert str(cfg.run.out_dir) == "/d/runs/lmh-seed3" and str(cfg.data.root) == "/d/data"
    assert load_config(ROWS_DIR / "lmh.yaml") == config("lmh", cfg=draw_config(
        DemoConfig.of("quick", Path("demo_out")), 0))  # the defaults: the quick demo's row
    with pytest.raises(PkdError, match=r"vars.NAME=VALUE overrides need a config file"):
        load_config(None, ["vars.seed=1"])
