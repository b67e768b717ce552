"""The ring of host buffers the GPU feed reads batches into (train/host_buffers.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkd.train.data import pinned, to_device
from pkd.train.host_buffers import HostBatch, HostBuffers


class FakeEvent:
    def __init__(self):
        self.waited = 0

    def synchronize(self):
        self.waited += 1


def test_a_slot_is_handed_out_again_only_after_its_copy_finished():
    ring = HostBuffers(slots=2)
    a, b = ring.take(), ring.take()
    event = a.event = FakeEvent()  # a device copy from slot a is in flight
    assert ring.take() is a and event.waited == 1 and a.event is None
    assert ring.take() is b  # no copy recorded: nothing to wait for
    with pytest.raises(ValueError, match="2 or more slots"):
        HostBuffers(slots=1)


def test_buffers_grow_by_bytes_and_views_take_any_shape():
    slot = HostBuffers(slots=2).take()
    x = slot.array("k", (4, 3), np.float16)
    assert x.shape == (4, 3) and x.dtype == np.float16 and x.flags.c_contiguous
    before = slot.nbytes
    y = slot.array("k", (2, 5), np.float16)  # fewer bytes: the same buffer, another shape
    assert slot.nbytes == before and np.shares_memory(x, y)
    z = slot.array("k", (10, 10), np.float32)  # more bytes: grown
    assert slot.nbytes == 400 and not np.shares_memory(x, z)


def test_the_device_copy_records_on_the_slot_and_pinning_keeps_it():
    slot = HostBuffers(slots=2).take()
    batch = HostBatch({"x": torch.from_numpy(slot.array("x", (2, 2), np.float16))})
    batch.slot = slot
    out = to_device(batch, torch.device("cpu"))
    assert out["x"].dtype == torch.float32 and slot.event is None  # a CPU records no event
    if torch.cuda.is_available():  # pinned() keeps the slot and does not copy pinned tensors
        pinned_slot = HostBuffers(slots=2, pin=True).take()
        t = torch.from_numpy(pinned_slot.array("x", (2, 2), np.float16))
        kept = HostBatch({"x": t})
        kept.slot = pinned_slot
        again = pinned(kept)
        assert again.slot is pinned_slot and again["x"].data_ptr() == t.data_ptr()
        to_device(again, torch.device("cuda"))
        assert pinned_slot.event is not None
