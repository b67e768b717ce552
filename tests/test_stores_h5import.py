"""Stores: import of bottom-up-attention HDF5 files (both layouts), safe pickles, the CLI."""

from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np
import pytest

from pkd.cli import main
from pkd.errors import PkdError
from pkd.stores import FeatureStore, import_h5
from pkd.stores.h5import import load_imgid2idx, read_rows

IMAGE_IDS = [42, 7, 1000, 3, 58]  # HDF5 row order, not sorted
SIZES = [(640, 480), (500, 375), (320, 240), (800, 600), (100, 50)]  # (W, H) per row
COUNTS = [3, 1, 0, 2, 3]


def boxes_and_geometry(row: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    w, h = SIZES[row]
    x1 = np.arange(n, dtype=np.float32) * 5 + row
    boxes = np.stack([x1, x1 + 1, x1 + 10 * (np.arange(n) + 1), x1 + 20], 1).astype(np.float32)
    geom = np.concatenate([boxes[:, :2] / (w, h), boxes[:, 2:] / (w, h),
                           (boxes[:, 2:] - boxes[:, :2]) / (w, h)], 1).astype(np.float32)
    return boxes, geom


def features(row: int, n: int) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 100 * row) / 8  # exact in float16


def write_fixed(path, with_ids: bool, sizes_not_geometry: bool = False) -> None:
    """fixed layout, K = 3 boxes per image (36 in the real files), num_boxes given."""
    with h5py.File(path, "w") as f:
        bb, sp = zip(*[boxes_and_geometry(r, 3) for r in range(5)], strict=True)
        f["image_features"] = np.stack([features(r, 3) for r in range(5)])  # (5, 3, 4)
        f["image_bb"] = np.stack(bb)
        if sizes_not_geometry:  # geometry must then be computed from boxes and sizes
            f["image_w"], f["image_h"] = np.array(SIZES)[:, 0], np.array(SIZES)[:, 1]
        else:
            f["spatial_features"] = np.stack(sp)
        f["num_boxes"] = np.array(COUNTS)
        if with_ids:
            f["image_ids"] = np.array(IMAGE_IDS)


def write_flat(path) -> None:
    """flat layout: boxes of all images concatenated, pos_boxes = [start, stop) per image."""
    bb, sp = zip(*[boxes_and_geometry(r, c) for r, c in enumerate(COUNTS)], strict=True)
    stops = np.cumsum(COUNTS)
    with h5py.File(path, "w") as f:
        f["image_features"] = np.concatenate([features(r, c) for r, c in enumerate(COUNTS)])
        f["image_bb"], f["spatial_features"] = np.concatenate(bb), np.concatenate(sp)
        f["pos_boxes"] = np.stack([stops - COUNTS, stops], 1)
        f["image_w"], f["image_h"] = np.array(SIZES)[:, 0], np.array(SIZES)[:, 1]


def check_store(path, counts: list[int], sizes_given: bool) -> None:
    store = FeatureStore.open(path, kind="regions",
                              expect={"dims": {"feature_dim": 4, "max_regions": 3}})
    assert store.complete and store.ok.all()
    np.testing.assert_array_equal(store.ids, sorted(IMAGE_IDS))
    got = store.read(store.rows_of(IMAGE_IDS))
    for row, n in enumerate(counts):
        boxes, geom = boxes_and_geometry(row, n)
        assert got["num_regions"][row] == n
        # without image_w/h the size comes from the boxes: unknown (0, 0) for an image with none
        assert tuple(got["image_size"][row]) == (SIZES[row] if sizes_given or n else (0, 0))
        np.testing.assert_array_equal(got["boxes"][row, :n], boxes)
        np.testing.assert_allclose(got["region_geometry"][row, :n], geom, rtol=1e-6)
        np.testing.assert_array_equal(got["region_features"][row, :n], features(row, n))
        assert not got["region_features"][row, n:].any() and not got["boxes"][row, n:].any()
    assert got["region_features"].dtype == np.float16


