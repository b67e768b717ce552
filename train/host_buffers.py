"""Reusable host buffers that training batches are read into: pinned on CUDA, so each store row
is copied once, from the page cache straight into memory the device copies from.

Without them a GPU batch is gathered into fresh arrays (page faults on every large allocation)
and then copied again into pinned memory (``Tensor.pin_memory``). With them
(:attr:`pkd.train.data.VQABatches.buffers`) the stores fill a *slot* of a ring:

- slot ``k`` holds batch ``j`` with ``j % slots == k``, one flat byte buffer per batch key,
  grown when a batch needs more bytes (a batch's token count varies; the buffer does not);
- the device copy of the batch (:func:`pkd.train.data.to_device`, ``non_blocking``) records a
  CUDA event on its slot, and the reader waits for that event before filling the slot again,
  so a buffer is never overwritten while a copy from it is in flight;
- without CUDA there is no event: the ring only rotates, so a batch must be done with before
  ``slots`` later batches are read (read-ahead depth + 3 slots: the batch in use, the one being
  read and the queued ones; with ``n`` read threads, ``2 n + 3``). Only the device feed uses
  the ring; CPU training does not.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from pkd.stores.reader import cropped_shape


class HostSlot:
    """The buffers of one batch in the ring."""

    def __init__(self, pin: bool):
        self.pin = pin
        self._flat: dict[str, torch.Tensor] = {}  # key -> uint8 buffer (pinned when pin)
        self.event = None  # the device copy of the batch last read into this slot

    def array(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A contiguous ``shape`` ``dtype`` array over the slot's buffer for ``key``."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        flat = self._flat.get(key)
        if flat is None or flat.numel() < nbytes:
            flat = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)
            self._flat[key] = flat
        return flat.numpy()[:nbytes].view(dtype).reshape(shape)

    def out(self, prefix: str, store, names, n: int, crop: dict | None = None
            ) -> dict[str, np.ndarray]:
        """``out`` buffers for ``store.read(rows (n of them), names, crop=crop)``."""
        got = {}
        for name in names:
            spec = store.spec.array(name)
            item = cropped_shape(spec.item_shape, (crop or {}).get(name, ()))
            got[name] = self.array(f"{prefix}/{name}", (n, *item), spec.dtype)
        return got

    def record(self, device: torch.device) -> None:
        """Mark the end of the device copies just queued from this slot (CUDA: an event)."""
        if device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(device))

    def wait(self) -> None:
        """Block until the last device copy from this slot has finished."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() for t in self._flat.values())


class HostBuffers:
    """A ring of :class:`HostSlot` (see the module doc)."""

    def __init__(self, slots: int = 5, pin: bool = False):
        if slots < 2:
            raise ValueError(f"a ring of host buffers needs 2 or more slots, not {slots}")
        self.slots = [HostSlot(pin) for _ in range(slots)]
        self._next = 0
        self._lock = threading.Lock()  # several read threads take slots

    def take(self) -> HostSlot:
        """The next slot, once its last device copy has finished."""
        with self._lock:
            slot = self.slots[self._next]
            self._next = (self._next + 1) % len(self.slots)
        slot.wait()
        return slot


class HostBatch(dict):
    """A batch dict whose large tensors live in ``slot`` (released by the device copy)."""

    slot: HostSlot | None = None
