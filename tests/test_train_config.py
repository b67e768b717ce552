"""Typed training config: YAML + dotted overrides, strict keys and types, resolved round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pkd.errors import PkdError
from pkd.train.config import (
    ModelConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg == TrainConfig()
    assert cfg.method.pkd.memory_size == 1024
    assert cfg.method.distill.tau == 0.07 and cfg.method.distill.queue_size == 4096


def test_yaml_then_overrides_in_order(tmp_path):
    path = write(tmp_path, """
model: {arch: fusion, hidden_size: 256}
optim: {lr: 1e-4, betas: [0.9, 0.98]}
method: {name: pkd, pkd: {lambda_mkd: 2}}
""")
    cfg = load_config(path, ["model.hidden_size=128", "run.amp=true", "data.teacher=null",
                             "method.pkd.divergence=cosine", "model.hidden_size=64"])
    assert cfg.model.arch == "fusion" and cfg.model.hidden_size == 64  # last override wins
    assert cfg.model.num_layers == ModelConfig().num_layers  # untouched defaults survive
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # PyYAML reads 1e-4 as str
    assert cfg.optim.betas == (0.9, 0.98)  # list -> tuple
    assert cfg.method.pkd.lambda_mkd == 2.0 and isinstance(cfg.method.pkd.lambda_mkd, float)
    assert cfg.method.pkd.divergence == "cosine" and cfg.run.amp is True
    assert cfg.data.teacher is None


def test_override_sets_whole_nested_section(tmp_path):
    cfg = load_config(None, ["method.distill.teacher_model={num_layers: 6}"])
    assert cfg.method.distill.teacher_model.num_layers == 6
    assert cfg.method.distill.teacher_model.hidden_size == 768  # default of the teacher kept


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  hiden_size: 3\n")
    with pytest.raises(PkdError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "'model.hiden_size'" in msg
    assert "did you mean 'model.hidden_size'" in msg and "\n" not in msg


def test_unknown_top_level_key_suggests_the_section(tmp_path):
    with pytest.raises(PkdError, match=r"unknown key 'lr' \(did you mean 'optim.lr'"):
        load_config(write(tmp_path, "lr: 0.1\n"))


def test_unknown_override_key_names_the_override():
    with pytest.raises(PkdError) as err:
        load_config(None, ["optim.weight_decy=0.1"])
    assert str(err.value).startswith("override 'optim.weight_decy=0.1'")
    assert "did you mean 'optim.weight_decay'" in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.hidden_size=1.5", "model.hidden_size: expected int, got float 1.5"),
        ("model.hidden_size=true", "model.hidden_size: expected int, got bool True"),
        ("run.amp=1", "run.amp: expected bool"),
        ("model.arch=cnn", "model.arch: expected one of 'updn', 'fusion', got str 'cnn'"),
        ("optim.lr=fast", "optim.lr: expected float, got str 'fast'"),
        ("optim.betas=[0.9]", "optim.betas: expected a list of 2 (float, float)"),
        ("data.teacher=3", "data.teacher: expected str or null, got int 3"),
        ("model=3", "model: expected a mapping, got int 3"),
    ],
)
def test_wrong_type_names_field_and_expected_type(override, expected):
    with pytest.raises(PkdError) as err:
        load_config(None, [override])
    assert expected in str(err.value)
    assert str(err.value).startswith(f"override '{override}'")


@pytest.mark.parametrize("override", ["optim.lr", "=3", "optim..lr=3", "optim.lr=[1"])
def test_malformed_override(override):
    with pytest.raises(PkdError, match="^override "):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("text", "problem"),
    [("- a\n- b\n", "a config file is a mapping"), ("model: [1\n", "invalid YAML at line")],
)
def test_bad_yaml_files(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(PkdError, match=problem) as err:
        load_config(path)
    assert str(err.value).startswith(str(path))


def test_missing_file():
    with pytest.raises(PkdError, match="nope.yaml: cannot read config"):
        load_config("nope.yaml")


def test_yaml_does_not_run_code(tmp_path):
    path = write(tmp_path, "run: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(PkdError, match="invalid YAML"):
        load_config(path)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_then_load_round_trip(tmp_path, suffix):
    cfg = load_config(None, ["model.arch=fusion", "optim.betas=[0.8, 0.9]", "data.teacher=t.zarr",
                             "method.name=distillvlm", "method.distill.alpha=0.5"])
    path = save_config(cfg, tmp_path / f"resolved{suffix}")
    data = json.loads(path.read_text()) if suffix == ".json" else yaml.safe_load(path.read_text())
    assert data["optim"]["betas"] == [0.8, 0.9]  # plain lists on disk
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_save_config_rejects_other_suffix(tmp_path):
    with pytest.raises(PkdError, match=r"\.json, \.yaml or \.yml"):
        save_config(TrainConfig(), tmp_path / "cfg.txt")


def test_config_from_dict_validates():
    with pytest.raises(PkdError, match=r"<config>: unknown key 'run.sed'"):
        config_from_dict({"run": {"sed": 1}})


def test_shipped_example_configs_load_and_agree():
    """Every configs/*.yaml is a valid typed config; stage 1 and 2 of PKD read the same stores
    with the same predictor sizes, and DistillVLM's two steps describe the same teacher."""
    root = Path(__file__).resolve().parents[1] / "configs"
    cfgs = {p.stem: load_config(p) for p in sorted(root.glob("*.yaml"))}
    assert {"baseline", "pkd-predictors", "pkd", "teacher-adapt", "distillvlm"} <= set(cfgs)
    for name in ("pkd-predictors", "pkd", "teacher-adapt", "distillvlm"):
        assert cfgs[name].method.name == name
    s1, s2 = cfgs["pkd-predictors"], cfgs["pkd"]
    assert (s1.data, s1.method.pkd.predictor_hidden, s1.method.pkd.predictor_layers) == (
        s2.data, s2.method.pkd.predictor_hidden, s2.method.pkd.predictor_layers)
    assert s2.method.pkd.predictors == s1.run.out_dir
    adapt, distil = cfgs["teacher-adapt"], cfgs["distillvlm"]
    assert adapt.method.distill.teacher_model == distil.method.distill.teacher_model
    assert distil.method.distill.teacher_checkpoint == f"{adapt.run.out_dir}/best"
