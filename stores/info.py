"""A store at a glance: schema, counts, provenance and completeness, as one JSON-able dict."""

from __future__ import annotations

from pathlib import Path

from pkd.stores.reader import FeatureStore
from pkd.stores.records import n_shards

MAX_LISTED_FAILURES = 20  # failures listed in full; the count is always exact


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def store_info(path: str | Path) -> dict:
    """Summary of the store at ``path`` (PkdError if it is not a pkd store)."""
    store = FeatureStore.open(path)
    spec, attrs = store.spec, store.attrs
    shards = n_shards(store.n_items, spec.items_per_shard)
    checksums = store.checksums
    return {
        "path": str(store.path),
        "kind": spec.kind,
        "key": spec.key,
        "n_items": store.n_items,
        "n_ok": int(store.ok.sum()),
        "arrays": [{"name": a.name, "item_shape": list(a.item_shape), "dtype": a.dtype}
                   for a in spec.arrays],
        "producer": spec.producer,
        "dims": spec.dims,
        "items_per_chunk": spec.items_per_chunk,
        "items_per_shard": spec.items_per_shard,
        "n_shards": shards,
        "done_shards": shards - len(store.pending),
        "pending_shards": store.pending,
        "complete": store.complete,
        "n_failures": len(store.failures),
        "failures": [vars(f) for f in store.failures[:MAX_LISTED_FAILURES]],
        "bytes_on_disk": disk_bytes(store.path),
        "chunk_checksums": all(checksums.values()),  # False: written before pkd added crc32c
        "arrays_without_checksums": [name for name, has in checksums.items() if not has],
        "schema_version": attrs["schema_version"],
        "pkd_version": attrs.get("pkd_version"),
        "created": attrs.get("created"),
    }
