"""A MoCo-style FIFO ring buffer of token vectors: the negatives of DistillVLM's token-wise NCE.

State (registered buffers, so they are saved in checkpoints and move with ``.to(device)``)::

    vectors  float32 (K, d)   the stored vectors; rows >= count are unused zeros
    ptr      int64 ()         the row the next vector is written to
    count    int64 ()         rows filled so far (min(K, vectors ever enqueued))

``enqueue(x)`` writes the n rows of ``x`` at rows ``ptr, ptr+1, ... (mod K)`` and advances
``ptr`` by n (mod K): the oldest rows are overwritten first. When ``n > K`` only the last K rows of
``x`` are kept (as if they had been written one by one). Callers pass only valid (unpadded)
tokens; the queue never sees a mask. ``negatives()`` returns a *copy* of the filled rows, so a loss
built from it stays valid after a later in-place ``enqueue`` in the same step.

Distributed training: when ``torch.distributed`` is initialized with world size > 1, ``enqueue``
first all-gathers the (variable-length) batches of every rank in rank order, so all ranks hold the
same queue (as MoCo's ``concat_all_gather``). Every rank must then call ``enqueue`` the same
number of times.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class TokenQueue(nn.Module):
    """FIFO ring buffer of ``size`` vectors of width ``dim`` (see module docstring)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        self.register_buffer("vectors", torch.zeros(size, dim))  # (K, d)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    def negatives(self) -> torch.Tensor:
        """A copy of the filled rows (count, d), in storage order."""
        return self.vectors[: int(self.count)].clone()

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        """Append the rows of ``x`` (n, d) (gathered over ranks first), overwriting the oldest."""
        if x.dim() != 2 or x.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"enqueue expects (n, {self.vectors.shape[1]}), got {tuple(x.shape)}")
        x = gather_rows(x.detach().to(self.vectors.dtype))
        n, k = x.shape[0], self.size
        if n == 0:
            return
        start = int(self.ptr)
        if n > k:  # only the last k rows survive; they land where sequential writes put them
            start, x = (start + n - k) % k, x[n - k:]
        rows = (start + torch.arange(x.shape[0], device=x.device)) % k  # (m,)
        self.vectors[rows] = x
        self.ptr.fill_((start + x.shape[0]) % k)
        self.count.fill_(min(k, int(self.count) + n))


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n_r, d) of every rank concatenated in rank order; ``x`` itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = x.new_zeros(most, x.shape[1])  # (max n_r, d): all_gather needs equal shapes
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
