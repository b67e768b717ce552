"""Batches that read few chunks: chunk-shuffled sampling, padding masks, a batch dataset.

Random rows are slow from any compressed store (each row costs a whole chunk), so an epoch is
shuffled in two levels instead of item by item:

1. the chunks (``store_row // items_per_chunk``) touched by ``rows`` are put in random order;
2. consecutive windows of ``window_chunks`` chunks are formed and the positions inside each window
   are shuffled; batches are consecutive slices of this order.

A batch of ``B`` positions therefore spans at most ``ceil(B / W) + 1`` consecutive windows (``W`` =
positions in the smallest window), i.e. at most ``window_chunks * (ceil(B / W) + 1)`` chunks,
instead of up to ``B``: with full chunks of 16 rows, 16-chunk windows and B = 256, <= 32 chunks.
Each position appears exactly once per epoch; the order depends only on ``(seed, epoch)``.

Distributed data parallel: every rank computes the same epoch order and cuts it into *global*
batches of ``batch_size * world_size`` positions; rank ``r`` takes the ``r``-th slice of each. So
step ``t`` of an N-process job covers exactly the positions of step ``t`` of one process with an
N-times larger batch (DDP averages the gradients: the same update), ranks are disjoint and
equally long, and each global batch keeps its chunk locality. A last short global batch is padded
by repeating the epoch's first positions until it divides by ``world_size`` (as
``torch.utils.data.DistributedSampler`` does).

``drop_last`` drops that short last global batch, except when it is the only one: a split with
fewer positions than ``batch_size * world_size`` gives one smaller batch per epoch (per rank:
``ceil(M / world_size)`` positions), never zero batches. Every rank takes the same number of
batches either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pkd.stores.reader import FeatureStore


class ChunkShuffleSampler:
    """Yields batches (lists of positions into ``rows``); ``rows[i]`` is the store row of item
    ``i``.

    With ``shuffle=False`` positions come in their given order (evaluation).
    """

    def __init__(self, rows: np.ndarray, batch_size: int, items_per_chunk: int,
                 window_chunks: int = 16, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or items_per_chunk < 1 or window_chunks < 1:
            raise ValueError("batch_size, items_per_chunk and window_chunks must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.chunk_of = np.asarray(rows, dtype=np.int64).reshape(-1) // items_per_chunk  # (M,)
        self.batch_size, self.window_chunks = batch_size, window_chunks
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (call before each epoch, like DistributedSampler)."""
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """All positions of this epoch, in sampling order (same on every rank)."""
        m = len(self.chunk_of)
        if not self.shuffle:
            return np.arange(m)
        rng = np.random.default_rng([self.seed, self.epoch])
        # group: chunk index per position
        chunks, group = np.unique(self.chunk_of, return_inverse=True)
        chunk_rank = rng.permutation(len(chunks))  # new place of each chunk
        window = chunk_rank[group] // self.window_chunks  # (M,) window of each position
        # sort by window, random order inside a window
        return np.lexsort((rng.random(m), window))

    def _stop(self, m: int) -> int:
        """How many of the ``m`` ordered positions are cut into batches (``drop_last`` keeps a
        short batch when it is the only one)."""
        g = self.batch_size * self.world_size
        return m - m % g if self.drop_last and m >= g else m

    def __iter__(self) -> Iterator[list[int]]:
        order, b, w = self.epoch_order(), self.batch_size, self.world_size
        g = b * w  # global batch: what one process would take with batch_size * world_size
        for start in range(0, self._stop(len(order)), g):
            batch = order[start:start + g]  # (<= g,) positions of this global batch
            if len(batch) % w:  # last global batch: repeat the epoch's first positions
                batch = np.concatenate([batch, np.resize(order, w - len(batch) % w)])
            per = len(batch) // w
            yield batch[self.rank * per:(self.rank + 1) * per].tolist()

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        return -(-self._stop(len(self.chunk_of)) // g)


def pad_batch(arrays: dict[str, np.ndarray], count_name: str, padded_names: Sequence[str],
              mask_name: str | None = None) -> dict[str, np.ndarray]:
    """Trim ``padded_names`` (B, N_max, ...) to the batch's longest item and add a mask.

    ``n = max(1, arrays[count_name].max())``: each padded array becomes (B, n, ...), and
    ``mask[b, j] = j < count[b]`` (bool, (B, n)) is stored as ``mask_name``, by default
    ``<prefix>_mask`` with the prefix of the first padded name (``region_features`` ->
    ``region_mask``, ``text_tokens`` -> ``text_mask``). At least one slot is kept so no tensor is
    empty. Returns a new dict; the count array is kept.
    """
    count = np.asarray(arrays[count_name]).reshape(-1)  # (B,)
    n = max(1, int(count.max(initial=0)))
    out = dict(arrays)
    for name in padded_names:
        out[name] = arrays[name][:, :n]
    mask = np.arange(n)[None, :] < count[:, None]
    out[mask_name or f"{padded_names[0].split('_')[0]}_mask"] = mask
    return out


class StoreBatchDataset(torch.utils.data.Dataset):
    """``dataset[positions]`` -> one batch of torch tensors from one store.

    Use with ``DataLoader(ds, sampler=ChunkShuffleSampler(ds.rows, ...), batch_size=None)``.
    ``rows`` (default: every row) maps positions to store rows; ``pad`` maps a count array to the
    padded arrays it trims (see :func:`pad_batch`); the batch also carries the key (``image_id``
    or ``question_id``, int64). float16 arrays become float32 unless ``keep_float16``.
    """

    def __init__(self, store: FeatureStore, names: Sequence[str] | None = None,
                 rows: np.ndarray | None = None, pad: dict[str, Sequence[str]] | None = None,
                 keep_float16: bool = False):
        self.store = store
        self.names = list(names or store.spec.names)
        self.rows = np.arange(store.n_items) if rows is None else np.asarray(rows, dtype=np.int64)
        self.pad = dict(pad or {})
        self.keep_float16 = keep_float16
        missing = [c for c in self.pad if c not in self.names]
        if missing:
            raise ValueError(f"{store.path}: pad counts {missing} are not among the read names")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        batch = self.store.read(rows, self.names)
        for count_name, padded in self.pad.items():
            batch = pad_batch(batch, count_name, padded)
        batch[self.store.spec.key] = self.store.ids[rows]
        return {name: torch.from_numpy(np.ascontiguousarray(self._widen(a)))
                for name, a in batch.items()}

    def _widen(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32) if a.dtype == np.float16 and not self.keep_float16 else a
