"""The codecs feed benchmark E3 compares (``feed_e3.py``): every candidate for the stores' chunk
codec, its label, the store patched to use one, and a codec timed alone."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from common import timed

CHUNK = 16  # rows per compressed chunk (pkd's RunOptions.items_per_chunk)
SHARD = 512  # rows per shard (RunOptions.items_per_shard)


@dataclass(frozen=True)
class Codec:
    label: str
    zarr: Callable[[], list]  # the bytes-to-bytes codecs of a store chunk (crc32c last)
    raw: Callable[[int], object] | None  # numcodecs codec for an item size, None: no compressor


def codec_label(codecs: list) -> str:
    """``blosc lz4 1 shuffle`` for the compressor of a ``codec()`` list (crc32c left out)."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    parts = []
    for c in codecs:
        if isinstance(c, BloscCodec):
            parts.append(f"blosc {c.cname.value} {c.clevel} {c.shuffle.value}")
        elif isinstance(c, ZstdCodec):
            parts.append(f"zstd {c.level}")
        elif not isinstance(c, Crc32cCodec):
            parts.append(getattr(c, "codec_name", type(c).__name__))
    return " + ".join(parts) or "none"


def codecs() -> list[Codec]:
    """Every compared codec: none, Blosc (lz4 / lz4hc / zstd x clevel 1, 3 x shuffles), zarr's
    Zstd 1 and 3, numcodecs' LZ4 (not in the Zarr v3 spec: readable by zarr-python only)."""
    import numcodecs
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
    from zarr.codecs.numcodecs import LZ4

    # zarr warns on every numcodecs codec it builds (also when reading a store's metadata)
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")

    def lz4():
        return [LZ4(acceleration=1), Crc32cCodec()]

    out = [Codec("none", lambda: [Crc32cCodec()], None)]
    for cname in ("lz4", "lz4hc", "zstd"):
        for clevel in (1, 3):
            for shuffle, number in (("shuffle", 1), ("bitshuffle", 2), ("noshuffle", 0)):
                out.append(Codec(
                    f"blosc {cname} {clevel} {shuffle}",
                    lambda c=cname, lv=clevel, s=shuffle: [
                        BloscCodec(cname=c, clevel=lv, shuffle=s), Crc32cCodec()],
                    lambda size, c=cname, lv=clevel, s=number: numcodecs.Blosc(
                        c, lv, s, typesize=size)))
    for level in (1, 3):
        out.append(Codec(f"zstd {level}", lambda lv=level: [ZstdCodec(level=lv), Crc32cCodec()],
                         lambda size, lv=level: numcodecs.Zstd(level=lv)))
    out.append(Codec("numcodecs.lz4", lz4, lambda size: numcodecs.LZ4(acceleration=1)))
    return out


OLD_DEFAULT = "blosc zstd 3 shuffle"  # codec() of pkd before issue 32's E3


@contextmanager
def store_codec(make: Callable[[], list]):
    """Stores created inside use ``make()`` as their chunk codecs (``writer.codec`` patched)."""
    from pkd.stores import writer

    saved = writer.codec
    writer.codec = lambda name="lz4": make()  # every store name gets the codec under test
    try:
        yield
    finally:
        writer.codec = saved


def codec_alone(codec, chunks: list[np.ndarray]) -> tuple[float, float, int]:
    """(compress seconds, decompress seconds, compressed bytes) of ``chunks``, one thread."""
    t_enc, encoded = timed(lambda: [codec.encode(c) for c in chunks])
    t_dec, decoded = timed(lambda: [codec.decode(e) for e in encoded])
    assert all(np.array_equal(np.frombuffer(d, np.uint8), c.view(np.uint8).reshape(-1))
               for d, c in zip(decoded, chunks, strict=True))
    return t_enc, t_dec, sum(len(e) for e in encoded)


def region_chunks() -> list[np.ndarray]:
    """Bottom-up-style region features, 64 images in chunks of 16 (float16, ~half zeros)."""
    from bench_loader import region_arrays

    feats = region_arrays(64, 36, 2048)["region_features"]
    return [feats[s:s + CHUNK] for s in range(0, len(feats), CHUNK)]

