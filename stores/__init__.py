"""Zarr v3 feature stores: schema, writer, reader, chunk-shuffled batches, HDF5 import.

The layout is described in docs/design.md (section Stores) and in :mod:`pkd.stores.schema`.
The torch-facing names (``ChunkShuffleSampler``, ``pad_batch``, ``StoreBatchDataset``) are
imported on first use, so ``import pkd.stores`` (e.g. for ``pkd stores info``) does not load torch.
"""

from __future__ import annotations

from pkd.stores.h5import import import_h5
from pkd.stores.info import store_info
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import ArraySpec, Failure, StoreSpec, config_hash
from pkd.stores.writer import StoreWriter

_SAMPLER_NAMES = ("ChunkShuffleSampler", "StoreBatchDataset", "pad_batch")

__all__ = [
    "ArraySpec", "Failure", "FeatureStore", "StoreSpec", "StoreWriter", "config_hash",
    "import_h5", "store_info", *_SAMPLER_NAMES,
]


def __getattr__(name: str):
    if name in _SAMPLER_NAMES:
        from pkd.stores import sampler  # torch: loaded on first use of a sampler name

        return getattr(sampler, name)
    raise AttributeError(f"module 'pkd.stores' has no attribute {name!r}")
