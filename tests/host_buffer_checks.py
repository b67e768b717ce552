"""Shared check: batches read into the GPU feed's ring of host buffers equal the plain ones."""

from __future__ import annotations

import numpy as np
import torch

from pkd.train.data import to_device
from pkd.train.host_buffers import HostBuffers
from pkd.train.prepare import open_stores, split_batches, vocabs


def assert_ring_batches_equal(cfg, run_dir, foundation_tokens: bool = False,
                              teacher: bool = False, batch: int = 5) -> dict:
    """Read the same batches with and without a ring of 3 slots (more batches than slots, one
    read twice); every key equal, large arrays inside the slots, the ring's memory reused.
    Returns the last batch read into the ring."""
    v = vocabs(cfg, run_dir, create=True)
    stores = open_stores(cfg)
    _, plain = split_batches(cfg, cfg.data.train_split, v, stores,
                             foundation_tokens=foundation_tokens, teacher=teacher)
    _, ring = split_batches(cfg, cfg.data.train_split, v, stores,
                            foundation_tokens=foundation_tokens, teacher=teacher)
    plain.half_on_host = ring.half_on_host = True  # as on a GPU
    ring.buffers = HostBuffers(slots=3)
    order = np.random.default_rng(0).permutation(len(plain))
    positions = [order[i:i + batch] for i in range(0, 6 * batch, batch)]
    positions[3] = positions[0]  # slot 0 again, same rows: the same bytes, no growth
    first_ptr = None
    for i, pos in enumerate(positions):
        want, got = plain[pos], ring[pos]
        assert got.slot is ring.buffers.slots[i % 3]
        assert set(want) == set(got)
        for key, value in want.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        if i == 0:
            first_ptr = got["region_features"].data_ptr()
        if i == 3:
            assert got["region_features"].data_ptr() == first_ptr  # slot 0's buffer, reused
        to_device(got, torch.device("cpu"))  # records nothing on a CPU; frees nothing early
    held = {k for k, t in got.items() if any(
        buf.data_ptr() <= t.data_ptr() < buf.data_ptr() + buf.numel()
        for buf in got.slot._flat.values())}
    return {"batch": got, "in_slot": held}
