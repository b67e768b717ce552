"""Stores: write -> read round trips, id-keyed reads, provenance checks, write validation."""

from __future__ import annotations

import numpy as np
import pytest

from pkd.errors import PkdError, StoreMismatch
from pkd.stores import ArraySpec, Failure, FeatureStore, StoreSpec, StoreWriter, config_hash
from pkd.stores.reader import chunk_runs

DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"]


def make_spec(**over) -> StoreSpec:
    arrays = tuple(ArraySpec(f"a_{d}", (3, 2), d) for d in DTYPES) + (
        ArraySpec("region_features", (5, 4), "float16"),
        ArraySpec("num_regions", (), "int32"),
    )
    fields = dict(kind="regions", key="image_id", arrays=arrays,
                  producer={"model": "tiny-detector", "config_hash": "abc123"},
                  dims={"feature_dim": 4, "max_regions": 5}, items_per_chunk=4, items_per_shard=8)
    fields.update(over)
    return StoreSpec(**fields)


def item_arrays(spec: StoreSpec, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic rows from the ids alone; padded arrays are zero beyond num_regions."""
    out = {}
    for a in spec.arrays:
        rows = [np.random.default_rng(int(i) * 7 + len(a.name)).standard_normal(a.item_shape) * 50
                for i in ids]
        out[a.name] = np.asarray(rows).reshape(len(ids), *a.item_shape).astype(a.dtype)
    counts = (ids % 6).astype(np.int32)  # 0..5 valid regions
    out["num_regions"] = counts
    out["region_features"][np.arange(5)[None, :] >= counts[:, None]] = 0
    return out


def write_all(path, spec, ids, failures=(), compression: str = "none") -> None:
    with StoreWriter(path, spec, ids, compression=compression) as writer:
        for k in writer.pending():
            shard_ids = writer.shard_ids(k)
            fails = [f for f in failures if f.id in shard_ids]
            writer.write_shard(k, item_arrays(spec, shard_ids), fails)


@pytest.fixture
def store(tmp_path):
    ids = np.arange(3, 3 + 3 * 37, 3)[::-1]  # 37 ids, unsorted on purpose; last shard partial
    spec = make_spec()
    write_all(tmp_path / "s.zarr", spec, ids, [Failure(9, "img/9.jpg", "unreadable")])
    return FeatureStore.open(tmp_path / "s.zarr"), spec, np.sort(ids)


def test_round_trip_every_dtype_and_padding(store):
    fs, spec, ids = store
    assert fs.complete and fs.pending == [] and fs.n_items == 37
    np.testing.assert_array_equal(fs.ids, ids)
    want = item_arrays(spec, ids)
    got = fs.read(np.arange(37))
    for a in spec.arrays:
        assert got[a.name].dtype == np.dtype(a.dtype) and got[a.name].shape == (37, *a.item_shape)
        np.testing.assert_array_equal(got[a.name], want[a.name], err_msg=a.name)
    row = fs.rows_of([5 * 3])[0]  # id 15 -> 15 % 6 = 3 valid regions
    assert got["num_regions"][row] == 3
    assert (got["region_features"][row, 3:] == 0).all()
    assert (got["region_features"][row, :3] != 0).any()
    whole = fs.read_range(0, 37)
    for name in spec.names:
        np.testing.assert_array_equal(whole[name], want[name])


def test_id_keyed_reads_in_random_order_with_duplicates(store):
    fs, spec, ids = store
    rng = np.random.default_rng(0)
    wanted = rng.choice(ids, size=60, replace=True)  # random order, many duplicates
    rows = fs.rows_of(wanted)
    np.testing.assert_array_equal(fs.ids[rows], wanted)
    got = fs.read(rows, ["a_float16", "num_regions"])
    ref = item_arrays(spec, wanted)
    assert set(got) == {"a_float16", "num_regions"}
    np.testing.assert_array_equal(got["a_float16"], ref["a_float16"])
    np.testing.assert_array_equal(got["num_regions"], ref["num_regions"])
    empty = fs.read([], ["region_features"])["region_features"]
    assert empty.shape == (0, 5, 4) and empty.dtype == np.float16


def test_failures_ok_and_missing_ids(store):
    fs, _, ids = store
    assert fs.failures == [Failure(9, "img/9.jpg", "unreadable")]
    assert fs.ok.dtype == bool and fs.ok.sum() == 36 and not fs.ok[fs.rows_of([9])[0]]
    with pytest.raises(PkdError, match=r"s\.zarr: no image_id 4 in this store \(2 of 3"):
        fs.rows_of([3, 4, 5])
    with pytest.raises(PkdError, match="row 37 out of range"):
        fs.read([0, 37])


def test_chunk_runs_merge_consecutive_chunks():
    # chunks of 4: rows 1,2 -> chunk 0; 5 -> 1; 13 -> 3; 14 -> 3; 17 -> 4 (array of 18 rows)
    assert chunk_runs(np.array([1, 2, 5, 13, 14, 17]), 4, 18) == [(0, 8), (12, 18)]
    assert chunk_runs(np.array([], dtype=np.int64), 4, 18) == []


def test_reopen_same_spec_resumes_nothing(store, tmp_path):
    _, spec, ids = store
    with StoreWriter(tmp_path / "s.zarr", spec, ids[::-1]) as writer:
        assert writer.pending() == [] and writer.n_shards == 5


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"producer": {"model": "other-detector", "config_hash": "abc123"}}, "producer.model"),
        ({"producer": {"model": "tiny-detector", "config_hash": "fff000"}}, "producer.config_hash"),
        ({"dims": {"feature_dim": 4, "max_regions": 7}}, "dims.max_regions"),
        ({"items_per_shard": 16}, "items_per_shard"),
    ],
)
def test_writer_refuses_other_spec(store, tmp_path, change, field):
    _, spec, ids = store
    with pytest.raises(StoreMismatch, match=rf"s\.zarr: existing store differs: {field}"):
        StoreWriter(tmp_path / "s.zarr", make_spec(**change), ids)


def test_writer_refuses_other_ids_and_overwrite_rebuilds(store, tmp_path):
    _, spec, ids = store
    with pytest.raises(StoreMismatch, match="ids has 37 items, expected 36"):
        StoreWriter(tmp_path / "s.zarr", spec, ids[1:])
    other = ids.copy()
    other[4] += 1
    with pytest.raises(StoreMismatch, match=rf"ids\[4\] is {ids[4]}, expected {other[4]}"):
        StoreWriter(tmp_path / "s.zarr", spec, other)
    with StoreWriter(tmp_path / "s.zarr", spec, other, overwrite=True) as writer:
        assert writer.pending() == list(range(5))


def test_overwrite_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(PkdError, match="not a pkd store"):
        StoreWriter(tmp_path / "photos", make_spec(), [1, 2], overwrite=True)
    assert (tmp_path / "photos" / "cat.jpg").exists()


def test_open_checks_kind_and_expected_provenance(store, tmp_path):
    path = tmp_path / "s.zarr"
    FeatureStore.open(path, kind="regions", expect={"producer": {"model": "tiny-detector"},
                                                    "dims": {"max_regions": 5}})
    with pytest.raises(StoreMismatch, match="a 'regions' store, expected a 'teacher' store"):
        FeatureStore.open(path, kind="teacher")
    with pytest.raises(StoreMismatch, match=r"producer\.model is 'tiny-detector', expected 'big' "
                                            r"\(store built by tiny-detector \(config abc123\)\)"):
        FeatureStore.open(path, expect={"producer": {"model": "big"}})
    with pytest.raises(StoreMismatch, match=r"dims\.feature_dim is 4, expected 2048"):
        FeatureStore.open(path, expect={"dims": {"feature_dim": 2048}})
    with pytest.raises(PkdError, match="not a pkd store"):
        FeatureStore.open(tmp_path)


def test_write_shard_validates_names_shapes_dtypes(tmp_path):
    spec = make_spec()
    with StoreWriter(tmp_path / "v.zarr", spec, np.arange(10)) as writer:
        good = item_arrays(spec, writer.shard_ids(1))  # shard 1 = rows 8, 9
        with pytest.raises(PkdError,
                           match=r"shard 1: missing arrays \['num_regions'\], unexpected \[\]"):
            writer.write_shard(1, {k: v for k, v in good.items() if k != "num_regions"})
        bad = dict(good, region_features=good["region_features"].astype(np.float32))
        with pytest.raises(PkdError,
                           match=r"'region_features' is float32 \(2, 5, 4\), expected float16"):
            writer.write_shard(1, bad)
        with pytest.raises(PkdError, match="failure for id 3, not in this shard"):
            writer.write_shard(1, good, [Failure(3, "", "x")])
        writer.write_shard(1, good, ok=np.array([True, False]))
        assert writer.pending() == [0]
    fs = FeatureStore.open(tmp_path / "v.zarr")
    # shard 0 never written: not ok, even though ok reads as the fill value there
    np.testing.assert_array_equal(fs.ok, [False] * 8 + [True, False])
    assert not fs.complete and fs.pending == [0]


def test_spec_validation_and_config_hash():
    with pytest.raises(PkdError, match="keyed by 'question_id', not 'image_id'"):
        make_spec(kind="teacher")
    with pytest.raises(PkdError, match="multiple of items_per_chunk"):
        make_spec(items_per_shard=10)
    with pytest.raises(PkdError, match="duplicate id 2"):
        StoreWriter("unused.zarr", make_spec(), [1, 2, 2])
    # sha256 of the canonical JSON '{"a":1,"b":[1,2]}', first 12 hex digits
    assert config_hash({"b": (1, 2), "a": 1}) == "8baa73198470"
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})


def test_create_race_loser_keeps_the_winners_store(store, tmp_path):
    from pkd.stores.writer import create_store

    _, spec, ids = store
    before = (tmp_path / "s.zarr" / "zarr.json").read_bytes()
    create_store(tmp_path / "s.zarr", spec, ids)  # as if another process had renamed first
    assert (tmp_path / "s.zarr" / "zarr.json").read_bytes() == before
    assert FeatureStore.open(tmp_path / "s.zarr").complete
    assert not list(tmp_path.glob(".*.tmp"))
