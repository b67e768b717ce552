"""Shards as work units and their completion records.

Rows ``[k * items_per_shard, min((k + 1) * items_per_shard, n))`` form shard ``k``: one Zarr shard
file per array, one writer, one completion record written last and atomically::

    _pkd/done/shard-000007.json  {"shard": 7, "rows": [3584, 4096],
                                  "failures": [{"id": 42, "path": "img/42.jpg", "reason": "..."}],
                                  "inputs": {"sha256": "...", "stat": "..."}}

``inputs`` (extractions only; :mod:`pkd.data.inputs_digest`): the content and listing digests of
the images (or texts) the shard was made from.

A shard is done iff its record exists. File existence of chunks says nothing (a chunk equal to the
fill value is never written), so the record is the only source of truth for completeness.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from pkd.data.inputs_digest import combine
from pkd.errors import PkdError
from pkd.stores.schema import DONE_DIR, Failure, done_path


def n_shards(n_items: int, items_per_shard: int) -> int:
    return -(-n_items // items_per_shard)


def shard_range(k: int, n_items: int, items_per_shard: int) -> range:
    """Rows of shard ``k``."""
    if not 0 <= k < n_shards(n_items, items_per_shard):
        raise PkdError(f"shard {k} out of range (store has {n_shards(n_items, items_per_shard)})")
    return range(k * items_per_shard, min((k + 1) * items_per_shard, n_items))


def write_record(root: Path, k: int, rows: range, failures: Sequence[Failure],
                 inputs: dict[str, str] | None = None) -> None:
    """Write shard ``k``'s completion record atomically (temporary file, then ``os.replace``);
    ``inputs``: digests of what the shard was made from (:mod:`pkd.data.inputs_digest`)."""
    record = {
        "shard": k,
        "rows": [rows.start, rows.stop],
        "failures": [{"id": int(f.id), "path": str(f.path), "reason": str(f.reason)}
                     for f in failures],
    }
    if inputs:
        record["inputs"] = dict(inputs)
    final = done_path(root, k)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, final)


def read_records(root: Path) -> dict[int, dict]:
    """``{shard: record}`` of every completed shard of the store at ``root``."""
    folder = root / DONE_DIR
    if not folder.is_dir():
        return {}
    records = {}
    for entry in folder.glob("shard-*.json"):
        try:
            record = json.loads(entry.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PkdError(f"{entry}: unreadable completion record ({err})") from None
        records[int(record["shard"])] = record
    return records


def inputs_sha256(records: dict[int, dict]) -> str | None:
    """One content digest of every recorded shard's inputs (None when a record lacks one: a
    store written before inputs were recorded, or an import)."""
    parts = [(k, r.get("inputs", {}).get("sha256")) for k, r in records.items()]
    if not parts or any(d is None for _, d in parts):
        return None
    return combine(parts)


def failures_of(records: dict[int, dict]) -> list[Failure]:
    """All failures recorded in ``records``, in shard order."""
    return [Failure(int(f["id"]), f["path"], f["reason"])
            for k in sorted(records) for f in records[k]["failures"]]
