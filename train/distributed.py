"""Multi-process training under ``torchrun`` (DDP): gloo on CPU, nccl on GPU.

``torchrun --nproc_per_node N -m pkd.cli train CONFIG.yaml`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; each process reads its share of every global batch (``run.batch_size`` questions
per process, so the global batch is ``batch_size * world_size``) and DDP averages gradients, which
equals one process stepping on the whole global batch (equal shares, mean-reduced losses).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0  # this process
    size: int = 1  # processes in the job
    local_rank: int = 0  # GPU index on this node
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that writes checkpoints, logs and results."""
        return self.rank == 0


def init_world(device: str) -> World:
    """Join the torchrun job if there is one; pick the device (``auto`` = cuda when present)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local, dev)


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over processes (a no-op in a single process)."""
    if world.size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def note(message: str) -> None:
    """One line on stderr, from the main process only (under torchrun, rank 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_rank() != 0:
        return
    print(message, file=sys.stderr, flush=True)
