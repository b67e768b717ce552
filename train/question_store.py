"""Fill a store keyed by ``question_id`` from a model run once over batches of a split: the
shared loop of the DistillVLM teacher cache (:mod:`pkd.train.teacher_cache`) and PKD's
predicted-feature cache (:mod:`pkd.train.predicted_cache`).

Work goes shard by shard through :class:`~pkd.stores.writer.StoreWriter` (resumable: finished
shards are skipped; ``part=(i, n)`` takes every n-th shard for parallel writers); rows with
non-finite values are recorded as failed (``ok = 0``) and counted once on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pkd.errors import PkdError
from pkd.progress import track
from pkd.stores.schema import StoreSpec
from pkd.stores.writer import StoreWriter


def batches_by_id(batches) -> Callable[[np.ndarray], dict]:
    """``batch_for_ids`` over a :class:`pkd.train.data.VQABatches` (``batches[positions]``)."""
    position = {int(q): i for i, q in enumerate(batches.split.question_ids)}

    def batch_for_ids(ids: np.ndarray) -> dict:
        missing = [int(q) for q in ids if int(q) not in position]
        if missing:
            raise PkdError(f"question store: question {missing[0]} is not in split "
                           f"{batches.split.name!r} ({len(missing)} missing)")
        return batches[np.array([position[int(q)] for q in ids], dtype=np.int64)]

    return batch_for_ids


def checked_batch(batch_for_ids: Callable[[np.ndarray], dict], ids: np.ndarray) -> dict:
    """``batch_for_ids(ids)``, refused when it holds other questions than ``ids``."""
    batch = batch_for_ids(ids)
    got = np.asarray(batch["question_id"])
    if got.shape != ids.shape or (got != ids).any():
        raise ValueError("batch_for_ids returned other questions than requested")
    return batch


def fill_question_store(path: str | Path, spec: StoreSpec, question_ids: Sequence[int],
                        rows_of: Callable[[np.ndarray], dict[str, np.ndarray]], *,
                        batch_size: int, what: str, overwrite: bool = False,
                        part: tuple[int, int] | None = None, compression: str = "none") -> Path:
    """Write ``rows_of(ids)`` (store arrays of those questions, ``batch_size`` at a time) for
    every pending shard of the store at ``path``; ``what`` names the rows in the progress line
    and in the warning about failed rows."""
    failed = 0
    with StoreWriter(path, spec, question_ids, overwrite=overwrite,
                     compression=compression) as writer:
        pending = writer.pending(part)
        for k in track(pending, total=len(pending), description=what):
            ids = writer.shard_ids(k)
            rows = [rows_of(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]
            failed += len(writer.write_shard(k, {name: np.concatenate([r[name] for r in rows])
                                                for name in spec.names}))
    if failed:
        print(f"warning: {path}: {failed} questions with non-finite {what} recorded as failed "
              "(pkd stores info)", file=sys.stderr)
    return Path(path)
