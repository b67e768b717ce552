"""Import bottom-up-attention TSV region features into a ``regions`` store, streaming.

Layouts (tab-separated, one image per line; array fields are base64 of the raw little-endian
numpy buffer; K = ``num_boxes``; the layout is chosen by the number of columns):

* ``lxmert`` (10 columns) — LXMERT's ``{train2014,val2014}_obj36.tsv`` / ``vg_gqa_obj36.tsv`` and
  airsplay/py-bottom-up-attention's output (LXMERT ``src/utils.py`` ``FIELDNAMES``):
  ``img_id, img_h, img_w, objects_id (K int64), objects_conf (K f32), attrs_id (K int64),
  attrs_conf (K f32), num_boxes, boxes (K x 4 f32, x1 y1 x2 y2 pixels), features (K x d f32)``;
* ``bottomup`` (6 columns) — peteanderson80/bottom-up-attention ``generate_tsv.py``:
  ``image_id, image_w, image_h, num_boxes, boxes, features`` (note: width before height).

Stored per image: ``boxes``, ``region_features`` (float16), ``region_geometry`` (the 6-d box
geometry computed from boxes and size, :func:`pkd.stores.h5import.geometry`), ``num_regions``,
``image_size`` (w, h), and for ``lxmert`` also ``region_labels`` (objects_id), ``region_scores``
(objects_conf), ``attribute_labels`` (attrs_id), ``attribute_scores`` (attrs_conf).
Image ids: the trailing digits of ``img_id`` (``COCO_val2014_000000000042`` -> 42, ``2354786``).

Streaming: pass 1 scans the file once, line by line, for each line's id, byte offset, line
number and ``num_boxes`` (cached in ``OUT/_pkd/tsv_index.npz`` with the file's size and mtime, so
a resumed import skips it); pass 2 writes shard by shard, seeking to the lines of the shard's
images. Memory stays about one shard of decoded features; the file is never read whole.

Bad lines: a line whose id or column count cannot be read is skipped and listed with its line
number in ``OUT/_pkd/tsv_skipped.json``; a line that fails to decode (bad base64, wrong sizes,
non-finite or beyond-float16 features) or whose geometry is impossible (:func:`check_boxes`: an
image size that is not positive, a box upside down or outside the image by more than
:data:`BOX_TOLERANCE` pixels, as when ``img_h`` / ``img_w`` are swapped) becomes a failed item
(``ok = 0``, its reason starts with ``line N:``), as at ``import-h5``; the CLI prints one line per
failed image. Two lines with one image id are a PkdError; so are an empty (or blank) file and an
import in which no image decodes (the store is kept for ``pkd stores info``).

Source fingerprint: the store's producer records the sha256 of the TSV (and of predictions.tsv),
streamed in 4 MiB blocks (:func:`pkd.hf.fingerprint.file_sha256`), computed on every run. A
resume (or re-run) whose file has another digest is refused — size and mtime alone miss a file
regenerated with the same size (``cp -p``, ``rsync -t``) and the import would mix the rows of two
files in one "complete" store. A store imported before digests were recorded is still read as
before, but resuming it is refused (its source cannot be checked): re-import with overwrite.
Cost (``python benchmarks/bench_tsv_fingerprint.py --mb 200``): one more sequential read plus
sha256 — a 200 MB LXMERT TSV hashes in 0.23 s (870 MB/s, one core of a 2-core Xeon, page cache
warm; 0.24 s with its pages dropped), against 0.39 s for pass 1's scan of the same file. The
~30 GB LXMERT train TSV thus adds ~35 s at that rate, or one more disk read where the disk is
slower.

* ``vinvl`` (3 columns) — VinVL / scene_graph_benchmark ``features.tsv``: ``img_key, num_boxes,
  features (K x (d + 6) f32)``, the last 6 dims being the box geometry, with its row-aligned
  ``predictions.tsv`` (``img_key, {"image_h", "image_w", "num_boxes", "objects": [{"rect": [x1,
  y1, x2, y2], "class", "conf", ...}]}``, required: boxes and sizes come from it). Stored:
  the first d dims as ``region_features``, ``rect`` as ``boxes``, ``conf`` as ``region_scores``;
  the geometry is recomputed from boxes and size (it equals the dropped 6 dims). Class names are
  strings, so ``region_labels`` is written only with a label map (``label_to_idx`` of VinVL's
  ``VG-SGG-dicts-vgoi6-clipped.json``); an unknown class is a failed image.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pkd.errors import PkdError
from pkd.fsio import write_json
from pkd.hf.fingerprint import file_sha256
from pkd.progress import track
from pkd.stores.h5import import float16_reason, geometry, region_arrays
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import ArraySpec, Failure, StoreSpec, config_hash, read_attrs
from pkd.stores.writer import StoreWriter, finite_rows

LAYOUTS = {10: "lxmert", 6: "bottomup", 3: "vinvl"}  # column count -> layout
# column of (image id, height, width, num_boxes, boxes, features) per layout; vinvl: boxes and
# sizes come from predictions.tsv
COLUMNS = {"lxmert": (0, 1, 2, 7, 8, 9), "bottomup": (0, 2, 1, 3, 4, 5), "vinvl": (0, None, None, 1, None, 2)}
VINVL_GEOMETRY = 6  # trailing dims of a VinVL feature: the 6-d box geometry
EXTRA = {"lxmert": (("region_labels", 3, np.int64, "int32"), ("region_scores", 4, np.float32, "float32"),
                    ("attribute_labels", 5, np.int64, "int32"), ("attribute_scores", 6, np.float32, "float32"))}
BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (detectors that round)
SIZE_NAMES = {"lxmert": "img_h / img_w", "bottomup": "image_w / image_h",
              "vinvl": "image_h / image_w"}  # the size fields, as the layout names them
INDEX_FILE = "_pkd/tsv_index.npz"
SKIPPED_FILE = "_pkd/tsv_skipped.json"
_DIGITS = re.compile(rb"(\d+)$")


class RowError(ValueError):
    """A line that does not decode; the message is the failure reason."""


@dataclass
class TsvIndex:
    layout: str  # "lxmert" | "bottomup"
    ids: np.ndarray  # int64 (N,) image id of each good line, file order
    offsets: np.ndarray  # int64 (N,) byte offset of the line
    lines: np.ndarray  # int64 (N,) 1-based line number
    max_regions: int  # largest num_boxes
    feature_dim: int  # d, from the first line whose sizes add up
    skipped: list[dict]  # [{"line", "reason"}] of lines without a readable id / columns


def _image_id(field: bytes) -> int:
    m = _DIGITS.search(field.strip())
    if m is None:
        raise RowError(f"image id {field[:40]!r} has no trailing digits")
    return int(m.group(1))


def _b64_bytes(field: bytes) -> int:
    """Decoded size of a base64 field, from its length and padding (no decoding)."""
    field = field.strip()
    return len(field) * 3 // 4 - field[-2:].count(b"=")


def scan(path: Path) -> TsvIndex:
    """Pass 1: one sequential read of ``path`` (module docstring)."""
    ids, offsets, lines, skipped = [], [], [], []
    layout, max_regions, dim, offset, seen = None, 1, 0, 0, False
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            seen = True
            n_cols = line.count(b"\t") + 1
            layout = layout or LAYOUTS.get(n_cols)
            if layout is None or LAYOUTS.get(n_cols) != layout:
                skipped.append({"line": number, "reason": f"{n_cols} columns, expected "
                                f"{', '.join(map(str, LAYOUTS))} (one layout per file)"})
                continue
            fields = line.rstrip(b"\r\n").split(b"\t")
            c = COLUMNS[layout]
            try:
                ids.append(_image_id(fields[c[0]]))
            except RowError as err:
                skipped.append({"line": number, "reason": str(err)})
                continue
            offsets.append(start)
            lines.append(number)
            try:
                k = int(fields[c[3]])
            except ValueError:
                continue  # pass 2 records it
            max_regions = max(max_regions, k)
            if not dim and k > 0 and _b64_bytes(fields[c[5]]) % (4 * k) == 0:
                dim = _b64_bytes(fields[c[5]]) // (4 * k) - (VINVL_GEOMETRY if layout == "vinvl" else 0)
    if not seen:
        raise PkdError(f"{path}: no lines (empty or blank file)")
    if layout is None or not ids:
        raise PkdError(f"{path}: no line in a known TSV layout ({', '.join(LAYOUTS.values())})")
    if not dim:
        raise PkdError(f"{path}: no line whose features divide into num_boxes rows")
    return TsvIndex(layout, np.array(ids, np.int64), np.array(offsets, np.int64),
                    np.array(lines, np.int64), max_regions, dim, skipped)


def _check_unique(path: Path, index: TsvIndex) -> None:
    order = np.argsort(index.ids, kind="stable")
    same = np.flatnonzero(np.diff(index.ids[order]) == 0)
    if same.size:
        a, b = index.lines[order[same[0]]], index.lines[order[same[0] + 1]]
        raise PkdError(f"{path}: image {index.ids[order[same[0]]]} is on line {a} and line {b}")


def _array(field: bytes, dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(field.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RowError(f"{name}: not valid base64") from None
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != want:
        raise RowError(f"{name}: {len(raw)} bytes, expected {want} ({'x'.join(map(str, shape))} "
                       f"{np.dtype(dtype).name})")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_line(line: bytes, layout: str, k_max: int, d: int, prediction: bytes | None = None,
                labels: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """One image's arrays from a TSV line (float32 features, unpadded); RowError if it fails.
    ``prediction``: the image's predictions.tsv line (vinvl), ``labels``: class -> id."""
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) not in LAYOUTS or LAYOUTS[len(fields)] != layout:
        raise RowError(f"{len(fields)} columns, expected {len(COLUMNS[layout])}")
    if layout == "vinvl":
        out = _decode_vinvl(fields, k_max, d, prediction, labels)
    else:
        out = _decode_columns(fields, layout, k_max, d)
    check_boxes(out["boxes"], out["image_size"], SIZE_NAMES[layout])
    return out


