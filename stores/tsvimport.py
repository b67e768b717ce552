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

Streaming: pass 1 (:mod:`pkd.stores.tsv_scan`) scans the file once, line by line, for each
line's id, byte offset, line number and ``num_boxes`` (cached in ``OUT/_pkd/tsv_index.npz`` with
the file's size and mtime, so a resumed import skips it); pass 2
(:class:`pkd.stores.tsv_regions.TsvRegions`, lines decoded by :mod:`pkd.stores.tsv_decode`)
writes shard by shard, seeking to the lines of the shard's images. Memory stays about one shard
of decoded features; the file is never read whole.

Bad lines: a line whose id or column count cannot be read is skipped and listed with its line
number in ``OUT/_pkd/tsv_skipped.json``; a line that fails to decode (bad base64, wrong sizes,
non-finite or beyond-float16 features) or whose geometry is impossible
(:func:`pkd.stores.tsv_decode.check_boxes`: an image size that is not positive, a box upside
down or outside the image by more than ``BOX_TOLERANCE`` pixels, as when ``img_h`` / ``img_w``
are swapped) becomes a failed item (``ok = 0``, its reason starts with ``line N:``), as at
``import-h5``; the CLI prints one line per failed image. Two lines with one image id are a
PkdError; so are an empty (or blank) file and an import in which no image decodes (the store is
kept for ``pkd stores info``).

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

import math
from pathlib import Path

from pkd.errors import PkdError
from pkd.hf.fingerprint import file_sha256
from pkd.progress import track
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import read_attrs
from pkd.stores.tsv_decode import load_labelmap
from pkd.stores.tsv_regions import TsvRegions
from pkd.stores.tsv_scan import TsvIndex, check_unique, load_index, save_index, scan
from pkd.stores.writer import StoreWriter


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
    index = None if overwrite else load_index(out, tsv_path)
    index = index or scan(tsv_path)
    check_unique(tsv_path, index)
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
    for name, path, key in (("source", tsv_path, "sha256"),
                            ("predictions", predictions, "predictions_sha256")):
        if path is None or name not in producer:
            continue
        recorded = producer.get(key)
        if recorded is None:
            raise PkdError(f"{out}: was imported from {producer[name]} before imports recorded the "
                           f"source's sha256: cannot tell whether {path} changed (re-import with "
                           "--overwrite)")
        if recorded != digests[key]:
            raise PkdError(f"{out}: was imported from {producer[name]} with sha256 "
                           f"{recorded[:12]}…, {path} now has {digests[key][:12]}… (re-import "
                           "with --overwrite)")


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
        save_index(out, source.path, index)
        pending = writer.pending()
        for k in track(pending, total=len(pending), description=f"import {source.path.name}"):
            shard_ids = writer.shard_ids(k)
            arrays, failed = source.read(shard_ids, spec.names)
            writer.write_shard(k, arrays, failed)
