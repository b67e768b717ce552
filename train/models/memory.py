"""PKD's feature-level distillation through a memory (paper: "memory mechanism"; details ours).

:class:`FeatureMemory` ``Mem`` (M, d): a FIFO ring buffer of K pooled, projected predicted
features (:class:`~pkd.train.losses.queue.TokenQueue`: registered buffers ``vectors`` (K, d),
``ptr``, ``count``, so it is saved with the model and all-gathered across ranks) plus
``learnable_slots`` trainable rows. The trainer writes the foundation head's unit-norm
embeddings of ``ṽ`` and ``t̃`` (``d = d_e``, the space of the stores' ``image_embeds`` /
``text_embeds``; ``method.pkd.memory_holds=features``: the predicted features' token means,
``d = max(d_v, d_t)``) **after** the VQA forward of each step, so the memory holds earlier batches
only (as at test time). Writes happen only in training mode and never from padded items.

:class:`GatedMemoryFusion`, one for word and one for region features::

    x' = x + g ⊙ softmax((x W_q)(Mem W_k)^T / √d) (Mem W_v),     g = σ(W_g x + b)

with ``W_q`` (d_x, d), ``W_k`` (d, d), ``W_v`` (d, d_x), ``W_g`` (d_x, d_x). An empty memory
(no write yet, no learnable slots) leaves ``x`` unchanged; padded positions are never changed.

:class:`PKDFeatureFusion` is what the task sets as the VQA model's ``feature_fusion`` hook (a
registered submodule, so the memory is part of ``model.state_dict()`` and runs at test time
without the foundation model or the predictors). Its :meth:`~PKDFeatureFusion.substitute` context
replaces the embedded words / regions by given features for one forward (the model-level KD pass
on predicted pairs, :mod:`pkd.train.tasks.pkd`); the memory fusion still applies to them.
With ``at_test=False`` (``method.pkd.memory_at_test``, an ablation of the reading) the fusion
runs in training mode only: evaluation (validation and test) sees ``x`` unchanged, so D answers
from its own inputs and the memory acts as a training-time regulariser.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pkd.train.losses.queue import TokenQueue


class FeatureMemory(nn.Module):
    """FIFO queue of ``size`` vectors of width ``dim`` + ``slots`` learnable rows."""

    def __init__(self, size: int, dim: int, slots: int = 0):
        super().__init__()
        if size < 0 or slots < 0:
            raise ValueError(f"memory size and slots must be >= 0, got {size}, {slots}")
        self.dim = dim
        self.queue = TokenQueue(size, dim) if size > 0 else None
        self.slots = nn.Parameter(torch.randn(slots, dim) / math.sqrt(dim)) if slots else None

    def content(self) -> torch.Tensor:
        """The memory rows (M, d): filled queue rows (a copy) then learnable slots; M may be 0."""
        parts = []
        if self.queue is not None:
            parts.append(self.queue.negatives())  # (count, d)
        if self.slots is not None:
            parts.append(self.slots)  # (S, d)
        if not parts:
            return torch.zeros(0, self.dim)
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def write(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Enqueue the rows of ``x`` (n, d) where ``valid`` (n,) is True; training mode only."""
        if not self.training or self.queue is None:
            return
        if valid is not None:
            x = x[valid.bool()]
        self.queue.enqueue(x.detach())


class GatedMemoryFusion(nn.Module):
    """``x' = x + σ(W_g x + b) ⊙ Attn(x W_q, Mem W_k, Mem W_v)`` (module docstring)."""

    def __init__(self, feature_dim: int, memory_dim: int):
        super().__init__()
        self.query = nn.Linear(feature_dim, memory_dim, bias=False)
        self.key = nn.Linear(memory_dim, memory_dim, bias=False)
        self.value = nn.Linear(memory_dim, feature_dim, bias=False)
        self.gate = nn.Linear(feature_dim, feature_dim)
        self.scale = 1.0 / math.sqrt(memory_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, d_x), ``mask`` (B, T) bool, ``memory`` (M, d) -> (B, T, d_x)."""
        if memory.shape[0] == 0:
            return x
        memory = memory.to(x.dtype)
        scores = self.query(x) @ self.key(memory).T * self.scale  # (B, T, M)
        read = torch.softmax(scores, dim=-1) @ self.value(memory)  # (B, T, d_x)
        gate = torch.sigmoid(self.gate(x))  # (B, T, d_x)
        return x + (gate * read) * mask[..., None].to(x.dtype)


class PKDFeatureFusion(nn.Module):
    """The VQA model's ``feature_fusion`` hook: optional substitution, then memory fusion."""

    def __init__(self, memory: FeatureMemory | None, word_dim: int, region_dim: int,
                 at_test: bool = True):
        super().__init__()
        self.memory, self.at_test = memory, at_test
        self.word_fusion = self.region_fusion = None
        if memory is not None:
            self.word_fusion = GatedMemoryFusion(word_dim, memory.dim)
            self.region_fusion = GatedMemoryFusion(region_dim, memory.dim)
        self._substitute: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextmanager
    def substitute(self, words: torch.Tensor, regions: torch.Tensor) -> Iterator[None]:
        """Within the block, the hook ignores the embedded inputs and uses ``words`` (B, L, d_w)
        / ``regions`` (B, N, d_r) instead (shapes must match the masks of the batch)."""
        self._substitute = (words, regions)
        try:
            yield
        finally:
            self._substitute = None

    def forward(self, words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                region_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._substitute is not None:
            words, regions = self._substitute
        if self.memory is None or not (self.training or self.at_test):
            return words, regions
        memory = self.memory.content().to(words.device)  # (M, d)
        return (self.word_fusion(words, word_mask, memory),
                self.region_fusion(regions, region_mask, memory))
