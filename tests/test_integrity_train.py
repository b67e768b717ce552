"""Training integrity: config values refused before anything is written, splits smaller than one
batch (one process and DDP), checkpoints whose bytes changed refused by evaluate and resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import (
    benchmark_and_regions,
    train_overrides,
)

from pkd.cli import main
from pkd.errors import PkdError
from pkd.train import checkpoint as ck
from pkd.train.config_load import load_config
from pkd.train.loop import Trainer, fit
from pkd.train.models.layers import require


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return benchmark_and_regions(tmp_path_factory)


def _train_questions(data: Path) -> int:
    return len(json.loads((data / "synth_train_questions.json").read_text())["questions"])


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(("bad", "expected"), [
    ("optim.lr=-1", "optim.lr: -1.0 is not > 0"),
    ("run.batch_size=0", "run.batch_size: 0 is not >= 1"),
    ("data.max_question_length=0", "data.max_question_length: 0 is not >= 1"),
    ("method.distill.tau=0", "method.distill.tau: 0.0 is not > 0"),
    ("model.use_foundation_features=true", "true needs data.foundation_image"),
    ("model.foundation_inputs=predicted", "'predicted' needs model.use_foundation_features=true"),
])
def test_bad_config_value_is_one_line_and_writes_nothing(bench, tmp_path, capsys, bad, expected):
    data, regions = bench
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run), bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and f"override '{bad}'" in err[0], err
    assert not run.exists()  # no answers.json / words.json / stores.json left behind


def test_bad_value_in_a_config_file_names_the_file(bench, tmp_path, capsys):
    data, regions = bench
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: -1\n")
    run = tmp_path / "run"
    over = [o for o in train_overrides(data, regions, run) if not o.startswith("optim.lr=")]
    assert main(["train", str(path), *over]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{path}: optim.lr: -1.0 is not > 0") and "\n" not in err
    assert not run.exists()


def test_a_missing_model_input_is_a_pkd_error():
    """The models' ``require`` and the PKD task raise the same kind of error for a missing input."""
    with pytest.raises(PkdError, match=r"batch has no 'image_embeds' \(model.use_foundation"):
        require({}, "image_embeds", "model.use_foundation_features")


# ----------------------------------------------------------------------------- small splits


def _record_batches(monkeypatch) -> list[int]:
    """Batch sizes of every training step; fails (instead of hanging, as the loop once did) when
    epochs keep starting without a step."""
    sizes, epochs = [], {"n": 0}
    step, epoch_batches = Trainer.train_step, Trainer.epoch_batches

    def counted_step(self, batch):
        sizes.append(len(batch["question_id"]))
        return step(self, batch)

    def counted_epochs(self):
        epochs["n"] += 1
        if epochs["n"] > 20:
            raise AssertionError("the training loop restarts epochs without taking a step")
        return epoch_batches(self)

    monkeypatch.setattr(Trainer, "train_step", counted_step)
    monkeypatch.setattr(Trainer, "epoch_batches", counted_epochs)
    return sizes


@pytest.mark.parametrize(("mode", "steps"), [
    ({"run.max_steps": 1}, 1),
    ({"run.max_steps": 0, "run.epochs": 3, "run.eval_every": 0, "run.checkpoint_every": 0}, 3),
])
def test_split_smaller_than_the_batch_trains_one_smaller_batch_per_epoch(
        bench, tmp_path, monkeypatch, mode, steps):
    """143 questions, run.batch_size=256: each epoch is one step on all 143 (the loop used to
    spin forever with max_steps, and to train 0 steps with epochs)."""
    data, regions = bench
    sizes = _record_batches(monkeypatch)
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "run",
                                            **{"run.batch_size": 256, **mode}))
    result = fit(cfg)
    assert result.steps == steps and sizes == [_train_questions(data)] * steps
    assert ck.load_checkpoint(tmp_path / "run" / "ckpt")[1]["step"] == steps


def test_no_training_batches_is_an_error_not_a_spin(bench, tmp_path, monkeypatch):
    """Backstop: should a sampler ever yield no batch, the trainer refuses instead of looping."""
    from pkd.stores import ChunkShuffleSampler
    from pkd.train import loop

    original = loop.make_sampler

    def empty_when_training(batches, cfg, world, shuffle):
        if shuffle:
            return ChunkShuffleSampler(np.zeros(0, np.int64), cfg.run.batch_size, 8)
        return original(batches, cfg, world, shuffle)

    monkeypatch.setattr(loop, "make_sampler", empty_when_training)
    data, regions = bench
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "run"))
    with pytest.raises(PkdError, match="no training questions to cut into batches"):
        fit(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_split_smaller_than_the_global_batch(bench, tmp_path):
    """Two processes, 128 questions each per step (global 256 > 143): every rank takes the same
    one step per epoch (a rank stepping alone would hang DDP's all-reduce)."""
    data, regions = bench
    run = tmp_path / "run"
    over = train_overrides(data, regions, run, **{
        "run.batch_size": 128, "run.max_steps": 0, "run.epochs": 2, "run.eval_every": 0,
        "run.checkpoint_every": 0})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "pkd.cli",
           "train", *over]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PKD_QUIET": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ck.load_checkpoint(run / "ckpt")[1]["step"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]


# ----------------------------------------------------------------------------- checkpoints


def _flip_tensor_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x40  # inside the tensor data: still a valid safetensors file
    file.write_bytes(bytes(data))


def test_flipped_checkpoint_bytes_are_refused_by_evaluate_and_resume(bench, tmp_path, capsys):
    data, regions = bench
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run, **{"run.max_steps": 4})]) == 0
    best = ck.resolve_checkpoint(run / "best") / "model.safetensors"
    _flip_tensor_byte(best)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{best}: checksum mismatch" in err[0], err
    last = ck.resolve_checkpoint(run / "ckpt") / "state.safetensors"
    _flip_tensor_byte(last)
    more = train_overrides(data, regions, run, **{"run.max_steps": 8})
    assert main(["train", *more, "--resume"]) == 2
    assert f"{last}: checksum mismatch" in capsys.readouterr().err


class _DamagedBatches(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise PkdError("x.zarr: array 'region_features', chunk 3: damaged data")


def test_a_worker_process_error_stays_one_line():
    """run.num_workers > 0: the DataLoader re-raises a worker's PkdError with the worker's
    traceback in the message; the trainer keeps its one line."""
    from pkd.train.loop import _one_line_errors

    loader = torch.utils.data.DataLoader(_DamagedBatches(), batch_size=None, num_workers=1)
    with pytest.raises(PkdError) as err:
        list(_one_line_errors(loader))
    assert str(err.value) == "x.zarr: array 'region_features', chunk 3: damaged data"
