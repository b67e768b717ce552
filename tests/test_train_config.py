"""Typed training config: YAML + dotted overrides, strict keys and types, resolved round trip."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from pkd.errors import PkdError
from pkd.train.config import Allowed, ModelConfig, TrainConfig
from pkd.train.config_load import (
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    validate_config,
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
        ("model.arch=cnn", "model.arch: expected one of 'updn', 'fusion', 'vlm', got str 'cnn'"),
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


# ----------------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.lr=-1"], "optim.lr: -1.0 is not > 0"),
        (["optim.lr=0"], "optim.lr: 0.0 is not > 0"),
        (["optim.lr=.nan"], "optim.lr: nan is not a finite number"),
        (["optim.eps=0"], "optim.eps: 0.0 is not > 0"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay: -0.1 is not >= 0"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas[1]: 1.0 is not in [0, 1)"),
        (["optim.warmup_steps=-5"], "optim.warmup_steps: -5 is not >= 0"),
        (["run.batch_size=0"], "run.batch_size: 0 is not >= 1"),
        (["run.seed=-1"], "run.seed: -1 is not in [0, 4294967296)"),
        (["run.max_steps=-1"], "run.max_steps: -1 is not >= 0"),
        (["run.epochs=0"], "run.epochs: 0 is not >= 1 (with run.max_steps=0 the run counts "
                           "epochs; 0 = the zero-shot row"),
        (["run.out_dir="], "run.out_dir: '' is empty"),
        (["data.max_question_length=0"], "data.max_question_length: 0 is not >= 1"),
        (["data.val_fraction=1"], "data.val_fraction: 1.0 is not in [0, 1)"),
        (["model.dropout=1.5"], "model.dropout: 1.5 is not in [0, 1)"),
        (["model.encoder=bert"], "model.encoder: 'bert' is not 'native' or 'hf:PATH'"),
        (["model.arch=fusion", "model.hidden_size=16", "model.num_heads=3"],
         "model.num_heads: 3 does not divide model.hidden_size=16"),
        (["model.arch=fusion", "model.max_positions=10"],
         "model.max_positions: 10 is not >= data.max_question_length + 2 = 16"),
        (["model.use_foundation_features=true"],
         "model.use_foundation_features: true needs data.foundation_image"),
        (["model.use_foundation_features=true", "data.foundation_image=f.zarr"],
         "model.use_foundation_features: true needs data.foundation_text"),
        (["method.pkd.div_temperature=0"], "method.pkd.div_temperature: 0.0 is not > 0"),
        (["method.pkd.kd_temperature=-1"], "method.pkd.kd_temperature: -1.0 is not > 0"),
        (["method.distill.kd_temperature=0"], "method.distill.kd_temperature: 0.0 is not > 0"),
        (["method.distill.tau=0"], "method.distill.tau: 0.0 is not > 0"),
        (["method.distill.queue_size=0"], "method.distill.queue_size: 0 is not >= 1"),
        (["method.distill.teacher_model.dropout=-0.1"],
         "method.distill.teacher_model.dropout: -0.1 is not in [0, 1)"),
        (["method.name=teacher-adapt", "method.distill.teacher_model.num_heads=5"],
         "method.distill.teacher_model.num_heads: 5 does not divide "
         "method.distill.teacher_model.hidden_size=768"),
        (["method.name=pkd", "method.pkd.predictor_heads=3"],
         "method.pkd.predictor_heads: 3 does not divide method.pkd.predictor_hidden=256"),
        (["method.name=pkd", "method.pkd.use_predictors=false"],
         "method.pkd.learnable_slots: 0 with method.pkd.use_predictors=false"),
    ],
)
def test_out_of_range_values_name_key_value_and_range(overrides, expected):
    with pytest.raises(PkdError) as err:
        load_config(None, overrides)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg
    assert msg.startswith("override '")  # the override that set the key


def test_range_error_names_the_file_that_set_the_key(tmp_path):
    path = write(tmp_path, "optim:\n  lr: -1\n")
    with pytest.raises(PkdError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: optim.lr: -1.0 is not > 0"


def test_the_whole_config_is_checked_after_all_overrides(tmp_path):
    """A later override may mend an earlier value; a rule between fields sees the final values."""
    path = write(tmp_path, "model: {arch: fusion, hidden_size: 16, num_heads: 3}\n")
    cfg = load_config(path, ["model.num_heads=4", "run.epochs=0", "run.max_steps=5"])
    assert cfg.model.num_heads == 4 and cfg.run.epochs == 0
    # a field nobody uses is not held to another field: UpDn has no attention heads
    assert load_config(None, ["model.hidden_size=16", "model.num_heads=3"]).model.num_heads == 3


def test_config_from_dict_and_validate_config_check_values():
    with pytest.raises(PkdError, match=r"^<config>: run.batch_size: 0 is not >= 1$"):
        config_from_dict({"run": {"batch_size": 0}})
    cfg = TrainConfig()
    bad = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=-1.0))
    with pytest.raises(PkdError, match=r"^config: optim.lr: -1.0 is not > 0$"):
        validate_config(bad)
    assert validate_config(cfg) is cfg


def _leaf_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f


def test_every_numeric_field_declares_its_allowed_range():
    """Each int / float (or tuple of them) field carries an ``Allowed`` rule; bools and Literals
    are closed by their type. A new numeric field needs ``allowed(default, ge=..., ...)``."""
    missing = []
    for key, tp, f in _leaf_fields(TrainConfig):
        args = typing.get_args(tp)
        numeric = tp in (int, float) or (typing.get_origin(tp) is tuple
                                         and all(a in (int, float, Ellipsis) for a in args))
        if numeric and not isinstance(f.metadata.get("allowed"), Allowed):
            missing.append(key)
    assert not missing, f"config fields without an allowed range: {missing}"
    assert TrainConfig().optim.betas == (0.9, 0.999)  # allowed() keeps the defaults
