"""Resumable and sliceable: an interrupted ``pkd extract`` resumed and a run split into
``--shard i/n`` slices write the bytes of one clean run (dask: ``test_extract_dask.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pkd.stores import FeatureStore

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import assert_same_store, done_records, extract_foundation, pkd  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, ... (session fixtures)

TARGETS = ("foundation_images.zarr", "foundation_questions.zarr")


def test_interrupted_run_resumes_to_the_clean_bytes(synth_data, tiny_clip_dir, tmp_path,
                                                    capsys):
    """SIGKILL a subprocess once some but not all shards are done; resume in-process."""
    out, ref = tmp_path / "killed", tmp_path / "ref"
    # 16 images (val + test), one per shard: shards of a few ms leave a window for the kill
    args = ["extract", "foundation", "--data", synth_data, "--model", tiny_clip_dir,
            "--splits", "val,test", "--threads", "1", "--batch-size", "1",
            "--items-per-shard", "1"]
    env = {**os.environ, "PKD_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pkd.cli", *map(str, args), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    images = out / TARGETS[0]
    deadline = time.monotonic() + 60
    while proc.poll() is None and not done_records(images) and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stderr = proc.stderr.read().decode()
    done = len(done_records(images))
    assert proc.returncode == -signal.SIGKILL and 1 <= done < 16, (done, stderr)
    assert "Loading weights" not in stderr  # no transformers progress bars in logs
    assert not FeatureStore.open(images).complete and not (out / TARGETS[1]).exists()

    capsys.readouterr()
    assert pkd(*args, "--out", out) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{16 - done} shards run, {done} skipped (done)" in first, first
    assert pkd(*args, "--out", ref) == 0  # clean run of the same layout (chunks of 1 item)
    for name in TARGETS:
        assert_same_store(out / name, ref / name)


def test_shard_slices_equal_one_run(clean, synth_data, tiny_clip_dir, tmp_path):
    out = tmp_path / "sliced"
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--threads", "1",
                              "--shard", "1/2") == 0
    half = FeatureStore.open(out / TARGETS[0])
    assert half.pending == [0, 2]  # slice 1 of 2 did only the odd shards
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--threads", "1",
                              "--shard", "0/2") == 0
    for name in TARGETS:
        assert_same_store(out / name, clean / name)
