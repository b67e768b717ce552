"""Batches for a GPU keep float16 on the host and convert on the device: the same float32
values as converting on the host, in pinned memory where pinning is available."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkd.train.data import _tensor, pinned, to_device


def test_half_on_host_then_device_equals_float_on_host():
    rng = np.random.default_rng(0)
    arrays = {"region_features": rng.standard_normal((4, 3, 8)).astype(np.float16),
              "num_regions": np.array([3, 2, 1, 3], np.int32),
              "targets": rng.random((4, 5)).astype(np.float32)}
    host = {k: _tensor(v) for k, v in arrays.items()}
    half = {k: _tensor(v, keep_half=True) for k, v in arrays.items()}
    assert half["region_features"].dtype == torch.float16
    assert host["region_features"].dtype == torch.float32
    moved = to_device(half, torch.device("cpu"))
    for k in arrays:
        assert moved[k].dtype == host[k].dtype
        assert torch.equal(moved[k], host[k])


def test_pinned_batches_keep_their_values():
    if not torch.cuda.is_available():
        pytest.skip("page-locked memory needs a CUDA runtime")
    batch = {"x": torch.arange(6, dtype=torch.float16)}
    out = pinned(batch)
    assert out["x"].is_pinned() and torch.equal(out["x"], batch["x"])
