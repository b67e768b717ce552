"""Cost of the source fingerprint of ``pkd stores import-tsv`` (sha256 of the whole TSV).

Writes one ``--mb`` MB TSV in LXMERT's layout (36 boxes x 2048-d float32 features per line, about
0.4 MB a line, as ``train2014_obj36.tsv``) into a temporary folder, then times, best of
``--repeat`` interleaved rounds:

* ``file_sha256`` (what every import and resume now pays), from the page cache;
* the same after ``posix_fadvise(DONTNEED)`` dropped the file's pages (a read from the disk; a
  virtual disk may still be cached by its host);
* pass 1's :func:`pkd.stores.tsv_scan.scan` of the same file (the read the import already did).

Run: ``python benchmarks/bench_tsv_fingerprint.py [--mb 200 --repeat 3]``.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
from pathlib import Path

import numpy as np
from common import machine, print_table, timed

from pkd.hf.fingerprint import file_sha256
from pkd.stores.tsv_scan import scan


def write_tsv(path: Path, mb: int) -> int:
    """``mb`` MB (10^6 bytes) of LXMERT lines; returns the number of lines."""
    rng = np.random.default_rng(0)
    features = base64.b64encode(rng.normal(size=(36, 2048)).astype(np.float32)).decode()
    boxes = base64.b64encode(np.tile(np.float32([1, 1, 50, 50]), (36, 1))).decode()
    ints, floats = (base64.b64encode(np.zeros(36, t)).decode() for t in (np.int64, np.float32))
    n = 0
    with path.open("w") as f:
        while f.tell() < mb * 1_000_000:
            f.write("\t".join([f"COCO_train2014_{n:012d}", "480", "640", ints, floats, ints, floats,
                               "36", boxes, features]) + "\n")
            n += 1
    return n


def cold_sha256(path: Path) -> str:
    """``file_sha256`` after asking the kernel to drop the file's cached pages."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return file_sha256(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the fastest is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pkd-bench-tsv-") as tmp:
        path = Path(tmp) / "train2014_obj36.tsv"
        lines = write_tsv(path, args.mb)
        size_mb = path.stat().st_size / 1e6
        variants = {"file_sha256 (page cache)": lambda: file_sha256(path),
                    "scan, pass 1 (page cache)": lambda: scan(path)}
        if hasattr(os, "posix_fadvise"):
            variants["file_sha256, page cache dropped"] = lambda: cold_sha256(path)
        best = {name: float("inf") for name in variants}
        for _ in range(args.repeat):
            for name, fn in variants.items():
                best[name] = min(best[name], timed(fn)[0])
    print(f"bench_tsv_fingerprint: one {size_mb:.0f} MB LXMERT TSV ({lines} lines), "
          f"best of {args.repeat} rounds")
    print(machine())
    print_table([{"what": name, "seconds": s, "MB/s": size_mb / s} for name, s in best.items()],
                "what")


if __name__ == "__main__":
    main()
