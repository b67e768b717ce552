"""Checkpoints: bit-exact resume, atomic writes, config refusal, no unpickling."""

from __future__ import annotations

import builtins
import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pkd.errors import PkdError
from pkd.train import checkpoint as ckpt
from pkd.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pkd.train.config import TrainConfig
from pkd.train.config_load import config_to_dict, load_config

torch.set_num_threads(1)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    """Steps whose data and dropout draw from torch, numpy and python RNGs."""
    for _ in range(n):
        x = torch.randn(8, 6) + float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def save(root, model, opt, step, config=None, **kw):
    state = {"step": step, "epoch": 0, "optimizer": opt.state_dict(), "rng": capture_rng_state(),
             "metrics": {"loss": 0.5}, "config": config or config_to_dict(TrainConfig())}
    return save_checkpoint(root, model.state_dict(), state, **kw)


def test_resume_is_bit_exact(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    train_steps(model, opt, 3)
    save(tmp_path, model, opt, step=3)
    at_save = snapshot(model)
    train_steps(model, opt, 4)
    uninterrupted = snapshot(model)

    torch.manual_seed(123), np.random.seed(5), random.seed(9)  # scramble every RNG
    model2 = make_model()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    model_state, state = load_checkpoint(tmp_path, config_to_dict(TrainConfig()))
    model2.load_state_dict(model_state)
    opt2.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"])
    assert state["step"] == 3 and state["metrics"] == {"loss": 0.5}
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 1e-2
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in at_save.items())
    train_steps(model2, opt2, 4)
    for k, v in uninterrupted.items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert not torch.equal(uninterrupted["0.weight"], at_save["0.weight"])  # it did train


def test_layout_and_no_pickle_on_disk(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    train_steps(model, opt, 1)
    path = save(tmp_path, model, opt, step=7)
    assert path == tmp_path / "step_000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "state.json", "state.safetensors"]
    assert json.loads((tmp_path / "latest.json").read_text())["name"] == "step_000007"
    skeleton = json.loads((path / "state.json").read_text())["state"]
    assert skeleton["optimizer"]["state"]["__items__"][0][0] == 0  # int keys kept as ints
    assert latest_checkpoint(tmp_path) == path
    assert latest_checkpoint(tmp_path / "empty") is None


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (10, 20, 30, 40):
        save(tmp_path, model, opt, step=step, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step_000030",
                                                          "step_000040"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save(tmp_path, model, opt, step=5)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    save(tmp_path, model, opt, step=5)
    assert (load_checkpoint(tmp_path)[0]["0.weight"] == 2.0).all()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("failing_call", [1, 2])
def test_crash_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch, failing_call):
    """Call 1 moves the new dir into place, call 2 updates latest.json: fail either one."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save(tmp_path, model, opt, step=1)
    before = snapshot(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save(tmp_path, model, opt, step=2)
    monkeypatch.undo()
    model_state, state = load_checkpoint(tmp_path)
    assert state["step"] == 1
    assert all(torch.equal(model_state[k], v) for k, v in before.items())
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".latest*"))


def test_checkpoint_from_another_config_is_refused(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save(tmp_path, model, opt, step=1, config=config_to_dict(TrainConfig()))
    other = load_config(None, ["model.hidden_size=99", "method.name=pkd"])
    with pytest.raises(PkdError) as err:
        load_checkpoint(tmp_path, other)
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "step_000001" / "state.json"))
    assert "model.hidden_size=512 (expected 99)" in msg and "method.name" in msg
    assert "\n" not in msg
    # run / optimizer settings may change on resume
    load_checkpoint(tmp_path, load_config(None, ["optim.lr=0.5", "run.max_steps=100"]))


class Evil:
    """Creates a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2), "payload": Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(PkdError, match="refusing to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_weights_only_pickle_and_safetensors_files_load(tmp_path):
    weights = make_model().state_dict()
    torch.save({"state_dict": weights}, tmp_path / "w.pth")
    loaded, state = load_checkpoint(tmp_path / "w.pth")
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert state == {"source": str(tmp_path / "w.pth")}
    torch.save([1, 2], tmp_path / "list.bin")
    with pytest.raises(PkdError, match="no tensor state dict"):
        load_checkpoint(tmp_path / "list.bin")


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda p: None, "not a pkd checkpoint"),
        (lambda p: (p / "latest.json").write_text('{"format": "pkd.checkpoint.pointer", '
                                                  '"name": "step_000001"}'), "points to missing"),
        (lambda p: (p / "latest.json").write_text("{"), "not valid JSON"),
        (lambda p: (p / "x.pkl").write_text("x"), "unknown checkpoint file"),
    ],
)
def test_bad_checkpoint_paths(tmp_path, setup, problem):
    setup(tmp_path)
    target = tmp_path / "x.pkl" if problem == "unknown checkpoint file" else tmp_path
    with pytest.raises(PkdError, match=problem):
        load_checkpoint(target)


