"""``pkd stores import-tsv``: LXMERT / py-bottom-up-attention and bottom-up TSV files.

The files are small generated ones in the exact layouts, written with ``csv.DictWriter`` as the
producers write them (``\\r\\n`` line ends, base64 of raw float32 / int64 buffers); LXMERT's real
train TSV (~30 GB) is too large for tests.
"""

from __future__ import annotations

import base64
import csv
import json

import numpy as np
import pytest

from pkd.cli import main
from pkd.errors import PkdError
from pkd.stores import FeatureStore
from pkd.stores.tsvimport import import_tsv

LXMERT = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
          "num_boxes", "boxes", "features"]
BOTTOMUP = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
D, SHARD = 12, 8


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a)).decode()


def _image(rng: np.random.Generator, image_id: int, k: int) -> dict:
    """One image's arrays; features are float16-exact so the round trip is exact."""
    w, h = int(rng.integers(200, 640)), int(rng.integers(200, 480))
    x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, k), y1 + rng.uniform(1, h / 2, k)], 1)
    return {"id": image_id, "w": w, "h": h, "boxes": boxes.astype(np.float32),
            "features": rng.normal(0, 3, (k, D)).astype(np.float16).astype(np.float32),
            "objects_id": rng.integers(0, 1600, k),
            "objects_conf": rng.uniform(0, 1, k).astype(np.float32),
            "attrs_id": rng.integers(0, 400, k),
            "attrs_conf": rng.uniform(0, 1, k).astype(np.float32)}


def _lxmert_row(im: dict) -> dict:
    return {"img_id": f"COCO_val2014_{im['id']:012d}", "img_h": im["h"], "img_w": im["w"],
            "objects_id": _b64(im["objects_id"]), "objects_conf": _b64(im["objects_conf"]),
            "attrs_id": _b64(im["attrs_id"]), "attrs_conf": _b64(im["attrs_conf"]),
            "num_boxes": len(im["boxes"]), "boxes": _b64(im["boxes"]),
            "features": _b64(im["features"])}


def _write(path, fields, rows, raw_lines=()):
    """A TSV as csv.DictWriter writes it, plus ``raw_lines`` {line number: bytes} spliced in."""
    with open(path, "w", newline="") as f:
        csv.DictWriter(f, fields, delimiter="\t").writerows(rows)
    lines = path.read_bytes().split(b"\r\n")[:-1]
    for number, raw in sorted(raw_lines):
        lines.insert(number - 1, raw)
    path.write_bytes(b"".join(line + b"\r\n" for line in lines))