def _decode_columns(fields: list[bytes], layout: str, k_max: int, d: int) -> dict[str, np.ndarray]:
    """:func:`decode_line` of an ``lxmert`` / ``bottomup`` line (sizes and boxes in its columns)."""
    _, ch, cw, cn, cb, cf = COLUMNS[layout]
    try:
        h, w, k = int(fields[ch]), int(fields[cw]), int(fields[cn])
    except ValueError:
        raise RowError("img_h / img_w / num_boxes: not integers") from None
    if not 0 <= k <= k_max:
        raise RowError(f"num_boxes {k} outside 0..{k_max}")
    out = {"boxes": _array(fields[cb], np.float32, (k, 4), "boxes"),
           "features": _array(fields[cf], np.float32, (k, d), "features"),
           "image_size": np.array([w, h], np.int32)}
    for name, col, dtype, _ in EXTRA.get(layout, ()):
        out[name] = _array(fields[col], dtype, (k,), fields_name(layout, col))
    return out


def check_boxes(boxes: np.ndarray, size: np.ndarray, size_names: str) -> None:
    """RowError unless the image size ``(w, h)`` is positive and every box ``(x1, y1, x2, y2)``
    is finite, not upside down (``x2 >= x1``, ``y2 >= y1``) and inside the image up to
    :data:`BOX_TOLERANCE` pixels on each side (so its geometry lies in [0, 1] up to 1 px / side).
    A box that fits once width and height are exchanged gets the hint that ``size_names`` (the
    layout's size fields) are swapped."""
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise RowError(f"image size {w} x {h} (w x h): must be positive")
    finite = np.isfinite(boxes).all(1)
    if not finite.all():
        raise RowError(f"box {np.flatnonzero(~finite)[0]}: not finite")
    _check_order(boxes)
    outside = _outside(boxes, w, h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        hint = "" if _outside(boxes, h, w).any() else f": are {size_names} swapped?"
        raise RowError(f"box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is outside the {w} x {h} image "
                       f"(w x h; tolerance {BOX_TOLERANCE:g} px){hint}")


def _check_order(boxes: np.ndarray) -> None:
    """RowError for the first box with ``x2 < x1`` or ``y2 < y1``."""
    for axis, (lo, hi) in (("x", (0, 2)), ("y", (1, 3))):
        flipped = np.flatnonzero(boxes[:, hi] < boxes[:, lo])
        if flipped.size:
            i = int(flipped[0])
            raise RowError(f"box {i} has {axis}2 {float(boxes[i, hi]):g} < {axis}1 "
                           f"{float(boxes[i, lo]):g}")


def _outside(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """(K,) bool: the boxes sticking out of a ``w x h`` image by more than the tolerance."""
    t = BOX_TOLERANCE
    return (boxes[:, 0] < -t) | (boxes[:, 1] < -t) | (boxes[:, 2] > w + t) | (boxes[:, 3] > h + t)


def _decode_vinvl(fields: list[bytes], k_max: int, d: int, prediction: bytes | None,
                  labels: dict[str, int] | None) -> dict[str, np.ndarray]:
    try:
        k = int(fields[1])
    except ValueError:
        raise RowError("num_boxes: not an integer") from None
    if not 0 <= k <= k_max:
        raise RowError(f"num_boxes {k} outside 0..{k_max}")
    features = _array(fields[2], np.float32, (k, d + VINVL_GEOMETRY), "features")
    if prediction is None:
        raise RowError("no line for this image in predictions.tsv")
    try:
        pred = json.loads(prediction.rstrip(b"\r\n").split(b"\t")[1])
        objects = pred["objects"]
        size = np.array([int(pred["image_w"]), int(pred["image_h"])], np.int32)
        boxes = np.array([o["rect"] for o in objects], np.float32).reshape(-1, 4)
        conf = np.array([o["conf"] for o in objects], np.float32).reshape(-1)
        classes = [o["class"] for o in objects]
    except (IndexError, ValueError, KeyError, TypeError) as err:
        raise RowError(f"predictions.tsv: not a VinVL prediction ({type(err).__name__}: {err})") from None
    if len(boxes) != k or len(conf) != k:
        raise RowError(f"predictions.tsv: {len(boxes)} objects, features have num_boxes {k}")
    out = {"boxes": boxes, "features": features[:, :d], "image_size": size, "region_scores": conf}
    if labels is not None:
        unknown = [c for c in classes if c not in labels]
        if unknown:
            raise RowError(f"predictions.tsv: class {unknown[0]!r} is not in the label map")
        out["region_labels"] = np.array([labels[c] for c in classes], np.int64)
    return out


def scan_predictions(path: Path) -> dict[int, int]:
    """``{image_id: byte offset}`` of a VinVL predictions.tsv (one sequential read)."""
    out: dict[int, int] = {}
    line_of: dict[int, int] = {}
    offset, seen = 0, False
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            seen = True
            try:
                image_id = _image_id(line.split(b"\t", 1)[0])
            except RowError:
                continue  # its features line fails: no prediction
            if image_id in out:
                raise PkdError(f"{path}: image {image_id} is on line {line_of[image_id]} and line {number}")
            out[image_id], line_of[image_id] = start, number
    if not seen:
        raise PkdError(f"{path}: no lines (empty or blank file)")
    return out


def load_labelmap(path: str | Path) -> dict[str, int]:
    """``{class name: id}`` from VinVL's ``VG-SGG-dicts-*.json`` (``label_to_idx``) or a plain dict."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise PkdError(f"{path}: unreadable label map ({err})") from None
    data = data.get("label_to_idx", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise PkdError(f"{path}: expected {{class: id}} or {{'label_to_idx': {{class: id}}}}")
    return data


def fields_name(layout: str, col: int) -> str:
    names = {"lxmert": ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id",
                        "attrs_conf", "num_boxes", "boxes", "features"),
             "bottomup": ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")}
    return names[layout][col]


class TsvRegions:
    """Padded shard arrays from the indexed lines of an open TSV file."""

    def __init__(self, f, path: Path, index: TsvIndex, predictions: Path | None = None,
                 labels: dict[str, int] | None = None, digests: dict[str, str] | None = None):
        self.f, self.path, self.index = f, path, index
        self.digests = digests or {}  # {"sha256": ..., "predictions_sha256": ...} (producer keys)
        self.k, self.d = index.max_regions, index.feature_dim
        self.where = {int(i): p for p, i in enumerate(index.ids.tolist())}  # id -> index position
        self.labels, self.predictions = labels, predictions
        self.pred_offsets = scan_predictions(predictions) if predictions else {}
        self.pred_file = open(predictions, "rb") if predictions else None  # closed by close()
        if index.layout == "vinvl":
            self.extra = [("region_scores", "float32")] + ([("region_labels", "int32")] if labels else [])
        else:
            self.extra = [(name, dtype) for name, _, _, dtype in EXTRA.get(index.layout, ())]

    def close(self) -> None:
        if self.pred_file is not None:
            self.pred_file.close()

    def _prediction(self, image_id: int) -> bytes | None:
        offset = self.pred_offsets.get(image_id)
        if self.pred_file is None or offset is None:
            return None
        self.pred_file.seek(offset)
        return self.pred_file.readline()

    def spec(self, items_per_chunk: int, items_per_shard: int) -> StoreSpec:
        stat = self.path.stat()
        origin = {"source": str(self.path.resolve()), "bytes": stat.st_size, "layout": self.index.layout}
        if self.predictions:
            origin |= {"predictions": str(self.predictions.resolve()),
                       "predictions_bytes": self.predictions.stat().st_size,
                       "labels": config_hash(self.labels) if self.labels else None}
        origin |= self.digests
        producer = {"model": f"import-tsv:{self.path.name}", **origin, "dtype": "float16",
                    "source_dtype": "float32", "config_hash": config_hash(origin)}
        extra = tuple(ArraySpec(name, (self.k,), dtype) for name, dtype in self.extra)
        return StoreSpec("regions", "image_id", region_arrays(self.k, self.d, extra), producer,
                         {"feature_dim": self.d, "max_regions": self.k}, items_per_chunk, items_per_shard)

    def read(self, ids: np.ndarray, names: list[str]) -> tuple[dict[str, np.ndarray], list[Failure]]:
        """The store arrays of images ``ids`` (B,) and the failures among them."""
        b, k = len(ids), self.k
        out = {"boxes": np.zeros((b, k, 4), np.float32), "region_features": np.zeros((b, k, self.d), np.float16),
               "num_regions": np.zeros(b, np.int32), "image_size": np.zeros((b, 2), np.int32)}
        for name, dtype in self.extra:
            out[name] = np.zeros((b, k), dtype)
        failures = []
        positions = [self.where[int(i)] for i in ids]
        for p in np.argsort(self.index.offsets[positions], kind="stable"):  # read in file order
            pos = positions[p]
            self.f.seek(int(self.index.offsets[pos]))
            line_no = int(self.index.lines[pos])
            try:
                row = decode_line(self.f.readline(), self.index.layout, k, self.d,
                                  self._prediction(int(ids[p])), self.labels)
                self._fill(out, p, row)
            except RowError as err:
                self._clear(out, p)
                failures.append(Failure(int(ids[p]), str(self.path), f"line {line_no}: {err}"))
        valid = np.arange(k)[None, :] < out["num_regions"][:, None]  # (B, K)
        out["region_geometry"] = geometry(out["boxes"], out["image_size"]) * valid[..., None]
        return {n: out[n] for n in names}, failures

    def _fill(self, out: dict, p: int, row: dict) -> None:
        n = len(row["boxes"])
        with np.errstate(over="ignore"):
            features = row["features"].astype(np.float16)  # (n, d)
        if not finite_rows(features[None])[0]:
            raise RowError(float16_reason(row["features"], "features", "TSV"))
        out["boxes"][p, :n] = row["boxes"]
        out["region_features"][p, :n] = features
        out["num_regions"][p] = n
        out["image_size"][p] = row["image_size"]
        for name, _ in self.extra:
            out[name][p, :n] = row[name]

    def _clear(self, out: dict, p: int) -> None:
        for a in out.values():
            a[p] = 0


def _load_index(out: Path, source: Path) -> TsvIndex | None:
    """The cached pass-1 index of ``source`` in ``out``, or None when absent or stale."""
    path = out / INDEX_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        stat = source.stat()
        if meta["bytes"] != stat.st_size or meta["mtime_ns"] != stat.st_mtime_ns:
            return None
        skipped = json.loads((out / SKIPPED_FILE).read_text()) if (out / SKIPPED_FILE).is_file() else []
        return TsvIndex(meta["layout"], z["ids"], z["offsets"], z["lines"], meta["max_regions"],
                        meta["feature_dim"], skipped)


def _save_index(out: Path, source: Path, index: TsvIndex) -> None:
    stat = source.stat()
    meta = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "layout": index.layout,
            "max_regions": index.max_regions, "feature_dim": index.feature_dim}
    (out / "_pkd").mkdir(parents=True, exist_ok=True)
    np.savez(out / INDEX_FILE, meta=np.array(json.dumps(meta)), ids=index.ids, offsets=index.offsets,
             lines=index.lines)
    write_json(out / SKIPPED_FILE, index.skipped, indent=1)


def import_tsv(tsv_path: str | Path, out: str | Path, *, predictions: str | Path | None = None,
               labelmap: str | Path | None = None, items_per_chunk: int = 16,
               items_per_shard: int = 512, overwrite: bool = False) -> tuple[Path, list[dict]]:
    """Write the ``regions`` store ``out`` from the TSV file ``tsv_path`` (module docstring);
    returns ``(out, skipped lines)``. Resumes an interrupted import; another source is refused.
    Chunks hold ``gcd(items_per_chunk, items_per_shard)`` images (a shard is whole chunks)."""
    tsv_path, out = Path(tsv_path), Path(out)
    predictions = Path(predictions) if predictions is not None else None
    for path in (tsv_path, predictions):
        if path is not None and not path.is_file():
            raise PkdError(f"{path}: no such file")
    digests = _digests(tsv_path, predictions)
    if not overwrite:
        _check_unchanged(out, tsv_path, predictions, digests)
    index = None if overwrite else _load_index(out, tsv_path)
    index = index or scan(tsv_path)
    _check_unique(tsv_path, index)
    if (index.layout == "vinvl") != (predictions is not None):
        raise PkdError(f"{tsv_path}: --predictions goes with (and only with) a VinVL features.tsv "
                       f"(this file is {index.layout})")
    labels = load_labelmap(labelmap) if labelmap else None
    with open(tsv_path, "rb") as f:
        source = TsvRegions(f, tsv_path, index, predictions, labels, digests)
        try:
            _write_store(source, out, index, items_per_chunk, items_per_shard, overwrite)
        finally:
            source.close()
    _check_some_ok(out, tsv_path)
    return out, index.skipped


def _digests(tsv_path: Path, predictions: Path | None) -> dict[str, str]:
    """The producer's fingerprints of the input files: ``sha256`` (and ``predictions_sha256``)."""
    out = {"sha256": file_sha256(tsv_path)}
    if predictions is not None:
        out["predictions_sha256"] = file_sha256(predictions)
    return out


def _check_unchanged(out: Path, tsv_path: Path, predictions: Path | None,
                     digests: dict[str, str]) -> None:
    """Refuse to resume an import into ``out`` from input files whose sha256 is not the one the
    store recorded, or from a store that recorded none (imported before digests existed). A
    store of another kind or source is left to :class:`StoreWriter`, which names the field."""
    if not (out / "zarr.json").is_file():
        return
    producer = read_attrs(out).get("producer", {})
    if not str(producer.get("model", "")).startswith("import-tsv:"):
        return
    for name, path, key in (("source", tsv_path, "sha256"), ("predictions", predictions, "predictions_sha256")):
        if path is None or name not in producer:
            continue
        recorded = producer.get(key)
        if recorded is None:
            raise PkdError(f"{out}: was imported from {producer[name]} before imports recorded the "
                           f"source's sha256: cannot tell whether {path} changed (re-import with "
                           "--overwrite)")
        if recorded != digests[key]:
            raise PkdError(f"{out}: was imported from {producer[name]} with sha256 {recorded[:12]}…, "
                           f"{path} now has {digests[key][:12]}… (re-import with --overwrite)")


def _check_some_ok(out: Path, tsv_path: Path) -> None:
    """Refuse a finished import in which no image decoded (the store stays, for inspection)."""
    store = FeatureStore.open(out)
    if store.ok.any():
        return
    first = store.failures[0]
    raise PkdError(f"{out}: none of the {store.n_items} images of {tsv_path} could be imported "
                   f"(first: image {first.id}, {first.reason}; all in `pkd stores info {out}`)")


def _write_store(source: TsvRegions, out: Path, index: TsvIndex, items_per_chunk: int,
                 items_per_shard: int, overwrite: bool) -> None:
    """Pass 2: every pending shard of ``out`` from ``source``."""
    spec = source.spec(math.gcd(items_per_chunk, items_per_shard), items_per_shard)
    with StoreWriter(out, spec, index.ids, overwrite=overwrite) as writer:
        _save_index(out, source.path, index)
        pending = writer.pending()
        for k in track(pending, total=len(pending), description=f"import {source.path.name}"):
            shard_ids = writer.shard_ids(k)
            arrays, failed = source.read(shard_ids, spec.names)
            writer.write_shard(k, arrays, failed)
