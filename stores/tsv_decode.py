"""Decode one TSV line into one image's arrays (float32 features, unpadded) and check its boxes
against its image size; VinVL lines take boxes and sizes from their predictions.tsv line."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import numpy as np

from pkd.errors import PkdError
from pkd.stores.tsv_scan import COLUMNS, LAYOUTS, VINVL_GEOMETRY, RowError

EXTRA = {"lxmert": (("region_labels", 3, np.int64, "int32"),
                    ("region_scores", 4, np.float32, "float32"),
                    ("attribute_labels", 5, np.int64, "int32"),
                    ("attribute_scores", 6, np.float32, "float32"))}
BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (detectors that round)
SIZE_NAMES = {"lxmert": "img_h / img_w", "bottomup": "image_w / image_h",
              "vinvl": "image_h / image_w"}  # the size fields, as the layout names them


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
        raise RowError(f"predictions.tsv: not a VinVL prediction ({type(err).__name__}: "
                       f"{err})") from None
    if len(boxes) != k or len(conf) != k:
        raise RowError(f"predictions.tsv: {len(boxes)} objects, features have num_boxes {k}")
    out = {"boxes": boxes, "features": features[:, :d], "image_size": size, "region_scores": conf}
    if labels is not None:
        unknown = [c for c in classes if c not in labels]
        if unknown:
            raise RowError(f"predictions.tsv: class {unknown[0]!r} is not in the label map")
        out["region_labels"] = np.array([labels[c] for c in classes], np.int64)
    return out


def load_labelmap(path: str | Path) -> dict[str, int]:
    """``{class name: id}`` from VinVL's ``VG-SGG-dicts-*.json`` (``label_to_idx``) or a plain
    dict."""
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
