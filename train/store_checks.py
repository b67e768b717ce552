"""What a run checks about its stores: every shard extracted, and the same stores as before.

A store with shards still to extract is refused, naming it and what is missing
(:func:`check_complete`), unless ``data.allow_incomplete``: then it is noted on stderr and the
questions it lacks are dropped (:func:`pkd.train.splits.join_split`). The provenance of the
stores is recorded in the run (``stores.json``) on its first start; a later resume / evaluation
with stores made by another producer, with other dims or from other inputs is refused with the
reason (:func:`check_provenance`). Evaluation sizes its model from that record
(:func:`recorded_foundation_dims`) without opening the foundation stores.
"""

from __future__ import annotations

import json
from pathlib import Path

from pkd.errors import PkdError, StoreMismatch
from pkd.fsio import write_json
from pkd.stores import FeatureStore
from pkd.stores.records import n_shards, shard_range
from pkd.train.data import Stores
from pkd.train.distributed import note


def missing_items(store: FeatureStore) -> int:
    """Items of ``store`` in shards without a completion record (not extracted yet)."""
    ips = store.spec.items_per_shard
    return sum(len(shard_range(k, store.n_items, ips)) for k in store.pending)


def check_complete(store: FeatureStore, allow: bool, purpose: str = "train") -> None:
    """Refuse ``store`` if shards are still to extract (one line naming it and what is missing);
    with ``allow`` (``data.allow_incomplete``) note it on stderr instead."""
    if store.complete:
        return
    total = n_shards(store.n_items, store.spec.items_per_shard)
    what = (f"{len(store.pending)} of {total} shards ({missing_items(store)} of "
            f"{store.n_items} items) not extracted")
    if not allow:
        raise PkdError(f"{store.path}: incomplete {store.spec.kind} store, {what} (finish it by "
                       "re-running the same pkd extract command, or set "
                       f"data.allow_incomplete=true to {purpose} on the extracted items only)")
    note(f"warning: {store.path}: incomplete {store.spec.kind} store, {what}; "
         "data.allow_incomplete=true: questions without its features are dropped")


def store_provenance(stores: Stores) -> dict:
    """``{role: {"producer", "dims", "inputs_sha256"}}`` of every open store
    (``inputs_sha256``: the digest of the images / texts it was made from, when recorded)."""
    out = {}
    for role in ("regions", "foundation_image", "foundation_text", "teacher_regions", "teacher",
                 "predicted"):
        store = getattr(stores, role)
        if store is not None:
            out[role] = {"producer": store.spec.producer, "dims": store.spec.dims}
            if store.complete and store.inputs_sha256 is not None:  # partial: still growing
                out[role]["inputs_sha256"] = store.inputs_sha256
    return out


def check_provenance(run_dir: Path, stores: Stores) -> None:
    """Record store provenance on the first call; refuse other stores afterwards (another
    producer or dims, or the same options run on other images: ``inputs_sha256``)."""
    path = run_dir / "stores.json"
    now = store_provenance(stores)
    if not path.is_file():
        write_json(path, now, indent=2, sort_keys=True)
        return
    saved = json.loads(path.read_text())
    for role, info in now.items():
        before = saved.get(role)
        if before is None:
            continue
        for part in ("producer", "dims"):
            for key in sorted(set(before[part]) | set(info[part])):
                if before[part].get(key) != info[part].get(key):
                    raise StoreMismatch(
                        f"{getattr(stores, role).path}: {part}.{key} is "
                        f"{info[part].get(key)!r}, but this run was trained with "
                        f"{before[part].get(key)!r} (see {path})")
        was, now_digest = before.get("inputs_sha256"), info.get("inputs_sha256")
        if was is not None and now_digest is not None and was != now_digest:
            raise StoreMismatch(
                f"{getattr(stores, role).path}: made from other inputs than this run was "
                f"trained with (inputs digest {now_digest[:12]}…, the run's {was[:12]}…: "
                f"images or texts changed and the store was re-extracted; see {path})")


def recorded_foundation_dims(run_dir: Path) -> dict | None:
    """The foundation_image store's dims a run was trained with (``stores.json``), or None: size
    D's foundation inputs and PKD's memory at evaluation without opening the foundation stores."""
    path = Path(run_dir) / "stores.json"
    if not path.is_file():
        return None
    dims = json.loads(path.read_text()).get("foundation_image", {}).get("dims", {})
    return {k: int(v) for k, v in dims.items()} if "embed_dim" in dims else None
