"""Integrity of model folders, detectron2: config and weights errors are one line each, at load
and in the CLI (against a stand-in detectron2 module)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from pkd.errors import PkdError
from pkd.hf.fingerprint import file_sha256
from pkd.pipeline.detectors import Detectron2Detector, build_detector

pytest.register_assert_rewrite("fixtures_extract", "model_folders")
from fixtures_extract import pkd  # noqa: E402
from model_folders import one_error_line, one_line, truncate  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data (session fixture)


class Node(dict):
    """A yacs-like config node: attribute access, merge from YAML (unknown keys refused)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def merge_from_file(self, path: str) -> None:
        self._merge(yaml.safe_load(Path(path).read_text()) or {}, "")

    def _merge(self, doc: dict, prefix: str) -> None:
        for key, value in doc.items():
            full = f"{prefix}{key}"
            if key not in self:
                raise KeyError(f"Non-existent config key: {full}")
            if isinstance(self[key], Node):
                self[key]._merge(value, f"{full}.")
            else:
                self[key] = value

    def freeze(self) -> None:
        pass

    def dump(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self)))


def _fake_cfg() -> Node:
    return Node(MODEL=Node(DEVICE="cuda", WEIGHTS="", META_ARCHITECTURE="GeneralizedRCNN",
                           ROI_HEADS=Node(SCORE_THRESH_TEST=0.05, NMS_THRESH_TEST=0.5),
                           RESNETS=Node(RES2_OUT_CHANNELS=256)),
                TEST=Node(DETECTIONS_PER_IMAGE=100),
                INPUT=Node(MIN_SIZE_TEST=800, MAX_SIZE_TEST=1333, FORMAT="BGR"))


class FakeRCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)
        self.roi_heads = types.SimpleNamespace(
            box_head=types.SimpleNamespace(output_shape=types.SimpleNamespace(channels=16)))


def _build_model(cfg):
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise KeyError(f"No object named '{cfg.MODEL.META_ARCHITECTURE}' found in 'META_ARCH' "
                       "registry!")
    return FakeRCNN()


class FakeCheckpointer:
    def __init__(self, model):
        self.model = model

    def load(self, path: str):
        state = torch.load(path, weights_only=True)  # a truncated file fails here, as in fvcore
        self.model.load_state_dict(state)
        return {}


@pytest.fixture
def fake_detectron2(monkeypatch):
    modules = {name: types.ModuleType(name) for name in (
        "detectron2", "detectron2.data", "detectron2.data.transforms", "detectron2.checkpoint",
        "detectron2.config", "detectron2.modeling")}
    modules["detectron2.config"].get_cfg = _fake_cfg
    modules["detectron2.modeling"].build_model = _build_model
    modules["detectron2.checkpoint"].DetectionCheckpointer = FakeCheckpointer
    modules["detectron2.data.transforms"].ResizeShortestEdge = lambda sizes, max_size: (sizes,
                                                                                        max_size)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def d2_files(tmp_path):
    """(config path, weights path) of a valid stand-in detector."""
    weights = tmp_path / "model_final.pth"
    torch.save(FakeRCNN().state_dict(), weights)
    config = tmp_path / "vg.yaml"
    config.write_text(yaml.safe_dump({"MODEL": {"WEIGHTS": str(weights)},
                                      "INPUT": {"MIN_SIZE_TEST": 600}}))
    return config, weights


def test_detectron2_stand_in_loads_and_records_the_weights(fake_detectron2, d2_files,
                                                           monkeypatch):
    config, weights = d2_files
    monkeypatch.chdir(config.parent)
    det = build_detector(f"detectron2:{config.name}", max_boxes=36)
    assert isinstance(det, Detectron2Detector) and det.feature_dim == 16
    assert det.cfg.MODEL.DEVICE == "cpu" and det.cfg.TEST.DETECTIONS_PER_IMAGE == 1000
    prov = det.provenance()
    assert prov["detector"] == f"detectron2:{config.resolve()}"  # relative = absolute
    assert prov["weights_sha256"] == file_sha256(weights)


def _break(case: str, config: Path, weights: Path) -> str:
    """Break the stand-in detector's files as ``case`` says; the expected message after the
    config path."""
    doc = yaml.safe_load(config.read_text())
    if case == "unknown key":
        doc["MODEL"]["FOO"] = 1
        expected = "not a valid detectron2 config (Non-existent config key: MODEL.FOO)"
    elif case == "not yaml":
        config.write_text("MODEL: [unclosed\n")
        return "not a valid detectron2 config ("
    elif case == "no weights":
        doc["MODEL"]["WEIGHTS"] = ""
        expected = "MODEL.WEIGHTS is empty (the detector would run with random weights)"
    elif case == "missing weights":
        doc["MODEL"]["WEIGHTS"] = str(weights.with_name("nope.pth"))
        expected = f"MODEL.WEIGHTS {weights.with_name('nope.pth')}: no such file"
    elif case == "unknown architecture":
        doc["MODEL"]["META_ARCHITECTURE"] = "Nope"
        expected = ("cannot build the detectron2 model (No object named 'Nope' found in "
                    "'META_ARCH' registry!)")
    else:  # truncated weights
        truncate(weights)
        expected = f"cannot load MODEL.WEIGHTS {weights} ("
    config.write_text(yaml.safe_dump(doc))
    return expected


@pytest.mark.parametrize("case", ["unknown key", "not yaml", "no weights", "missing weights",
                                  "unknown architecture", "truncated weights"])
def test_detectron2_errors_are_one_line(case, fake_detectron2, d2_files):
    config, weights = d2_files
    expected = _break(case, config, weights)
    with pytest.raises(PkdError) as err:
        build_detector(f"detectron2:{config}")
    assert one_line(err).startswith(f"{config}: {expected}"), str(err.value)


def test_detectron2_error_in_the_cli_is_one_error_line(fake_detectron2, d2_files, synth_data,
                                                       tmp_path, capsys):
    config, weights = d2_files
    expected = _break("unknown key", config, weights)
    capsys.readouterr()
    assert pkd("extract", "regions", "--data", synth_data, "--splits", "val", "--out",
               tmp_path / "regions.zarr", "--detector", f"detectron2:{config}") == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {config}: {expected}"


def test_detectron2_missing_config_file(fake_detectron2, tmp_path):
    with pytest.raises(PkdError, match=re.escape(f"{tmp_path / 'nope.yaml'}: no such detectron2 "
                                                 "config file")):
        build_detector(f"detectron2:{tmp_path / 'nope.yaml'}")
