"""What a feature store holds: its spec (kind, key, arrays, provenance) and how it is written down.

A store is one Zarr v3 group ``NAME.zarr`` whose group attributes carry ``{"pkd_store": {...}}``::

    {"schema_version": 1, "kind": "regions", "key": "image_id",
     "producer": {...}, "dims": {...},
     "arrays": [{"name": "boxes", "item_shape": [100, 4], "dtype": "float32"}, ...],
     "items_per_chunk": 16, "items_per_shard": 512, "n_items": 123287,
     "pkd_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00"}

Next to the arrays: ``ids`` int64 [n] (the key of each row, sorted ascending), ``ok`` uint8 [n]
(1 = row written successfully) and ``_pkd/done/shard-%06d.json``, one completion record per shard.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pkd import __version__
from pkd.errors import PkdError

SCHEMA_VERSION = 1
ATTR = "pkd_store"  # group attribute holding the store description
DONE_DIR = "_pkd/done"  # completion records, relative to the store root
RESERVED = ("ids", "ok")  # array names the store itself uses

# kind -> key; the array names of each kind are listed in docs/design.md (section Stores)
KINDS = {
    "regions": "image_id",
    "foundation_image": "image_id",
    "foundation_text": "question_id",
    "teacher": "question_id",
    "predicted": "question_id",
}
ALSO_KEYED_BY = {"foundation_text": ("caption_id",)}  # caption corpus stores (design.md)


def config_hash(obj: Any) -> str:
    """First 12 hex digits of sha256 over canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so specs compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


@dataclass(frozen=True)
class ArraySpec:
    """One per-item array: stored as ``dtype [n_items, *item_shape]``."""

    name: str  # array name = batch key = loss argument
    item_shape: tuple[int, ...]  # shape of one item, () for scalars such as counts
    dtype: str  # numpy dtype name, e.g. "float16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_shape", tuple(int(s) for s in self.item_shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)


@dataclass(frozen=True)
class Failure:
    """An item that could not be produced; its row stays zero with ``ok = 0``."""

    id: int  # image_id / question_id of the item
    path: str  # the input file involved, "" if none
    reason: str  # one line: what went wrong


