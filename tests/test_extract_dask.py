"""Distributed: ``pkd extract --workers N`` (a LocalCluster of worker processes) and
``--scheduler ADDRESS`` (a running cluster) write the bytes of one in-process run."""

from __future__ import annotations

import pytest
import torch

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import assert_same_store, extract_foundation  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, ... (session fixtures)

TARGETS = ("foundation_images.zarr", "foundation_questions.zarr")


def test_dask_workers_equal_one_run(clean, synth_data, tiny_clip_dir, tmp_path):
    """Two LocalCluster worker processes (one torch thread each) write the same bytes."""
    out = tmp_path / "dask"
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--workers", "2",
                              "--threads", "1") == 0
    for name in TARGETS:
        assert_same_store(out / name, clean / name)


def test_existing_scheduler_equals_one_run(clean, synth_data, tiny_clip_dir, tmp_path):
    """``--scheduler ADDRESS`` of a running cluster (here threads of this process)."""
    from dask.distributed import LocalCluster

    out = tmp_path / "scheduler"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        assert extract_foundation(synth_data, tiny_clip_dir, out, "--threads", "1",
                                  "--scheduler", cluster.scheduler_address) == 0
    for name in TARGETS:
        assert_same_store(out / name, clean / name)
