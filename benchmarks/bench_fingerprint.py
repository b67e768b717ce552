"""Cost of the whole-file weights fingerprint (``pkd.hf.fingerprint``) on a large checkpoint file.

Writes one ``--mb`` MB file of random bytes (default 500 MB, about a ViT-B/16 CLIP in fp32) into a
temporary folder, then times sha256 over the whole file:

* ``file_sha256`` with read buffers of 1, 4 (pkd's ``BLOCK``) and 8 MiB (``readinto`` one buffer);
* ``hashlib.file_digest`` (the standard library's loop, 256 KiB reads);
* ``weights_sha256`` on the folder (what a model load pays: the file as ``model.safetensors``);
* a plain read of the file without hashing (the I/O part alone);
* ``file_sha256`` after ``posix_fadvise(DONTNEED)`` dropped the file from the page cache (a read
  from the disk, as on the first load of a checkpoint; a virtual disk may still be cached by its
  host).

The file is read once before timing, so the other variants read from the page cache. Variants
are interleaved ``--repeat`` times and the fastest of each is kept (the machine may be shared).
Run:
``python benchmarks/bench_fingerprint.py [--mb 500 --repeat 3]``.

``--inputs N`` instead measures what an extraction pays to fingerprint its images
(:mod:`pkd.data.inputs_digest`): ``N`` 640x480 JPEGs (quality 90, smooth noise: ~100-200 kB,
like COCO), per image: the content digest, the listing digest, and pkd's full decode
(``load_rgb``) for scale; page cache warm.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

from common import machine, print_table, timed

from pkd.hf.fingerprint import BLOCK, file_sha256, weights_sha256

MiB = 1 << 20


def write_file(path: Path, mb: int) -> None:
    """``mb`` MB (10^6 bytes) of random bytes, written in 8 MiB pieces."""
    left = mb * 1_000_000
    with path.open("wb") as f:
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def read_only(path: Path, block: int = BLOCK) -> int:
    buffer = memoryview(bytearray(block))
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cold_sha256(path: Path) -> str:
    """``file_sha256`` after asking the kernel to drop the file's cached pages."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return file_sha256(path)


def write_jpegs(folder: Path, n: int) -> list[tuple[int, Path]]:
    """``n`` 640x480 JPEGs of smooth random colour (sizes like COCO photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        coarse = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        noisy = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.BILINEAR), np.int16)
        noisy = np.clip(noisy + rng.integers(-12, 13, noisy.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:012d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        entries.append((i, path))
    return entries


def bench_inputs(n: int, repeat: int) -> None:
    from pkd.data.images import load_rgb
    from pkd.data.inputs_digest import images_digest

    with tempfile.TemporaryDirectory(prefix="pkd-bench-inputs-") as tmp:
        entries = write_jpegs(Path(tmp), n)
        kb = sum(p.stat().st_size for _, p in entries) / n / 1000
        variants = {
            "content digest (sha256 of each file)": lambda: images_digest(entries, True),
            "listing digest (stat of each file)": lambda: images_digest(entries, False),
            "decode (load_rgb, for scale)": lambda: [load_rgb(p) for _, p in entries],
        }
        best = {name: float("inf") for name in variants}
        for _ in range(repeat):
            for name, fn in variants.items():
                best[name] = min(best[name], timed(fn)[0])
    print(f"bench_fingerprint --inputs: {n} JPEGs of 640x480, {kb:.0f} kB each on average, "
          f"page cache warm, best of {repeat} rounds")
    print(machine())
    decode = best["decode (load_rgb, for scale)"]
    print_table([{"what": name, "ms/img": 1000 * s / n, "x decode": s / decode}
                 for name, s in best.items()], "what")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=500, help="file size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the fastest is kept")
    parser.add_argument("--inputs", type=int, default=0,
                        help="instead: fingerprint cost of N JPEG images against decoding them")
    args = parser.parse_args()
    if args.inputs:
        bench_inputs(args.inputs, args.repeat)
        return
    with tempfile.TemporaryDirectory(prefix="pkd-bench-fp-") as tmp:
        folder = Path(tmp)
        path = folder / "model.safetensors"  # random bytes: weights_sha256 only hashes files
        write_seconds, _ = timed(lambda: write_file(path, args.mb))
        read_only(path)  # warm the page cache: every variant below reads from memory
        variants = {
            "read only (no hash), 4 MiB": lambda: read_only(path),
            "file_sha256, 1 MiB buffer": lambda: file_sha256(path, 1 * MiB),
            "file_sha256, 4 MiB buffer (pkd)": lambda: file_sha256(path, 4 * MiB),
            "file_sha256, 8 MiB buffer": lambda: file_sha256(path, 8 * MiB),
            "hashlib.file_digest (256 KiB)": lambda: file_digest(path),
            "weights_sha256(folder)": lambda: weights_sha256(str(folder), True),
        }
        if hasattr(os, "posix_fadvise"):
            variants["file_sha256, page cache dropped"] = lambda: cold_sha256(path)
        best = {name: float("inf") for name in variants}
        digests = {}
        for _ in range(args.repeat):
            for name, fn in variants.items():
                seconds, result = timed(fn)
                best[name] = min(best[name], seconds)
                digests[name] = result
        hashes = {v for k, v in digests.items() if "sha256," in k or "file_digest" in k}
        assert len(hashes) == 1, "the hashing variants disagree"
    size_mb = args.mb
    print(f"bench_fingerprint: one {size_mb} MB file (random bytes, page cache warm), sha256, "
          f"best of {args.repeat} rounds; writing it took {write_seconds:.2f} s")
    print(machine())
    print_table([{"what": name, "seconds": s, "MB/s": size_mb / s}
                 for name, s in best.items()], "what")


if __name__ == "__main__":
    main()