@pytest.fixture
def lxmert(tmp_path):
    """20 good images (ids shuffled, 5..36 boxes), 3 that fail to decode, 2 skipped lines."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(100, 123))
    images = [_image(rng, int(i), int(rng.integers(5, 37))) for i in ids]
    rows = [_lxmert_row(im) for im in images]
    rows[3]["features"] = "!!not base64!!"
    rows[7]["boxes"] = _b64(images[7]["boxes"][:-1])  # one box short
    big = images[11]["features"].copy()
    big[0, 0] = 1e6  # beyond float16
    rows[11]["features"] = _b64(big)
    skipped = [(5, b"only\tfour\tcolumns\there"), (9, b"\t".join([b"no_digits_id"] + [b"1"] * 9))]
    path = tmp_path / "val2014_obj36.tsv"
    _write(path, LXMERT, rows, skipped)
    # file line of rows[i]: the two spliced lines sit at 5 and 9
    line_of = {}
    number = 1
    for im in images:
        while number in (5, 9):
            number += 1
        line_of[im["id"]] = number
        number += 1
    return path, images, line_of


def test_lxmert_round_trip_and_bad_lines(lxmert, tmp_path):
    path, images, line_of = lxmert
    out, skipped = import_tsv(path, tmp_path / "r.zarr", items_per_shard=SHARD)
    assert skipped == [{"line": 5, "reason": "4 columns, expected 10, 6, 3 (one layout per file)"},
                       {"line": 9, "reason": "image id b'no_digits_id' has no trailing digits"}]
    store = FeatureStore.open(out, kind="regions")
    assert store.complete and store.n_items == 23
    k = max(len(im["boxes"]) for im in images)
    assert store.spec.dims == {"feature_dim": D, "max_regions": k}
    assert store.spec.producer["layout"] == "lxmert"
    failures = {f.id: f.reason for f in store.failures}
    bad = {images[3]["id"]: "features: not valid base64",
           images[7]["id"]: f"boxes: {(len(images[7]['boxes']) - 1) * 16} bytes, expected",
           images[11]["id"]: "overflows float16: features up to 1e+06"}
    assert set(failures) == set(bad)
    for image_id, reason in bad.items():
        assert failures[image_id].startswith(f"line {line_of[image_id]}: {reason}")
    got = store.read(store.rows_of([im["id"] for im in images]))
    for i, im in enumerate(images):
        if im["id"] in bad:
            assert not got["boxes"][i].any() and not store.ok[store.rows_of([im["id"]])[0]]
            continue
        n = len(im["boxes"])
        assert got["num_regions"][i] == n and got["image_size"][i].tolist() == [im["w"], im["h"]]
        assert got["boxes"][i, :n].tobytes() == im["boxes"].tobytes()  # exact
        assert (got["region_features"][i, :n].astype(np.float32).tobytes()
                == im["features"].tobytes())
        np.testing.assert_array_equal(got["region_labels"][i, :n], im["objects_id"])
        assert got["region_scores"][i, :n].tobytes() == im["objects_conf"].tobytes()
        np.testing.assert_array_equal(got["attribute_labels"][i, :n], im["attrs_id"])
        assert got["attribute_scores"][i, :n].tobytes() == im["attrs_conf"].tobytes()
        assert not got["boxes"][i, n:].any() and not got["region_features"][i, n:].any()
        b = im["boxes"] / np.array([im["w"], im["h"]] * 2, np.float32)
        geometry = np.concatenate([b, b[:, 2:] - b[:, :2]], 1)  # by hand: (n, 6)
        np.testing.assert_allclose(got["region_geometry"][i, :n], geometry, rtol=1e-6)


def test_bottomup_layout(tmp_path):
    rng = np.random.default_rng(1)
    images = [_image(rng, 2354786 + i, 10 + i) for i in range(5)]
    rows = [{"image_id": im["id"], "image_w": im["w"], "image_h": im["h"],
             "num_boxes": len(im["boxes"]), "boxes": _b64(im["boxes"]),
             "features": _b64(im["features"])} for im in images]
    path = tmp_path / "trainval_resnet101_faster_rcnn_genome_36.tsv"
    _write(path, BOTTOMUP, rows)
    out, skipped = import_tsv(path, tmp_path / "b.zarr")
    store = FeatureStore.open(out)
    assert not skipped and store.ok.all() and "region_scores" not in store.spec.names
    got = store.read(store.rows_of([im["id"] for im in images]))
    for i, im in enumerate(images):
        n = len(im["boxes"])
        assert got["image_size"][i].tolist() == [im["w"], im["h"]]  # width column comes first
        assert got["boxes"][i, :n].tobytes() == im["boxes"].tobytes()


def _arrays(path):
    store = FeatureStore.open(path)
    return {n: store.read(np.arange(store.n_items), [n])[n] for n in store.spec.names}, store.ok


def test_resume_after_interruption(lxmert, tmp_path, monkeypatch):
    from pkd.stores import tsvimport

    path, _, _ = lxmert
    clean, _ = import_tsv(path, tmp_path / "clean.zarr", items_per_shard=SHARD)
    _interrupted(path, tmp_path / "resumed.zarr", monkeypatch)
    monkeypatch.setattr(tsvimport, "scan", lambda p: pytest.fail("the index should be reused"))
    resumed, _ = import_tsv(path, tmp_path / "resumed.zarr", items_per_shard=SHARD)
    (a, ok_a), (b, ok_b) = _arrays(clean), _arrays(resumed)
    assert ok_a.tobytes() == ok_b.tobytes()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    assert FeatureStore.open(resumed).failures == FeatureStore.open(clean).failures


def test_duplicate_image_is_one_line(tmp_path):
    rng = np.random.default_rng(2)
    im = _image(rng, 42, 3)
    path = tmp_path / "dup.tsv"
    _write(path, LXMERT, [_lxmert_row(im), _lxmert_row(_image(rng, 7, 2)), _lxmert_row(im)])
    with pytest.raises(PkdError, match=r"dup.tsv: image 42 is on line 1 and line 3$"):
        import_tsv(path, tmp_path / "d.zarr")


def test_cli_import_tsv(lxmert, tmp_path, capsys):
    path, _, _ = lxmert
    out = tmp_path / "cli.zarr"
    assert main(["stores", "import-tsv", str(path), str(out), "--items-per-shard", "8"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}: 3 failed, 2 lines skipped" in captured.out
    assert "skipped line 5: 4 columns" in captured.err
    assert json.loads((out / "_pkd" / "tsv_skipped.json").read_text())[1]["line"] == 9
    assert main(["stores", "import-tsv", str(path), str(out), "--items-per-shard", "8",
                 "--strict"]) == 1


def test_vinvl_features_and_predictions(tmp_path):
    """VinVL's features.tsv (img_key, num_boxes, base64 K x (d+6)) + predictions.tsv (JSON)."""
    rng = np.random.default_rng(3)
    images = [_image(rng, i, k) for i, k in ((9, 3), (4, 4), (7, 5))]
    classes = ["man", "dog", "tree"]
    feats, preds = [], []
    for im in images:
        b = im["boxes"] / np.array([im["w"], im["h"]] * 2, np.float32)
        # the 6 extra dims
        geometry = np.concatenate([b, b[:, 2:] - b[:, :2]], 1).astype(np.float32)
        key = f"COCO_test2015_{im['id']:012d}"
        encoded = _b64(np.concatenate([im["features"], geometry], 1))
        feats.append(f"{key}\t{len(im['boxes'])}\t{encoded}")
        objects = [{"rect": box.tolist(), "class": classes[j % 3], "conf": float(c),
                    "attributes": ["white"], "attr_scores": [0.5]}
                   for j, (box, c) in enumerate(zip(im["boxes"], im["objects_conf"], strict=True))]
        preds.append(f"{key}\t" + json.dumps({"image_h": im["h"], "image_w": im["w"],
                                               "num_boxes": len(objects), "objects": objects}))
    preds[1] = preds[1].replace('"dog"', '"unicorn"')  # a class outside the label map
    (tmp_path / "features.tsv").write_text("\n".join(feats) + "\n")
    (tmp_path / "predictions.tsv").write_text("\n".join(preds[::-1]) + "\n")  # any order
    (tmp_path / "labelmap.json").write_text(json.dumps({"label_to_idx": {"man": 1, "dog": 2,
                                                                         "tree": 3}}))
    with pytest.raises(PkdError, match=r"--predictions goes with"):
        import_tsv(tmp_path / "features.tsv", tmp_path / "x.zarr")
    out, _ = import_tsv(tmp_path / "features.tsv", tmp_path / "v.zarr",
                        predictions=tmp_path / "predictions.tsv",
                        labelmap=tmp_path / "labelmap.json")
    store = FeatureStore.open(out)
    assert store.spec.dims == {"feature_dim": D, "max_regions": 5}
    assert [(f.id, f.reason) for f in store.failures] == [
        (4, "line 2: predictions.tsv: class 'unicorn' is not in the label map")]
    got = store.read(store.rows_of([9, 7]))
    for i, im in enumerate([images[0], images[2]]):
        n = len(im["boxes"])
        assert got["boxes"][i, :n].tobytes() == im["boxes"].tobytes()
        assert (got["region_features"][i, :n].astype(np.float32).tobytes()
                == im["features"].tobytes())
        assert got["region_scores"][i, :n].tobytes() == im["objects_conf"].tobytes()
        assert got["region_labels"][i, :n].tolist() == [[1, 2, 3][j % 3] for j in range(n)]
        assert got["image_size"][i].tolist() == [im["w"], im["h"]]


