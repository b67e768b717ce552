"""kill -9 at random points: an extraction resumed, and a training run resumed with ``--resume``,
end exactly where an uninterrupted run ends (several seeds pick the points)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_benchmark, make_regions_store, train_overrides

from pkd.train import checkpoint as ck

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import assert_same_store, done_records, pkd  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, tiny_clip_dir (session fixtures)

TARGETS = ("foundation_images.zarr", "foundation_questions.zarr")
ENV = {**os.environ, "PKD_QUIET": "1"}


def start(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pkd.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, ready, extra_s: float, what: str) -> None:
    """Wait until ``ready()`` (or the process ends), sleep ``extra_s``, then SIGKILL it; fail
    unless the kill is what ended the process."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(extra_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (what, proc.stderr.read().decode()[-2000:])


# ---------------------------------------------------------------------------- extraction

def extract_args(synth_data, tiny_clip_dir) -> list:
    # 16 images (val + test) and their questions, one item per shard: many points to die at
    return ["extract", "foundation", "--data", synth_data, "--model", tiny_clip_dir,
            "--splits", "val,test", "--threads", "1", "--batch-size", "1",
            "--items-per-shard", "1"]


@pytest.fixture(scope="module")
def clean_extract(synth_data, tiny_clip_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean_extract")
    assert pkd(*extract_args(synth_data, tiny_clip_dir), "--out", out) == 0
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extraction_killed_at_a_random_point_resumes_to_the_clean_store(
        seed, clean_extract, synth_data, tiny_clip_dir, tmp_path):
    rng = random.Random(seed)
    target = tmp_path / rng.choice(TARGETS)  # die while the image or the question store is written
    k = rng.randrange(0, 12)  # ... after k of its shards are done, plus up to 20 ms
    args = extract_args(synth_data, tiny_clip_dir)
    proc = start([*args, "--out", tmp_path])
    kill_when(proc, lambda: (target / "zarr.json").is_file() and len(done_records(target)) >= k,
              rng.uniform(0, 0.02), f"seed {seed}: {target.name} after {k} shards")
    assert pkd(*args, "--out", tmp_path) == 0
    for name in TARGETS:
        assert_same_store(tmp_path / name, clean_extract / name)


# ---------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_bench")
    data = make_benchmark(root / "data")
    return data, make_regions_store(data, root / "regions.zarr")


def run_overrides(bench, out: Path) -> list[str]:
    data, regions = bench
    return train_overrides(data, regions, out, **{
        "run.max_steps": 60, "run.checkpoint_every": 3, "run.eval_every": 15, "run.threads": 1})


@pytest.fixture(scope="module")
def straight_run(bench, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert pkd("train", *run_overrides(bench, out)) == 0
    return out


def checkpoint_step(run: Path) -> int:
    latest = ck.latest_checkpoint(run / "ckpt") if (run / "ckpt").is_dir() else None
    return int(latest.name.split("_")[1]) if latest else -1


@pytest.mark.parametrize("seed", [0, 1])
def test_training_killed_at_a_random_point_resumes_to_the_same_weights(
        seed, bench, straight_run, tmp_path):
    rng = random.Random(seed)
    k = rng.randrange(3, 40, 3)  # a checkpoint exists, then up to 30 ms more (mid-step, mid-write)
    out = tmp_path / "run"
    proc = start(["train", *run_overrides(bench, out)])
    kill_when(proc, lambda: checkpoint_step(out) >= k, rng.uniform(0, 0.03),
              f"seed {seed}: after the step-{k} checkpoint")
    killed_at = checkpoint_step(out)
    assert 3 <= killed_at < 60
    assert pkd("train", *run_overrides(bench, out), "--resume") == 0
    final = [load_file(str(ck.resolve_checkpoint(r / "ckpt") / "model.safetensors"))
             for r in (straight_run, out)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])
    best = [load_file(str(ck.resolve_checkpoint(r / "best") / "model.safetensors"))
            for r in (straight_run, out)]
    assert all(torch.equal(best[0][name], best[1][name]) for name in best[0])
    assert not list((out / "ckpt").glob(".tmp-*"))  # a half-written checkpoint was cleaned up
