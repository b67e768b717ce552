"""Pass 2 of the TSV import: padded shard arrays of the ``regions`` store, read from the indexed
lines of an open TSV file (and its predictions.tsv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pkd.stores.h5import import float16_reason, geometry, region_arrays
from pkd.stores.schema import ArraySpec, Failure, StoreSpec, config_hash
from pkd.stores.tsv_decode import EXTRA, decode_line
from pkd.stores.tsv_scan import RowError, TsvIndex, scan_predictions
from pkd.stores.writer import finite_rows


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
            self.extra = [("region_scores", "float32")] + (
                [("region_labels", "int32")] if labels else [])
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
        origin = {"source": str(self.path.resolve()), "bytes": stat.st_size,
                  "layout": self.index.layout}
        if self.predictions:
            origin |= {"predictions": str(self.predictions.resolve()),
                       "predictions_bytes": self.predictions.stat().st_size,
                       "labels": config_hash(self.labels) if self.labels else None}
        origin |= self.digests
        producer = {"model": f"import-tsv:{self.path.name}", **origin, "dtype": "float16",
                    "source_dtype": "float32", "config_hash": config_hash(origin)}
        extra = tuple(ArraySpec(name, (self.k,), dtype) for name, dtype in self.extra)
        return StoreSpec("regions", "image_id", region_arrays(self.k, self.d, extra), producer,
                         {"feature_dim": self.d, "max_regions": self.k}, items_per_chunk,
                         items_per_shard)

    def read(self, ids: np.ndarray,
             names: list[str]) -> tuple[dict[str, np.ndarray], list[Failure]]:
        """The store arrays of images ``ids`` (B,) and the failures among them."""
        b, k = len(ids), self.k
        out = {"boxes": np.zeros((b, k, 4), np.float32),
               "region_features": np.zeros((b, k, self.d), np.float16),
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