# --- what users break: a changed source, bad sizes / boxes, empty inputs ----------------------

def _interrupted(path, out, monkeypatch):
    """Start an import of ``path`` into ``out`` and kill it after its first shard."""
    from pkd.stores.writer import StoreWriter

    real = StoreWriter.write_shard
    calls = []

    def crash_second(self, k, *args, **kwargs):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, k, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", crash_second)
    with pytest.raises(KeyboardInterrupt):
        import_tsv(path, out, items_per_shard=SHARD)
    monkeypatch.setattr(StoreWriter, "write_shard", real)


def _edit_same_size(path):
    """Regenerate the file as a user would by mistake: other features, same size and mtime."""
    import os

    stat = path.stat()
    data = bytearray(path.read_bytes())
    start = data.index(b"\r\n") - 8  # inside the features of line 1 (base64, no padding there)
    data[start] = ord("B") if data[start] != ord("B") else ord("C")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # e.g. cp -p / rsync -t
    assert path.stat().st_size == stat.st_size


def test_resume_refuses_a_changed_source(lxmert, tmp_path, monkeypatch, capsys):
    from pkd.hf.fingerprint import file_sha256

    path, _, _ = lxmert
    out = tmp_path / "r.zarr"
    _interrupted(path, out, monkeypatch)
    old = file_sha256(path)
    assert FeatureStore.open(out).spec.producer["sha256"] == old
    _edit_same_size(path)
    new = file_sha256(path)
    want = (f"{out}: was imported from {path.resolve()} with sha256 {old[:12]}…, {path} now has "
            f"{new[:12]}… (re-import with --overwrite)")
    with pytest.raises(PkdError) as err:
        import_tsv(path, out, items_per_shard=SHARD)
    assert str(err.value) == want
    assert main(["stores", "import-tsv", str(path), str(out), "--items-per-shard", "8"]) == 2
    assert capsys.readouterr().err == f"error: {want}\n"
    import_tsv(path, out, items_per_shard=SHARD, overwrite=True)  # the way out it names
    assert FeatureStore.open(out).complete and FeatureStore.open(out).spec.producer["sha256"] == new


