"""Uncompressed stores (``--codec none``) are read as mmap views of their shard files: the same
rows as through Zarr, checksums checked, a damaged chunk one line, pickling still works."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pkd.errors import PkdError
from pkd.stores import ArraySpec, FeatureStore, StoreSpec, StoreWriter
from pkd.stores.raw_chunks import RawChunks

SPEC = StoreSpec("regions", "image_id", (ArraySpec("region_features", (3, 5), "float16"),
                                         ArraySpec("num_regions", (), "int32")),
                 {"model": "test"}, {}, items_per_chunk=4, items_per_shard=8)
N = 21  # 3 shards, the last one partial (a partial last chunk too)


def arrays(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"region_features": rng.standard_normal((n, 3, 5)).astype(np.float16),
            "num_regions": np.arange(n, dtype=np.int32)}


def write(path, compression: str, skip: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    data = arrays()
    with StoreWriter(path, SPEC, np.arange(100, 100 + N), compression=compression) as w:
        for k in w.pending():
            if k in skip:
                continue
            r = w.shard_rows(k)
            w.write_shard(k, {name: a[r.start:r.stop] for name, a in data.items()})
    return data


def test_uncompressed_arrays_read_as_views_equal_to_zarr(tmp_path):
    data = write(tmp_path / "none.zarr", "none")
    write(tmp_path / "lz4.zarr", "lz4")
    raw = FeatureStore.open(tmp_path / "none.zarr")
    packed = FeatureStore.open(tmp_path / "lz4.zarr")
    assert RawChunks.of(raw.path / "region_features") is not None
    assert RawChunks.of(packed.path / "region_features") is None  # compressed: through Zarr
    rows = np.random.default_rng(1).permutation(N)
    got, ref = raw.read(rows), packed.read(rows)
    for name in data:
        np.testing.assert_array_equal(got[name], data[name][rows])
        np.testing.assert_array_equal(got[name], ref[name])
    # rows this small are gathered from the batch's chunks stacked: one extra copy of those
    assert raw.stats["decoded"] == 0 and raw.stats["copied"] <= 2 * raw.stats["delivered"]
    again = pickle.loads(pickle.dumps(raw))  # DataLoader workers reopen the maps
    np.testing.assert_array_equal(again.read(rows)["num_regions"], data["num_regions"][rows])


def test_large_rows_are_copied_once_cropped_and_can_fill_given_buffers(tmp_path):
    spec = StoreSpec("regions", "image_id", (ArraySpec("region_features", (4, 1024), "float16"),
                                             ArraySpec("num_regions", (), "int32")),
                     {"model": "test"}, {}, items_per_chunk=4, items_per_shard=8)
    rng = np.random.default_rng(2)
    data = {"region_features": rng.standard_normal((N, 4, 1024)).astype(np.float16),
            "num_regions": np.arange(N, dtype=np.int32)}
    with StoreWriter(tmp_path / "big.zarr", spec, np.arange(N), compression="none") as w:
        for k in w.pending():
            r = w.shard_rows(k)
            w.write_shard(k, {name: a[r.start:r.stop] for name, a in data.items()})
    with StoreWriter(tmp_path / "big-lz4.zarr", spec, np.arange(N), compression="lz4") as w:
        for k in w.pending():
            r = w.shard_rows(k)
            w.write_shard(k, {name: a[r.start:r.stop] for name, a in data.items()})
    packed = FeatureStore.open(tmp_path / "big-lz4.zarr")
    store = FeatureStore.open(tmp_path / "big.zarr")
    rows = np.array([20, 3, 3, 9, 0, 17, 8])  # every shard, a repeat, the partial last chunk
    got = store.read(rows, ["region_features"])["region_features"]
    np.testing.assert_array_equal(got, data["region_features"][rows])
    assert store.stats["copied"] == store.stats["delivered"] == got.nbytes
    bufs = {"region_features": np.zeros((10, 4, 1024), np.float16),
            "num_regions": np.zeros(10, np.int32)}
    into = store.read(rows, out=bufs)
    for name, a in data.items():
        assert np.shares_memory(into[name], bufs[name]) and len(into[name]) == len(rows)
        np.testing.assert_array_equal(into[name], a[rows])
    cut = {"region_features": (slice(0, 2), slice(3, 700))}  # a batch's first tokens
    for big in (store, packed):
        cropped = big.read(rows, ["region_features"], crop=cut)["region_features"]
        assert cropped.flags.c_contiguous
        np.testing.assert_array_equal(cropped, data["region_features"][rows][:, :2, 3:700])
    small = store.read(rows, ["region_features"], crop={"region_features": (0, slice(0, 1))})
    np.testing.assert_array_equal(small["region_features"],  # 2-byte rows: the small path
                                  data["region_features"][rows][:, 0, :1])
    with pytest.raises(PkdError, match="'num_regions': a buffer of shape \\(3,\\) int32"):
        store.read(rows, ["num_regions"], out={"num_regions": np.zeros(3, np.int32)})
    with pytest.raises(PkdError, match="expected contiguous"):
        store.read(rows, ["num_regions"], out={"num_regions": np.zeros(10, np.int64)})


def test_a_shard_never_written_reads_as_fill_values(tmp_path):
    write(tmp_path / "s.zarr", "none", skip=(1,))
    chunks = RawChunks.of(tmp_path / "s.zarr" / "region_features")
    assert not chunks.chunk(2).any() and chunks.chunk(2).shape == (4, 3, 5)
    assert chunks.chunk(5).shape == (1, 3, 5)  # rows 20..20 of the partial last chunk


def test_a_damaged_chunk_is_one_line_naming_it(tmp_path):
    write(tmp_path / "d.zarr", "none")
    shard = tmp_path / "d.zarr" / "region_features" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside chunk 2 (the first chunk of shard 1)
    shard.write_bytes(bytes(data))
    store = FeatureStore.open(tmp_path / "d.zarr")
    np.testing.assert_array_equal(store.read([0, 1])["num_regions"], [0, 1])  # shard 0 is fine
    with pytest.raises(PkdError) as err:
        store.read([9])
    line = str(err.value)
    assert "\n" not in line and "'region_features'" in line and "chunk 2" in line
    assert "checksum" in line


def test_an_unknown_codec_is_refused(tmp_path):
    with pytest.raises(PkdError, match="--codec .zip.: expected one of none, lz4"):
        StoreWriter(tmp_path / "x.zarr", SPEC, np.arange(3), compression="zip")
    assert not (tmp_path / "x.zarr").exists()


def test_extract_with_codec_none_gives_the_same_rows(synth_data, tiny_resnet_dir, tmp_path):
    from fixtures_extract import pkd

    args = ["extract", "regions", "--data", synth_data, "--splits", "val", "--detector",
            f"given:{synth_data / 'boxes.json'}", "--backbone", tiny_resnet_dir, "--threads", "1"]
    assert pkd(*args, "--out", tmp_path / "lz4.zarr") == 0
    assert pkd(*args, "--out", tmp_path / "none.zarr", "--codec", "none") == 0
    a, b = FeatureStore.open(tmp_path / "lz4.zarr"), FeatureStore.open(tmp_path / "none.zarr")
    assert RawChunks.of(b.path / "region_features") is not None
    rows = np.arange(a.n_items)[::-1]
    for name, value in a.read(rows).items():
        np.testing.assert_array_equal(b.read(rows)[name], value)


pytest_plugins = ["fixtures_extract"]  # synth_data, tiny_resnet_dir (session fixtures)


def test_shards_written_directly_are_read_by_zarr_itself(tmp_path):
    """The writer's own shard files (no Zarr encode) are valid Zarr v3: zarr reads the same
    numbers, including the fill-padded last chunk and a rewritten shard."""
    import zarr

    data = write(tmp_path / "w.zarr", "none")
    for name, a in data.items():
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "w.zarr" / name, mode="r")[:], a)
    fresh = arrays()
    fresh["num_regions"] = fresh["num_regions"] * 10
    with StoreWriter(tmp_path / "w.zarr", SPEC, np.arange(100, 100 + N)) as w:
        r = w.shard_rows(1)
        w.write_shard(1, {name: a[r.start:r.stop] for name, a in fresh.items()})
    got = zarr.open_array(tmp_path / "w.zarr" / "num_regions", mode="r")[:]
    np.testing.assert_array_equal(got[8:16], np.arange(8, 16) * 10)
    np.testing.assert_array_equal(got[:8], np.arange(8))
    store = FeatureStore.open(tmp_path / "w.zarr")
    np.testing.assert_array_equal(store.read(np.arange(N))["num_regions"], got)


def test_writeback_is_started_for_written_ranges_and_is_only_advice(tmp_path):
    import sys

    from pkd.stores.writeback import start_writeback

    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        queued = start_writeback(f.fileno(), 0, 8192)
        assert queued == sys.platform.startswith("linux")
        assert not start_writeback(f.fileno(), 0, 0)  # nothing to write back
    assert not start_writeback(-1, 0, 10)  # a bad descriptor: refused, never raised
    assert path.read_bytes() == b"x" * 8192
