"""Integrity of stores: a damaged chunk is an error naming it, stores written before chunk
checksums stay readable (and say so), non-finite features become failed items (writer, HDF5
import), and the import's / reader's messages point at the fix."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
from zarr.codecs import BloscCodec, Crc32cCodec

from pkd.cli import main
from pkd.errors import PkdError
from pkd.stores import ArraySpec, FeatureStore, StoreSpec, StoreWriter, import_h5, store_info
from pkd.stores import writer as writer_module

IDS = np.arange(100, 100 + 40)  # 40 rows: chunks of 4, shards of 16 -> shards 0, 1 and 2 (partial)
SPEC = StoreSpec(
    "regions", "image_id",
    (ArraySpec("region_features", (6, 32), "float16"), ArraySpec("boxes", (6, 4), "float32"),
     ArraySpec("num_regions", (), "int32")),
    producer={"model": "test"}, dims={"feature_dim": 32, "max_regions": 6},
    items_per_chunk=4, items_per_shard=16,
)


def rows(ids: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(ids.tolist())  # random: chunks compress to little
    return {"region_features": rng.standard_normal((len(ids), 6, 32)).astype(np.float16),
            "boxes": rng.uniform(0, 100, (len(ids), 6, 4)).astype(np.float32),
            "num_regions": (ids % 6).astype(np.int32)}


def write_store(path, spec: StoreSpec = SPEC) -> dict[str, np.ndarray]:
    """The store at ``path`` with every shard written; the arrays it holds."""
    with StoreWriter(path, spec, IDS) as writer:
        for k in writer.pending():
            writer.write_shard(k, rows(writer.shard_ids(k)))
        shards = [rows(writer.shard_ids(k)) for k in range(writer.n_shards)]
    return {name: np.concatenate([s[name] for s in shards]) for name in shards[0]}


def zero_bytes(shard_file, offset: int = 40, count: int = 200) -> None:
    """Zero ``count`` bytes at ``offset`` of a shard file: inside its first compressed chunk."""
    data = bytearray(shard_file.read_bytes())
    assert len(data) > offset + count
    data[offset:offset + count] = bytes(count)
    shard_file.write_bytes(bytes(data))


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def old_codec(monkeypatch):
    """Stores created inside this fixture have no chunk checksums, like those of earlier pkd."""
    monkeypatch.setattr(writer_module, "codec",
                        lambda name="lz4": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")])


def test_zeroed_bytes_in_a_shard_are_an_error_naming_the_chunk(tmp_path):
    path = tmp_path / "r.zarr"
    want = write_store(path)
    zero_bytes(path / "region_features" / "c" / "1" / "0" / "0")  # shard 1 = rows [16, 32)
    store = FeatureStore.open(path)
    with pytest.raises(PkdError) as err:
        store.read(np.arange(40))
    line = one_line(err)
    assert line.startswith(f"{path}: array 'region_features', chunk 4, rows [16, 20): damaged data "
                           "(checksum mismatch)")
    assert "rewrite shard 1, delete _pkd/done/shard-000001.json" in line
    for read in (lambda: store.read_range(0, 40), lambda: store.read([17], ["region_features"]),
                 lambda: FeatureStore.open(path, cache_bytes=1 << 20).read([18, 3])):
        with pytest.raises(PkdError, match=r"array 'region_features', chunk 4, rows \[16, 20\)"):
            read()
    # the other chunks and arrays read as written
    np.testing.assert_array_equal(store.read(np.r_[0:16, 20:40])["region_features"],
                                  want["region_features"][np.r_[0:16, 20:40]])
    np.testing.assert_array_equal(store.read_range(16, 32, ["boxes"])["boxes"],
                                  want["boxes"][16:32])


def test_a_damaged_chunk_is_rewritten_by_running_its_shard_again(tmp_path):
    path = tmp_path / "r.zarr"
    want = write_store(path)
    zero_bytes(path / "region_features" / "c" / "2" / "0" / "0")  # the partial last shard
    with pytest.raises(PkdError, match="rows \\[32, 36\\)"):
        FeatureStore.open(path).read_range(32, 40)
    (path / "_pkd" / "done" / "shard-000002.json").unlink()  # what the message says to do
    write_store(path)
    got = FeatureStore.open(path).read_range(0, 40)
    assert all((got[n] == want[n]).all() for n in want)


def test_damaged_ok_column_fails_at_open_and_in_the_cli(tmp_path, capsys):
    path = tmp_path / "r.zarr"
    write_store(path)
    ok_shard = path / "ok" / "c" / "0"
    data = bytearray(ok_shard.read_bytes())
    data[0] ^= 0xFF
    ok_shard.write_bytes(bytes(data))
    with pytest.raises(PkdError, match=r"array 'ok', chunk 0, rows \[0, 4\): damaged data"):
        FeatureStore.open(path)
    capsys.readouterr()
    assert main(["stores", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'ok'" in err[0]


def test_stores_without_checksums_stay_readable_and_info_says_so(tmp_path, old_codec, capsys):
    path = tmp_path / "old.zarr"
    want = write_store(path)
    store = FeatureStore.open(path)
    assert not any(store.checksums.values())
    got = store.read(np.arange(40))
    assert all((got[n] == want[n]).all() for n in want)
    info = store_info(path)
    assert info["chunk_checksums"] is False
    assert info["arrays_without_checksums"] == ["region_features", "boxes", "num_regions", "ok",
                                                "ids"]
    assert main(["stores", "info", str(path)]) == 0
    assert "no chunk checksums (written before pkd checksummed chunks)" in capsys.readouterr().out
    # an old store resumes as it is (same spec: codecs are the arrays' own Zarr metadata)
    (path / "_pkd" / "done" / "shard-000001.json").unlink()
    write_store(path)
    assert FeatureStore.open(path).complete


def test_stores_of_the_previous_codec_read_check_and_resume(tmp_path, monkeypatch):
    """Blosc zstd 3 + crc32c (pkd's codec before issue 32 chose uncompressed chunks): zarr takes
    the codecs from each array's zarr.json, so such stores read, still catch damage, and
    resume (through Zarr: pkd's direct reads and writes only take uncompressed arrays)."""
    path = tmp_path / "zstd.zarr"
    with monkeypatch.context() as m:
        m.setattr(writer_module, "codec",
                  lambda name="lz4": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                                      Crc32cCodec()])
        want = write_store(path)
    inner = json.loads((path / "region_features" / "zarr.json").read_text())["codecs"][0]
    assert inner["configuration"]["codecs"][1]["configuration"]["cname"] == "zstd"
    assert [type(c).__name__ for c in writer_module.codec()] == ["Crc32cCodec"]  # current: none
    store = FeatureStore.open(path)
    assert all(store.checksums.values())
    got = store.read(np.arange(40))
    assert all((got[n] == want[n]).all() for n in want)
    (path / "_pkd" / "done" / "shard-000001.json").unlink()  # resumed: the shard is rewritten
    write_store(path)
    store = FeatureStore.open(path)
    assert store.complete
    got = store.read_range(0, 40)
    assert all((got[n] == want[n]).all() for n in want)
    zero_bytes(path / "region_features" / "c" / "1" / "0" / "0")
    with pytest.raises(PkdError, match=r"array 'region_features', chunk 4, rows \[16, 20\)"):
        FeatureStore.open(path).read_range(16, 20)


def test_new_stores_have_checksums_on_every_array(tmp_path, capsys):
    path = tmp_path / "new.zarr"
    write_store(path)
    info = store_info(path)
    assert info["chunk_checksums"] is True and info["arrays_without_checksums"] == []
    assert info["schema_version"] == 1  # unchanged: the codecs live in each array's zarr.json
    assert main(["stores", "info", str(path)]) == 0
    assert "chunk checksums: crc32c on every chunk" in capsys.readouterr().out


def test_open_a_missing_path_says_no_such_path(tmp_path):
    with pytest.raises(PkdError) as err:
        FeatureStore.open(tmp_path / "nowhere.zarr")
    assert str(err.value) == f"{tmp_path / 'nowhere.zarr'}: no such path"
    with pytest.raises(PkdError, match="not a pkd store"):  # a folder that is not a store
        FeatureStore.open(tmp_path)


# --- non-finite features ---------------------------------------------------------------------

def test_writer_records_non_finite_rows_as_failures(tmp_path):
    path = tmp_path / "r.zarr"
    with StoreWriter(path, SPEC, IDS) as writer:
        arrays = rows(writer.shard_ids(0))
        before = {n: a.copy() for n, a in arrays.items()}
        with np.errstate(over="ignore"):
            arrays["region_features"][3, 2, 5] = np.float32(1e5)  # overflows float16: inf
        arrays["region_features"][5, 0, 0] = np.nan
        arrays["boxes"][7, 1, 1] = np.inf
        arrays["boxes"][3, 0, 0] = np.nan  # the same row twice: one failure
        from pkd.stores import Failure

        given = Failure(int(IDS[9]), "x.jpg", "not an image")
        failures = writer.write_shard(0, arrays, [given])
        assert arrays["region_features"][3, 2, 5] == np.inf  # the caller's arrays are left alone
    reasons = {f.id: f.reason for f in failures}
    assert list(reasons) == [IDS[9], IDS[3], IDS[5], IDS[7]]
    assert reasons[IDS[3]] == ("non-finite features: region_features holds inf as float16 "
                               "(overflows float16: a value beyond ±65504)")
    assert reasons[IDS[5]] == "non-finite features: region_features holds nan as float16"
    assert reasons[IDS[7]] == "non-finite features: boxes holds inf as float32"
    store = FeatureStore.open(path)
    assert {f.id: f.reason for f in store.failures} == reasons  # in the done record too
    got = store.read_range(0, 16)
    bad = [3, 5, 7]
    assert not store.ok[bad].any() and store.ok[[0, 1, 2, 4, 6, 8]].all()
    assert all(not got[n][bad].any() for n in got)  # zero rows, as for any failed item
    good = [0, 1, 2, 4, 6, 8]
    assert all((got[n][good] == before[n][good]).all() for n in got)


def write_h5(path, feats: np.ndarray) -> None:
    n, k, _ = feats.shape
    boxes = np.tile(np.array([0, 0, 10, 10], np.float32), (n, k, 1))
    with h5py.File(path, "w") as f:
        f["image_features"] = feats
        f["image_bb"] = boxes
        f["image_w"], f["image_h"] = np.full(n, 20), np.full(n, 20)
        f["image_ids"] = np.arange(n) + 1


def test_import_records_overflow_and_nan_as_failed_images(tmp_path, capsys):
    feats = np.ones((6, 2, 4), np.float32)
    feats[1, 0, 2] = 1e5  # overflows float16
    feats[4, 1, 3] = np.nan
    feats[5, 0, 0] = -65504  # float16's largest magnitude: kept
    write_h5(tmp_path / "f.h5", feats)
    out = import_h5(tmp_path / "f.h5", tmp_path / "f.zarr", items_per_chunk=2, items_per_shard=4)
    store = FeatureStore.open(out)
    reasons = {f.id: f.reason for f in store.failures}
    assert reasons == {2: "overflows float16: image_features up to 100000, float16 holds ±65504",
                       5: "non-finite features: image_features holds nan in the HDF5 file"}
    assert {f.path for f in store.failures} == {str(tmp_path / "f.h5")}
    assert store.ok.tolist() == [True, False, True, True, False, True]
    got = store.read_range(0, 6)
    assert np.isfinite(got["region_features"]).all() and not got["region_features"][[1, 4]].any()
    assert got["region_features"][5, 0, 0] == -65504
    # the CLI: a line per failed image; --strict makes them an exit status
    capsys.readouterr()
    assert main(["stores", "import-h5", str(tmp_path / "f.h5"), str(tmp_path / "g.zarr")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {tmp_path / 'g.zarr'}: 2 failed"
    assert "failed image 2: overflows float16" in captured.err
    assert main(["stores", "import-h5", str(tmp_path / "f.h5"), str(tmp_path / "g.zarr"),
                 "--strict"]) == 1  # resumed: the recorded failures still count


def test_numpy_key_pickle_points_to_ids_json(tmp_path, capsys):
    write_h5(tmp_path / "f.h5", np.ones((3, 2, 4), np.float32))
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f["image_ids"]
    pkl = tmp_path / "train36_imgid2idx.pkl"
    pkl.write_bytes(pickle.dumps({np.int64(i + 1): np.int64(i) for i in range(3)}))
    capsys.readouterr()
    assert main(["stores", "import-h5", str(tmp_path / "f.h5"), str(tmp_path / "x.zarr"),
                 "--imgid2idx", str(pkl)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {pkl}: holds numpy objects")
    assert "pass it with --ids-json" in err[0]
    # what the message says works
    (tmp_path / "ids.json").write_text(json.dumps({"1": 0, "2": 1, "3": 2}))
    assert main(["stores", "import-h5", str(tmp_path / "f.h5"), str(tmp_path / "x.zarr"),
                 "--ids-json", str(tmp_path / "ids.json")]) == 0


def test_import_help_keeps_the_list_brackets(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    monkeypatch.setenv("TERMINAL_WIDTH", "200")
    with pytest.raises(SystemExit):
        from pkd.cli import app

        app(["stores", "import-h5", "--help"], prog_name="pkd")
    text = capsys.readouterr().out
    assert "JSON {image_id: row} or [image_id, ...]." in text
    assert "\\[" not in text


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_finite_rows_agrees_with_isfinite_on_every_special_value(dtype):
    from pkd.stores.writer import finite_rows

    info = np.finfo(dtype)
    specials = [np.inf, -np.inf, np.nan, -np.nan, info.max, -info.max, info.tiny, -0.0,
                info.smallest_subnormal, -info.smallest_subnormal]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 3, 7)).astype(dtype)
    for i, v in enumerate(specials):  # one special per row, somewhere in it
        a[i, i % 3, i % 7] = v
    want = np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    np.testing.assert_array_equal(finite_rows(a), want)
    assert finite_rows(a[:, :, :0]).all() and finite_rows(a[:0]).shape == (0,)