def test_store_without_a_source_digest(lxmert, tmp_path):
    """A store imported before digests were recorded reads as before; resuming it is refused
    (nothing says the source is still the file it was built from)."""
    from pkd.stores.schema import ATTR, config_hash

    path, images, _ = lxmert
    out, _ = import_tsv(path, tmp_path / "old.zarr", items_per_shard=SHARD)
    meta = json.loads((out / "zarr.json").read_text())
    producer = meta["attributes"][ATTR]["producer"]
    del producer["sha256"]
    producer["config_hash"] = config_hash({k: producer[k] for k in ("source", "bytes", "layout")})
    (out / "zarr.json").write_text(json.dumps(meta))
    store = FeatureStore.open(out, kind="regions")
    assert store.complete and store.read(store.rows_of([images[0]["id"]]))["num_regions"][0] > 0
    with pytest.raises(PkdError, match=rf"^{out}: was imported from .*val2014_obj36.tsv before "
                                       r"imports recorded the source's sha256: cannot tell "
                                       r"whether .* changed \(re-import with --overwrite\)$"):
        import_tsv(path, out, items_per_shard=SHARD)


def test_image_sizes_and_boxes_are_checked(tmp_path, capsys):
    """Swapped img_h / img_w, a zero size, a box outside the image or upside down: a failed
    image (ok = 0) with one line saying what is wrong; a box 1 px over the edge is accepted."""
    rng = np.random.default_rng(4)
    images = [_image(rng, 500 + i, 4) for i in range(7)]
    wide = images[1]
    wide["w"], wide["h"] = 600, 300
    wide["boxes"][0] = [10, 10, 550, 290]  # fits 600 x 300, not 300 x 600
    rows = [_lxmert_row(im) for im in images]
    rows[1]["img_h"], rows[1]["img_w"] = wide["w"], wide["h"]  # swapped
    rows[2]["img_h"] = 0
    images[3]["boxes"][2] = [0, 0, 2 * images[3]["w"], images[3]["h"]]  # twice the width
    rows[3]["boxes"] = _b64(images[3]["boxes"])
    images[4]["boxes"][1, [0, 2]] = images[4]["boxes"][1, [2, 0]]  # x1 > x2
    rows[4]["boxes"] = _b64(images[4]["boxes"])
    images[5]["boxes"][3, 2:] = [images[5]["w"] + 0.9, images[5]["h"] + 0.5]  # rounding: kept
    rows[5]["boxes"] = _b64(images[5]["boxes"])
    path = tmp_path / "sizes.tsv"
    _write(path, LXMERT, rows)
    out = tmp_path / "s.zarr"
    assert main(["stores", "import-tsv", str(path), str(out)]) == 0
    b3 = images[3]["boxes"][2]
    x1, _, x2, _ = images[4]["boxes"][1]
    want = {501: "line 2: box 0 (10, 10, 550, 290) is outside the 300 x 600 image (w x h; "
                 "tolerance 1 px): are img_h / img_w swapped?",
            502: f"line 3: image size {images[2]['w']} x 0 (w x h): must be positive",
            503: f"line 4: box 2 ({b3[0]:g}, {b3[1]:g}, {b3[2]:g}, {b3[3]:g}) is outside the "
                 f"{images[3]['w']} x {images[3]['h']} image (w x h; tolerance 1 px)",
            504: f"line 5: box 1 has x2 {x2:g} < x1 {x1:g}"}
    store = FeatureStore.open(out)
    assert {f.id: f.reason for f in store.failures} == want
    assert store.ok.tolist() == [1, 0, 0, 0, 0, 1, 1]
    err = capsys.readouterr().err.splitlines()
    assert sorted(err) == sorted(f"failed image {i}: {r}" for i, r in want.items())
    geometry = store.read(np.arange(7), ["region_geometry"])["region_geometry"]
    assert geometry.min() >= -1e-6 and geometry.max() <= 1 + 1 / min(images[5]["w"], images[5]["h"])


