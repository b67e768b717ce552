"""Import bottom-up-attention HDF5 region features into a ``regions`` store.

Two HDF5 layouts are read (d = feature dim, K = boxes per image, R = boxes in total):

* fixed (``trainval_36``): ``image_features`` (N, K, d), ``image_bb`` (N, K, 4) xyxy pixels,
  ``spatial_features`` (N, K, 6), optional ``num_boxes`` (N,);
* flat (BAN-style 10-100 boxes): ``image_features`` (R, d), ``image_bb`` (R, 4),
  ``spatial_features`` (R, 6), ``pos_boxes`` (N, 2) = [start, stop) of each image's boxes.

Optional ``image_w``, ``image_h`` (N,) give image sizes; without them the size is recovered from a
box and its 6-d geometry ``(x1/W, y1/H, x2/W, y2/H, w/W, h/H)`` (W = w / (w/W) of the widest box;
(0, 0) for an image without boxes).
``spatial_features`` is stored as ``region_geometry``; it is computed from boxes and sizes if
absent.

Image ids of the N rows, first found of: an ``image_ids`` dataset; ``ids`` (a JSON file holding
``{"<image_id>": row}`` or ``[image_id of row 0, ...]``, or the list itself); ``imgid2idx``, the
classic ``*_imgid2idx.pkl`` ``{image_id: row}`` — read with an unpickler that refuses every global,
so only dicts, lists, ints and strings can come out of it (never ``pickle.load``).

Features are stored as float16. An image whose features are not finite there — NaN / inf in the
file, or a value beyond ±65504 that overflows float16 — is imported as a failed item, like an
unreadable image at extraction: its row is zero with ``ok = 0`` and the reason (``overflows
float16: ...`` / ``non-finite features: ...``) is recorded with its image id; the other images go
on (``pkd stores import-h5 --strict`` then exits 1; ``pkd stores info`` lists them).

The import streams shard by shard (``items_per_shard`` images at a time) and resumes like any
store write.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from pkd.errors import PkdError
from pkd.progress import track
from pkd.stores.schema import ArraySpec, Failure, StoreSpec, config_hash
from pkd.stores.writer import FLOAT16_MAX, StoreWriter, finite_rows

IDS_JSON_HINT = ("write the mapping as JSON {image_id: row} (or [image_id of row 0, ...]) and pass "
                 "it with --ids-json")


class _NoGlobals(pickle.Unpickler):
    """An unpickler that can build only built-in containers and scalars: every global is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_imgid2idx(path: str | Path) -> dict[int, int]:
    """``{image_id: row}`` from a ``*_imgid2idx.pkl`` without executing anything from it."""
    try:
        with open(path, "rb") as f:
            mapping = _NoGlobals(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        what = ("holds numpy objects (e.g. numpy-int keys), which pkd does not unpickle"
                if "numpy" in str(err) else "not a plain imgid2idx pickle")  # numpy.*.scalar
        raise PkdError(f"{path}: {what} ({err}); {IDS_JSON_HINT}") from None
    return _as_mapping(mapping, path)


def _as_mapping(obj, where) -> dict[int, int]:
    """``{image_id: row}`` from a dict (keys may be strings) or a list of ids in row order."""
    try:
        if isinstance(obj, dict):
            return {int(k): int(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return {int(image_id): row for row, image_id in enumerate(obj)}
    except (TypeError, ValueError) as err:
        raise PkdError(f"{where}: ids must be integers ({err})") from None
    raise PkdError(f"{where}: expected {{image_id: row}} or a list of image ids, got "
                   f"{type(obj).__name__}")


def image_rows(f: h5py.File, ids, imgid2idx) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, their HDF5 rows), both int64 (N,)."""
    n = len(f["pos_boxes"]) if "pos_boxes" in f else len(f["image_features"])
    if "image_ids" in f:
        mapping = _as_mapping(f["image_ids"][:].tolist(), f"{f.filename}:image_ids")
    elif ids is not None and isinstance(ids, str | Path):
        try:
            mapping = _as_mapping(json.loads(Path(ids).read_text()), ids)
        except (OSError, json.JSONDecodeError) as err:
            raise PkdError(f"{ids}: unreadable ids JSON ({err})") from None
    elif ids is not None:
        mapping = _as_mapping(list(ids), "ids")
    elif imgid2idx is not None:
        mapping = load_imgid2idx(imgid2idx)
    else:
        raise PkdError(f"{f.filename}: no image_ids dataset; give the ids as JSON (--ids-json) "
                       "or a *_imgid2idx.pkl (--imgid2idx)")
    image_ids = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
    rows = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    bad = (rows < 0) | (rows >= n)
    if bad.any():
        raise PkdError(f"{f.filename}: image {image_ids[bad][0]} maps to row {rows[bad][0]}, "
                       f"file has {n}")
    return image_ids, rows


def read_rows(dset: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """``dset[idx]`` for any int64 ``idx``: one covering slice when ``idx`` is nearly contiguous,
    else one slice per run of consecutive rows (h5py fancy indexing is slow and wants sorted
    indices). Memory stays about the size of the result."""
    if idx.size == 0:
        return np.zeros((0, *dset.shape[1:]), dset.dtype)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    if hi - lo <= idx.size + 64:
        return dset[lo:hi][idx - lo]
    unique = np.unique(idx)
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    starts, stops = unique[np.r_[0, breaks]], unique[np.r_[breaks - 1, len(unique) - 1]] + 1
    flat = np.concatenate([dset[a:b] for a, b in zip(starts, stops, strict=True)])
    return flat[np.searchsorted(unique, idx)]


def geometry(boxes: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(B, K, 6) ``(x1/W, y1/H, x2/W, y2/H, (x2-x1)/W, (y2-y1)/H)`` of xyxy ``boxes`` (B, K, 4)
    in images of ``size`` (B, 2) = (W, H)."""
    wh = np.maximum(size.astype(np.float32), 1.0)[:, None, :]  # (B, 1, 2)
    x1y1, x2y2 = boxes[..., :2] / wh, boxes[..., 2:] / wh
    return np.concatenate([x1y1, x2y2, x2y2 - x1y1], axis=-1).astype(np.float32)


def size_from_geometry(boxes: np.ndarray, geom: np.ndarray) -> np.ndarray:
    """(B, 2) image (W, H) recovered from each image's widest / tallest box and its geometry."""
    out = np.zeros((len(boxes), 2), dtype=np.int32)
    for axis in (0, 1):
        extent = boxes[..., 2 + axis] - boxes[..., axis]  # (B, K) box width / height in pixels
        scaled = geom[..., 4 + axis]  # (B, K) the same, divided by W / H
        best = np.argmax(scaled, axis=1)
        pick = np.arange(len(boxes))
        with np.errstate(divide="ignore", invalid="ignore"):
            size = np.where(scaled[pick, best] > 0, extent[pick, best] / scaled[pick, best], 0)
        out[:, axis] = np.rint(size)
    return out


class H5Regions:
    """Padded per-image arrays from an open bottom-up-attention HDF5 file (either layout)."""

    def __init__(self, f: h5py.File):
        self.f = f
        self.flat = "pos_boxes" in f
        missing = [k for k in ("image_features", "image_bb") if k not in f]
        if missing:
            raise PkdError(f"{f.filename}: missing datasets {missing}")
        self.has_geom = "spatial_features" in f and f["spatial_features"].shape[-1] == 6
        if not self.has_geom and not ("image_w" in f and "image_h" in f):
            raise PkdError(f"{f.filename}: needs spatial_features (.., 6) or image_w + image_h")
        self.feature_dim = int(f["image_features"].shape[-1])
        if self.flat:
            pos = f["pos_boxes"][:].astype(np.int64)  # (N, 2) [start, stop) of each image
            self.starts, self.counts = pos[:, 0], pos[:, 1] - pos[:, 0]
            self.max_regions = int(self.counts.max(initial=1))
        else:
            n, self.max_regions = f["image_features"].shape[:2]
            self.counts = (f["num_boxes"][:].astype(np.int64) if "num_boxes" in f
                           else np.full(n, self.max_regions))

    def _padded(self, name: str, rows: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
        """Dataset ``name`` for ``rows`` as (B, K, c) ``dtype``, zero beyond each image's count."""
        dset = self.f[name]
        out = np.zeros((len(rows), self.max_regions, dset.shape[-1]), dtype=dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf: see failures()
            if self.flat:
                counts = self.counts[rows]
                idx = np.concatenate([np.arange(s, s + c)
                                      for s, c in zip(self.starts[rows], counts, strict=True)])
                out[valid] = read_rows(dset, idx)  # row-major mask order = concatenation order
            else:
                out[valid] = read_rows(dset, rows)[valid]
        return out

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The ``regions`` store arrays of HDF5 ``rows`` (B,), in store dtypes."""
        counts = np.minimum(self.counts[rows], self.max_regions)
        valid = np.arange(self.max_regions)[None, :] < counts[:, None]  # (B, K)
        boxes = self._padded("image_bb", rows, valid, "float32")  # (B, K, 4)
        geom = self._padded("spatial_features", rows, valid, "float32") if self.has_geom else None
        if "image_w" in self.f and "image_h" in self.f:
            size = np.stack([read_rows(self.f["image_w"], rows),
                             read_rows(self.f["image_h"], rows)], 1)
        else:
            size = size_from_geometry(boxes, geom)
        size = size.astype(np.int32)  # (B, 2) = (W, H)
        if geom is None:
            geom = geometry(boxes, size) * valid[..., None]
        return {
            "boxes": boxes,
            "region_features": self._padded("image_features", rows, valid, "float16"),  # (B, K, d)
            "region_geometry": geom,
            "num_regions": counts.astype(np.int32),
            "image_size": size,
        }

    def failures(self, rows: np.ndarray, image_ids: np.ndarray, features: np.ndarray,
                 where: str) -> list[Failure]:
        """Failures of the images whose float16 ``features`` (B, K, d) of HDF5 ``rows`` are not
        finite, saying whether the file holds inf / nan or finite values beyond float16."""
        return [Failure(int(image_ids[p]), where,
                        float16_reason(self._source_features(int(rows[p])), "image_features",
                                       "HDF5"))
                for p in np.flatnonzero(~finite_rows(features))]

    def _source_features(self, row: int) -> np.ndarray:
        """The valid ``image_features`` of HDF5 row ``row`` as stored in the file."""
        count = int(min(self.counts[row], self.max_regions))
        if self.flat:
            start = int(self.starts[row])
            return self.f["image_features"][start:start + count]
        return self.f["image_features"][row, :count]

    def spec(self, source: Path, items_per_chunk: int, items_per_shard: int) -> StoreSpec:
        k, d = self.max_regions, self.feature_dim
        stat = source.stat()
        origin = {"source": str(source.resolve()), "bytes": stat.st_size,
                  "layout": "flat" if self.flat else "fixed"}
        producer = {"model": f"import-h5:{source.name}", **origin, "dtype": "float16",
                    "source_dtype": str(self.f["image_features"].dtype),
                    "config_hash": config_hash(origin)}
        return StoreSpec("regions", "image_id", region_arrays(k, d), producer,
                         {"feature_dim": d, "max_regions": k}, items_per_chunk, items_per_shard)


def region_arrays(k: int, d: int, extra: tuple[ArraySpec, ...] = ()) -> tuple[ArraySpec, ...]:
    """The arrays of an imported ``regions`` store: K boxes of d-dim float16 features
    (+ ``extra``)."""
    return (ArraySpec("boxes", (k, 4), "float32"), ArraySpec("region_features", (k, d), "float16"),
            ArraySpec("region_geometry", (k, 6), "float32"), ArraySpec("num_regions", (), "int32"),
            ArraySpec("image_size", (2,), "int32"), *extra)


def float16_reason(source: np.ndarray, name: str, where: str) -> str:
    """Why features ``source`` (as in the file) fail in float16: values beyond ±65504, or nan /
    inf already in the ``where`` file ("HDF5", "TSV")."""
    if np.isfinite(source).all():
        return (f"overflows float16: {name} up to {np.abs(source).max():.6g}, "
                f"float16 holds ±{FLOAT16_MAX:.0f}")
    what = "nan" if np.isnan(source).any() else "inf"
    return f"non-finite features: {name} holds {what} in the {where} file"


def import_h5(h5_path: str | Path, out: str | Path, *,
              ids: str | Path | Sequence[int] | None = None,
              imgid2idx: str | Path | None = None, items_per_chunk: int = 16,
              items_per_shard: int = 512, overwrite: bool = False) -> Path:
    """Write the ``regions`` store ``out`` from the HDF5 file ``h5_path``; returns ``out``.

    ``ids``: JSON file (or list) of image ids, ``imgid2idx``: pickle — see the module docstring.
    Resumes an interrupted import; a store from another source file is refused (StoreMismatch).
    Images with non-finite float16 features are recorded as failed (``FeatureStore.failures``).
    """
    h5_path, out = Path(h5_path), Path(out)
    try:
        f = h5py.File(h5_path, "r")
    except OSError as err:
        raise PkdError(f"{h5_path}: cannot open as HDF5 ({err})") from None
    with f:
        image_ids, h5_rows = image_rows(f, ids, imgid2idx)
        source = H5Regions(f)
        spec = source.spec(h5_path, items_per_chunk, items_per_shard)
        row_of = dict(zip(image_ids.tolist(), h5_rows.tolist(), strict=True))
        with StoreWriter(out, spec, image_ids, overwrite=overwrite) as writer:
            pending = writer.pending()
            for k in track(pending, total=len(pending), description=f"import {h5_path.name}"):
                shard_ids = writer.shard_ids(k)
                rows = np.array([row_of[i] for i in shard_ids.tolist()], dtype=np.int64)
                arrays = source.read(rows)
                failed = source.failures(rows, shard_ids, arrays["region_features"], str(h5_path))
                writer.write_shard(k, arrays, failed)
    return out