def test_corrupt_weights_file_is_a_user_error(tmp_path):
    model = make_model()
    path = save(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=1)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(PkdError, match="model.safetensors: checksum mismatch"):
        load_checkpoint(tmp_path)
    _as_version_1(path)  # no checksums: the safetensors reader still refuses the garbage
    with pytest.raises(PkdError, match="model.safetensors: not a valid safetensors file"):
        load_checkpoint(tmp_path)


def _as_version_1(path):
    """Rewrite ``path/state.json`` the way checkpoints were written before checksums."""
    doc = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(
        {"format": doc["format"], "version": 1, "state": doc["state"]}))


def _flip_tensor_byte(file, offset_from_end=3):
    """Flip one byte inside a safetensors file's tensor data (its header stays valid)."""
    data = bytearray(file.read_bytes())
    data[-offset_from_end] ^= 0x40
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors"])
def test_flipped_tensor_bytes_are_refused(tmp_path, name):
    """Tensor data with a flipped byte still parses as safetensors: only the checksum tells."""
    model = make_model()
    path = save(tmp_path, model, torch.optim.AdamW(model.parameters()), step=1)
    doc = json.loads((path / "state.json").read_text())
    assert doc["version"] == 2 and set(doc["files"]) == {"model.safetensors", "state.safetensors"}
    assert all(len(r["sha256"]) == 64 for r in doc["files"].values())
    _flip_tensor_byte(path / name)
    load_file(str(path / name))  # still a valid file: the damage is in the numbers
    with pytest.raises(PkdError) as err:
        load_checkpoint(tmp_path)
    msg = str(err.value)
    assert msg.startswith(str(path / name)) and "checksum mismatch" in msg and "\n" not in msg
    with pytest.raises(PkdError, match="checksum mismatch"):
        load_checkpoint(path, config_to_dict(TrainConfig()))  # with a config check, too


def test_edited_state_json_is_refused(tmp_path):
    model = make_model()
    path = save(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=3)
    doc = json.loads((path / "state.json").read_text())
    doc["state"]["step"] = 30
    (path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(PkdError, match=r"state.json: checksum mismatch in its state"):
        load_checkpoint(tmp_path)
    del doc["files"]  # a version-2 sidecar without its record is not an old checkpoint
    (path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(PkdError, match=r"state.json: no valid checksum record"):
        load_checkpoint(tmp_path)


def test_version_1_checkpoints_load_unchecked(tmp_path):
    """Checkpoints written before checksums load as before (documented in the module)."""
    model = make_model()
    path = save(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=2)
    before = snapshot(model)
    _as_version_1(path)
    assert ckpt.verify_checkpoint(path) is False
    weights, state = load_checkpoint(tmp_path, config_to_dict(TrainConfig()))
    assert state["step"] == 2 and all(torch.equal(weights[k], v) for k, v in before.items())


def test_newer_checkpoint_version_is_refused(tmp_path):
    model = make_model()
    path = save(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=2)
    doc = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(PkdError, match="version 99 is newer"):
        load_checkpoint(tmp_path)


def test_rng_round_trip_through_json_and_safetensors(tmp_path):
    restore_rng_state(capture_rng_state())  # works in-process
    model = make_model()
    save(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=1)
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path)[1]["rng"])
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def test_a_field_added_after_the_checkpoint_is_accepted_at_its_default_only(tmp_path):
    """A config field the checkpoint's config predates (e.g. method.pkd.predictor_inputs) loads
    when asked for at its default; asked for at another value it is a difference."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    old = config_to_dict(TrainConfig())
    del old["method"]["pkd"]["predictor_inputs"]  # written before the field existed
    save(tmp_path, model, opt, step=1, config=old)
    load_checkpoint(tmp_path, TrainConfig())  # default: nothing changed
    with pytest.raises(PkdError, match=r"method.pkd.predictor_inputs='<missing>' "
                                       r"\(expected 'cross'\)"):
        load_checkpoint(tmp_path, load_config(None, ["method.pkd.predictor_inputs=cross"]))