def test_empty_inputs_are_refused(tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.tsv"
    blank.write_bytes(b"\r\n\r\n")
    for path in (empty, blank):
        with pytest.raises(PkdError, match=rf"^{path}: no lines \(empty or blank file\)$"):
            import_tsv(path, tmp_path / "e.zarr")
    assert not (tmp_path / "e.zarr").exists()
    rng = np.random.default_rng(5)
    rows = [_lxmert_row(_image(rng, i, 3)) for i in (7, 8)]
    for row in rows:
        row["img_w"] = 0  # every line fails: a store with no usable image
    path = tmp_path / "allbad.tsv"
    _write(path, LXMERT, rows)
    out = tmp_path / "allbad.zarr"
    want = (f"{out}: none of the 2 images of {path} could be imported (first: image 7, line 1: "
            f"image size 0 x {rows[0]['img_h']} (w x h): must be positive; all in "
            f"`pkd stores info {out}`)")
    for _ in range(2):  # the import, then a re-run of the complete store
        assert main(["stores", "import-tsv", str(path), str(out)]) == 2
        assert capsys.readouterr().err == f"error: {want}\n"
    features = tmp_path / "features.tsv"
    encoded = _b64(np.zeros((1, D + 6), np.float32))
    features.write_text(f"COCO_test2015_000000000009\t1\t{encoded}\n")
    with pytest.raises(PkdError, match=rf"^{empty}: no lines \(empty or blank file\)$"):
        import_tsv(features, tmp_path / "v.zarr", predictions=empty)