@dataclass(frozen=True)
class StoreSpec:
    """Everything that defines a store's contents; two runs with equal specs write equal bytes."""

    kind: str  # "regions" | "foundation_image" | "foundation_text" | "teacher" | "predicted"
    key: str  # "image_id" | "question_id": what the row ids are
    arrays: tuple[ArraySpec, ...]  # the per-item arrays
    producer: dict = field(default_factory=dict)  # provenance: model, config_hash, detector, dtype
    dims: dict = field(default_factory=dict)  # e.g. {"feature_dim": 2048, "max_regions": 100}
    items_per_chunk: int = 16  # rows per compressed chunk (the unit of a read)
    items_per_shard: int = 512  # rows per shard file (the unit of work and of a write)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", tuple(self.arrays))
        names = [a.name for a in self.arrays]
        if self.kind not in KINDS:
            raise PkdError(f"store spec: unknown kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.key != KINDS[self.kind] and self.key not in ALSO_KEYED_BY.get(self.kind, ()):
            raise PkdError(f"store spec: kind {self.kind!r} is keyed by {KINDS[self.kind]!r}, "
                           f"not {self.key!r}")
        if len(set(names)) != len(names) or set(names) & set(RESERVED) or not names:
            raise PkdError(f"store spec: array names must be unique, non-empty, not {RESERVED}: "
                           f"{names}")
        if self.items_per_chunk < 1 or self.items_per_shard % self.items_per_chunk:
            raise PkdError(
                f"store spec: items_per_shard ({self.items_per_shard}) must be a multiple of "
                f"items_per_chunk ({self.items_per_chunk})"
            )

    def array(self, name: str) -> ArraySpec:
        """The spec of array ``name``."""
        for a in self.arrays:
            if a.name == name:
                return a
        raise PkdError(f"store spec: no array {name!r} (have {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.arrays]

    def to_attrs(self, n_items: int) -> dict:
        """The ``pkd_store`` group attribute for a store of ``n_items`` rows."""
        return canonical({
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "key": self.key,
            "producer": self.producer,
            "dims": self.dims,
            "arrays": [{"name": a.name, "item_shape": a.item_shape, "dtype": a.dtype}
                       for a in self.arrays],
            "items_per_chunk": self.items_per_chunk,
            "items_per_shard": self.items_per_shard,
            "n_items": int(n_items),
            "pkd_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        })

    @classmethod
    def from_attrs(cls, attrs: dict, where: str | Path) -> StoreSpec:
        """Inverse of :meth:`to_attrs` (``where`` names the store in errors)."""
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise PkdError(f"{where}: store schema_version {attrs.get('schema_version')!r}, "
                           f"this pkd reads {SCHEMA_VERSION}")
        arrays = tuple(ArraySpec(a["name"], tuple(a["item_shape"]), a["dtype"])
                       for a in attrs["arrays"])
        return cls(attrs["kind"], attrs["key"], arrays, attrs["producer"], attrs["dims"],
                   attrs["items_per_chunk"], attrs["items_per_shard"])


INFO = "info"  # producer key (at any depth) recorded but never compared, e.g. library versions


def compared(obj: Any) -> Any:
    """``obj`` without its informational ``info`` entries (at any depth)."""
    if isinstance(obj, dict):
        return {k: compared(v) for k, v in obj.items() if k != INFO}
    return obj


# What a differing provenance fingerprint means (the field name alone is a hash's name).
FIELD_MEANING = {
    "weights_sha256": "the model's weight files differ",
    "tokenizer_sha256": "the tokenizer files differ",
    "image_processor_sha256": "the image processor files (size, crop, mean / std) differ",
    "config_hash": "the model config differs",
    "config_sha256": "the model config differs",
    "boxes_sha256": "the boxes file differs",
}
MISSING = object()  # a field one side does not record


def spec_difference(have: StoreSpec, want: StoreSpec) -> str | None:
    """The first field (``producer.model``, ``producer.backbone.weights_sha256``,
    ``dims.max_regions``, ``arrays``...) that differs between two specs, named by its full dotted
    path, with both values (and what a differing fingerprint means); None when they describe the
    same store. ``producer`` entries named ``info`` (library versions...) are ignored."""
    a, b = canonical(have.to_attrs(0)), canonical(want.to_attrs(0))
    a["producer"], b["producer"] = compared(a["producer"]), compared(b["producer"])
    for part in ("kind", "key", "producer", "dims", "arrays", "items_per_chunk", "items_per_shard"):
        found = _difference(a[part], b[part], part)
        if found:
            return found
    return None


def _difference(have: Any, want: Any, where: str) -> str | None:
    """The first differing leaf below ``where`` (dicts are walked key by key, in sorted order)."""
    if have == want:
        return None
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want)):
            found = _difference(have.get(key, MISSING), want.get(key, MISSING), f"{where}.{key}")
            if found:
                return found
    name = where.rsplit(".", 1)[-1]
    if have is MISSING:
        return (f"{where} is not recorded in the store, expected {want!r} (a store made by an "
                "older pkd or another producer)")
    if want is MISSING:
        return f"{where} is {have!r} in the store, but this run does not record it"
    meaning = f" ({FIELD_MEANING[name]})" if name in FIELD_MEANING else ""
    return f"{where} is {have!r}, expected {want!r}{meaning}"


def read_attrs(path: Path) -> dict:
    """The ``pkd_store`` attribute of the store at ``path`` (PkdError if it is not a pkd store)."""
    meta = path / "zarr.json"
    if not meta.is_file():
        raise PkdError(f"{path}: not a pkd store (no zarr.json)")
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, json.JSONDecodeError) as err:
        raise PkdError(f"{path}: unreadable zarr.json ({err})") from None
    if ATTR not in attrs:
        raise PkdError(f"{path}: a Zarr group but not a pkd store (no {ATTR!r} attribute)")
    return attrs[ATTR]


def done_path(root: Path, k: int) -> Path:
    """Completion record of shard ``k``."""
    return root / DONE_DIR / f"shard-{k:06d}.json"
