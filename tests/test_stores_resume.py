"""Stores: resume after a crash and concurrent writers on disjoint shards give the same bytes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from pkd.stores import ArraySpec, FeatureStore, StoreSpec, StoreWriter

IDS = np.arange(1000, 1000 + 2 * 45, 2)  # 45 ids -> shards of 8: 5 full + 1 partial
SPEC = StoreSpec(
    "foundation_text", "question_id",
    (ArraySpec("text_tokens", (6, 4), "float16"), ArraySpec("text_embeds", (4,), "float32"),
     ArraySpec("num_tokens", (), "int32")),
    producer={"model": "tiny-clip", "config_hash": "0123456789ab"}, dims={"text_dim": 4},
    items_per_chunk=4, items_per_shard=8,
)


def shard_arrays(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic rows from the ids alone (the same in every process)."""
    rng = np.random.default_rng(ids.tolist())
    return {
        "text_tokens": rng.standard_normal((len(ids), 6, 4)).astype(np.float16),
        "text_embeds": rng.standard_normal((len(ids), 4)).astype(np.float32),
        "num_tokens": (ids % 7).astype(np.int32),
    }


def write(path: str, part: tuple[int, int] | None = None, crash_after: int | None = None) -> None:
    """Write pending shards of ``part``; with ``crash_after=k``: after k shards, write the first
    array of the next shard (no done record) and SIGKILL this process."""
    import os

    with StoreWriter(path, SPEC, IDS) as writer:
        for n, k in enumerate(writer.pending(part)):
            arrays = shard_arrays(writer.shard_ids(k))
            if n == crash_after:
                rows = writer.shard_rows(k)
                writer._arrays["text_tokens"][rows.start:rows.stop] = arrays["text_tokens"]
                writer._arrays["ok"][rows.start:rows.stop] = 1
                os.kill(os.getpid(), signal.SIGKILL)
            writer.write_shard(k, arrays)


def child(path: Path, *args) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"import test_stores_resume as t; t.write({str(path)!r}, *{args!r})"
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)


def files(root: Path) -> dict[str, bytes]:
    """Every file of a store except the root zarr.json (it holds the creation time)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p != root / "zarr.json"}


def assert_same_store(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    attrs = [json.loads((p / "zarr.json").read_text())["attributes"]["pkd_store"] for p in (a, b)]
    for x in attrs:
        x.pop("created")
    assert attrs[0] == attrs[1]


def test_resume_after_sigkill_equals_clean_run(tmp_path):
    write(str(tmp_path / "clean.zarr"))
    proc = child(tmp_path / "crash.zarr", None, 2)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read().decode()
    with StoreWriter(tmp_path / "crash.zarr", SPEC, IDS) as writer:
        assert writer.pending() == [2, 3, 4, 5]  # shard 2 has arrays but no done record
    crashed = FeatureStore.open(tmp_path / "crash.zarr")
    assert crashed.pending == [2, 3, 4, 5] and not crashed.complete
    assert crashed.ok.sum() == 16  # the half-written shard 2 does not count as ok
    write(str(tmp_path / "crash.zarr"))
    assert FeatureStore.open(tmp_path / "crash.zarr").complete
    assert_same_store(tmp_path / "clean.zarr", tmp_path / "crash.zarr")


def test_pending_lists_exactly_the_missing_shards_and_parts(tmp_path):
    path = tmp_path / "p.zarr"
    with StoreWriter(path, SPEC, IDS) as writer:
        for k in (0, 3, 5):
            writer.write_shard(k, shard_arrays(writer.shard_ids(k)))
        assert writer.pending() == [1, 2, 4]
        assert writer.pending((0, 2)) == [2, 4] and writer.pending((1, 2)) == [1]
        assert writer.shard_rows(5) == range(40, 45)


def test_two_processes_on_disjoint_parts_equal_one_process(tmp_path):
    write(str(tmp_path / "single.zarr"))
    procs = [child(tmp_path / "double.zarr", (i, 2)) for i in range(2)]  # both race to create it
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    store = FeatureStore.open(tmp_path / "double.zarr")
    assert store.complete and store.ok.all()
    assert not list(tmp_path.glob(".*.tmp"))  # the losing creator cleaned up its temp folder
    assert_same_store(tmp_path / "single.zarr", tmp_path / "double.zarr")
