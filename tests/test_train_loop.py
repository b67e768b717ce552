"""The trainer end to end on tiny data: CLI, exact resume, NaN stop, refusals, DDP equivalence."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (
    benchmark_and_regions,
    make_regions_store,
    train_overrides,
)

from pkd.cli import main
from pkd.errors import PkdError
from pkd.train import checkpoint as ck
from pkd.train.config_load import load_config
from pkd.train.loop import Trainer, fit
from pkd.train.tasks.baseline import BaselineTask


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return benchmark_and_regions(tmp_path_factory)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ck.resolve_checkpoint(run / "ckpt") / "model.safetensors"))


def test_cli_train_then_evaluate_checkpoint(bench, tmp_path):
    data, regions = bench
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run)]) == 0
    for name in ("config.yaml", "answers.json", "words.json", "metrics.jsonl", "metrics.csv",
                 "training_curve.png", "stores.json", "best/latest.json", "ckpt/latest.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val"}
    assert load_config(run / "config.yaml").run.max_steps == 8
    assert main(["evaluate", "--checkpoint", str(run)]) == 0  # data.test_split: "test"
    metrics = json.loads((run / "metrics_test.json").read_text())
    results = json.loads((run / "results_test.json").read_text())
    questions = json.loads((data / "synth_test_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    assert metrics["missing"] == 0 and 0.0 <= metrics["overall"] <= 100.0
    assert metrics["inference"]["questions"] == len(results)
    assert metrics["inference"]["parameters"] > 0
    prior = metrics["prior"]  # every synthetic question type has a training favourite
    assert prior["questions"] == len(results) and 0.0 <= prior["prior"] <= 100.0


def test_resume_continues_exactly(bench, tmp_path, monkeypatch):
    data, regions = bench
    straight = fit(load_config(None, train_overrides(data, regions, tmp_path / "a")))
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "b"))
    original, calls = Trainer.train_step, {"n": 0}

    def crash_at_sixth_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # after the step-4 checkpoint, before the step-8 one
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_sixth_step)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.undo()
    assert ck.resolve_checkpoint(tmp_path / "b" / "ckpt").name == "step_000004"
    resumed = fit(cfg, resume=True)
    assert resumed.steps == straight.steps == 8
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [(tmp_path / r / "metrics.jsonl").read_text() for r in ("a", "b")]
    assert rows[0] == rows[1]  # the resumed run's log equals the uninterrupted one


def test_nan_loss_stops_and_keeps_last_good_checkpoint(bench, tmp_path, monkeypatch, capsys):
    data, regions = bench
    original, calls = BaselineTask.forward, {"n": 0}

    def nan_at_sixth(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 6:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(BaselineTask, "forward", nan_at_sixth)
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run, **{"run.eval_every": 0})]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became nan at step 6" in err[0] and "step_000004" in err[0]
    weights, state = ck.load_checkpoint(run / "ckpt")
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in weights.values())


def test_resume_refuses_another_model_config(bench, tmp_path, capsys):
    data, regions = bench
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run, **{"run.max_steps": 4})]) == 0
    changed = train_overrides(data, regions, run, **{"model.hidden_size": 48})
    assert main(["train", *changed, "--resume"]) == 2
    assert "model.hidden_size" in capsys.readouterr().err
    assert load_config(run / "config.yaml").model.hidden_size == 32  # run folder untouched
    assert main(["train", *train_overrides(data, regions, run)]) == 2  # no silent overwrite


def test_evaluate_refuses_stores_of_another_producer(bench, tmp_path, capsys):
    data, _ = bench
    regions, run = tmp_path / "regions.zarr", tmp_path / "run"
    make_regions_store(data, regions, producer="extractor-a")
    assert main(["train", *train_overrides(data, regions, run, **{"run.max_steps": 2})]) == 0
    shutil.rmtree(regions)
    make_regions_store(data, regions, producer="extractor-b")
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "producer.model" in err and "extractor-b" in err and "extractor-a" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_with_double_batch(bench, tmp_path):
    data, regions = bench
    one = tmp_path / "one"
    fit(load_config(None, train_overrides(data, regions, one, **{"run.batch_size": 16})))
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "pkd.cli",
           "train", *train_overrides(data, regions, two, **{"run.batch_size": 8})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PKD_QUIET": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_without_checkpoint_is_a_clear_error(bench, tmp_path):
    data, regions = bench
    with pytest.raises(PkdError, match="no checkpoint yet"):
        fit(load_config(None, train_overrides(data, regions, tmp_path / "r")), resume=True)


def test_val_carved_from_train_when_the_dataset_has_no_val_split(bench, tmp_path):
    from pkd.train.prepare import open_stores, split_batches, vocabs
    from pkd.train.splits import val_split_name

    data, regions = bench
    cfg = load_config(None, train_overrides(data, regions, tmp_path / "r", **{
        "data.val_fraction": 0.25, "data.val_split": "no-such-split"}))
    v = vocabs(cfg, tmp_path / "r", create=True)
    stores = open_stores(cfg)
    train, _ = split_batches(cfg, cfg.data.train_split, v, stores)
    val, _ = split_batches(cfg, val_split_name(cfg), v, stores)
    full = json.loads((data / "synth_train_questions.json").read_text())["questions"]
    assert len(train) + len(val) == len(full) and len(val) > 0
    assert not set(train.image_ids.tolist()) & set(val.image_ids.tolist())  # image-level carve
    result = fit(cfg)  # validates on the carved share, never on another split
    assert result.best_val >= 0


def test_prediction_device_follows_run_device():
    from pkd.train.predict import eval_device

    assert eval_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert eval_device("auto").type == "cpu"
        with pytest.raises(PkdError, match="run.device=cuda: no CUDA device"):
            eval_device("cuda")
    else:
        assert eval_device("auto").type == eval_device("cuda").type == "cuda"


def test_dataloader_workers_give_the_same_run(bench, tmp_path):
    """run.num_workers=2 reads batches in worker processes: same batches, same final weights."""
    data, regions = bench
    for name, workers in (("thread", 0), ("workers", 2)):
        cfg = load_config(None, train_overrides(data, regions, tmp_path / name,
                                                **{"run.num_workers": workers}))
        fit(cfg)
    a, b = _weights(tmp_path / "thread"), _weights(tmp_path / "workers")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