def test_fixed_layout_with_image_ids_dataset(tmp_path):
    write_fixed(tmp_path / "f.h5", with_ids=True)
    out = import_h5(tmp_path / "f.h5", tmp_path / "f.zarr", items_per_chunk=2, items_per_shard=2)
    check_store(out, COUNTS, sizes_given=False)
    assert FeatureStore.open(out).spec.producer["layout"] == "fixed"


def test_fixed_layout_geometry_from_sizes(tmp_path):
    write_fixed(tmp_path / "f.h5", with_ids=True, sizes_not_geometry=True)
    check_store(import_h5(tmp_path / "f.h5", tmp_path / "f.zarr"), COUNTS, sizes_given=True)


def test_flat_layout_with_ids_json(tmp_path):
    write_flat(tmp_path / "b.h5")
    (tmp_path / "ids.json").write_text(json.dumps({str(i): r for r, i in enumerate(IMAGE_IDS)}))
    out = import_h5(tmp_path / "b.h5", tmp_path / "b.zarr", ids=tmp_path / "ids.json",
                    items_per_chunk=2, items_per_shard=4)
    check_store(out, COUNTS, sizes_given=True)
    store = FeatureStore.open(out)
    assert store.spec.producer["layout"] == "flat"
    assert store.spec.dims == {"feature_dim": 4, "max_regions": 3}


def test_fixed_layout_with_imgid2idx_pickle(tmp_path):
    write_fixed(tmp_path / "f.h5", with_ids=False)
    with open(tmp_path / "train36_imgid2idx.pkl", "wb") as f:
        pickle.dump({i: r for r, i in enumerate(IMAGE_IDS)}, f, protocol=2)  # as the py2 tools did
    out = import_h5(tmp_path / "f.h5", tmp_path / "f.zarr",
                    imgid2idx=tmp_path / "train36_imgid2idx.pkl")
    check_store(out, COUNTS, sizes_given=False)
    with pytest.raises(PkdError,
                       match=r"no image_ids dataset; give the ids as JSON \(--ids-json\)"):
        import_h5(tmp_path / "f.h5", tmp_path / "g.zarr")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_global_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({1: Evil(marker)}))
    with pytest.raises(PkdError, match=r"evil\.pkl: not a plain imgid2idx pickle \(refusing to "
                                       r"load global"):
        load_imgid2idx(tmp_path / "evil.pkl")
    assert not marker.exists()
    # the same payload through the import and the CLI: refused, not executed
    write_fixed(tmp_path / "f.h5", with_ids=False)
    assert main(["stores", "import-h5", str(tmp_path / "f.h5"), str(tmp_path / "x.zarr"),
                 "--imgid2idx", str(tmp_path / "evil.pkl")]) == 2
    assert not marker.exists() and not (tmp_path / "x.zarr").exists()


def test_read_rows_compact_and_scattered(tmp_path):
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["x"] = np.arange(1000 * 2).reshape(1000, 2)
        for idx in ([5, 3, 3, 4], [999, 0, 500, 501, 0, 250]):  # one slice / one read per run
            np.testing.assert_array_equal(read_rows(f["x"], np.array(idx)), f["x"][:][idx])


def test_cli_import_and_info(tmp_path, capsys):
    write_flat(tmp_path / "b.h5")
    (tmp_path / "ids.json").write_text(json.dumps(IMAGE_IDS))
    out = tmp_path / "b.zarr"
    assert main(["stores", "import-h5", str(tmp_path / "b.h5"), str(out), "--ids-json",
                 str(tmp_path / "ids.json")]) == 0
    assert main(["stores", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "regions store keyed by image_id: 5 items, 5 ok, 0 failed" in text
    assert "region_features" in text and "import-h5:b.h5" in text
    assert main(["stores", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["n_shards"] == 1 and info["pending_shards"] == []
    assert info["dims"] == {"feature_dim": 4, "max_regions": 3} and info["bytes_on_disk"] > 0
    assert main(["stores", "info", str(tmp_path)]) == 2
    assert "not a pkd store" in capsys.readouterr().err
