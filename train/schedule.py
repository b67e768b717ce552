"""Learning-rate schedule: linear warmup, then constant or cosine decay to zero.

``lr(step) = lr_max * step / warmup`` for ``step < warmup``; after it, ``constant``: ``lr_max``;
``cosine``: ``lr_max * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, warmup: int, total: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, schedule)
    )
