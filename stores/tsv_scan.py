"""Pass 1 of the TSV import (:mod:`pkd.stores.tsvimport`): one sequential read of a TSV file
for its layout and, per line, the image id, byte offset, line number and ``num_boxes``; the
index cached beside the store, so a resumed import skips the read."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pkd.errors import PkdError
from pkd.fsio import write_json

LAYOUTS = {10: "lxmert", 6: "bottomup", 3: "vinvl"}  # column count -> layout
# column of (image id, height, width, num_boxes, boxes, features) per layout; vinvl: boxes and
# sizes come from predictions.tsv
COLUMNS = {"lxmert": (0, 1, 2, 7, 8, 9), "bottomup": (0, 2, 1, 3, 4, 5),
           "vinvl": (0, None, None, 1, None, 2)}
VINVL_GEOMETRY = 6  # trailing dims of a VinVL feature: the 6-d box geometry
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


def _lines(f) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, line)`` of each non-blank line of the binary file ``f``."""
    offset = 0
    for number, line in enumerate(f, start=1):
        start, offset = offset, offset + len(line)
        if line.strip():
            yield number, start, line


def scan(path: Path) -> TsvIndex:
    """Pass 1: one sequential read of ``path`` (module docstring)."""
    ids, offsets, lines, skipped = [], [], [], []
    layout, max_regions, dim, seen = None, 1, 0, False
    with open(path, "rb") as f:
        for number, start, line in _lines(f):
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
                dim = (_b64_bytes(fields[c[5]]) // (4 * k)
                       - (VINVL_GEOMETRY if layout == "vinvl" else 0))
    if not seen:
        raise PkdError(f"{path}: no lines (empty or blank file)")
    if layout is None or not ids:
        raise PkdError(f"{path}: no line in a known TSV layout ({', '.join(LAYOUTS.values())})")
    if not dim:
        raise PkdError(f"{path}: no line whose features divide into num_boxes rows")
    return TsvIndex(layout, np.array(ids, np.int64), np.array(offsets, np.int64),
                    np.array(lines, np.int64), max_regions, dim, skipped)


def check_unique(path: Path, index: TsvIndex) -> None:
    order = np.argsort(index.ids, kind="stable")
    same = np.flatnonzero(np.diff(index.ids[order]) == 0)
    if same.size:
        a, b = index.lines[order[same[0]]], index.lines[order[same[0] + 1]]
        raise PkdError(f"{path}: image {index.ids[order[same[0]]]} is on line {a} and line {b}")


def scan_predictions(path: Path) -> dict[int, int]:
    """``{image_id: byte offset}`` of a VinVL predictions.tsv (one sequential read)."""
    out: dict[int, int] = {}
    line_of: dict[int, int] = {}
    seen = False
    with open(path, "rb") as f:
        for number, start, line in _lines(f):
            seen = True
            try:
                image_id = _image_id(line.split(b"\t", 1)[0])
            except RowError:
                continue  # its features line fails: no prediction
            if image_id in out:
                raise PkdError(f"{path}: image {image_id} is on line {line_of[image_id]} and "
                               f"line {number}")
            out[image_id], line_of[image_id] = start, number
    if not seen:
        raise PkdError(f"{path}: no lines (empty or blank file)")
    return out


def load_index(out: Path, source: Path) -> TsvIndex | None:
    """The cached pass-1 index of ``source`` in ``out``, or None when absent or stale."""
    path = out / INDEX_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        stat = source.stat()
        if meta["bytes"] != stat.st_size or meta["mtime_ns"] != stat.st_mtime_ns:
            return None
        skipped = (json.loads((out / SKIPPED_FILE).read_text())
                   if (out / SKIPPED_FILE).is_file() else [])
        return TsvIndex(meta["layout"], z["ids"], z["offsets"], z["lines"], meta["max_regions"],
                        meta["feature_dim"], skipped)


def save_index(out: Path, source: Path, index: TsvIndex) -> None:
    stat = source.stat()
    meta = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "layout": index.layout,
            "max_regions": index.max_regions, "feature_dim": index.feature_dim}
    (out / "_pkd").mkdir(parents=True, exist_ok=True)
    np.savez(out / INDEX_FILE, meta=np.array(json.dumps(meta)), ids=index.ids,
             offsets=index.offsets, lines=index.lines)
    write_json(out / SKIPPED_FILE, index.skipped, indent=1)
