"""Image files: find them by image id, decode them to RGB with a clear reason when that fails.

An image folder maps ``image_id -> file`` through the trailing digits of each file stem, so COCO
names (``COCO_val2014_000000000042.jpg``), COCO 2017 names (``000000000042.jpg``) and plain ids
(``42.png``) all work. Two files with the same id make the folder ambiguous and are refused.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pkd.errors import PkdError

# Pillow's decompression-bomb threshold: larger images are refused undecoded
MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


class ImageError(PkdError):
    """An image file that cannot be used: missing, empty, truncated or not an image."""


@dataclass
class ImageIndex:
    folder: Path  # the scanned folder
    paths: dict[int, Path] = field(default_factory=dict)  # image_id -> file

    @classmethod
    def scan(cls, folder: str | Path) -> ImageIndex:
        """Index the image files directly in ``folder`` (files without trailing digits skipped)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise PkdError(f"{folder}: image folder not found")
        paths: dict[int, Path] = {}
        for path in sorted(folder.iterdir()):
            match = _TRAILING_DIGITS.search(path.stem)
            if path.suffix.lower() not in IMAGE_SUFFIXES or match is None or not path.is_file():
                continue
            image_id = int(match.group(1))
            if image_id in paths:
                raise PkdError(f"{folder}: files {paths[image_id].name} and {path.name} "
                               f"both have image id {image_id}")
            paths[image_id] = path
        return cls(folder, paths)

    def get(self, image_id: int) -> Path | None:
        """The file of ``image_id``, None when the folder has none."""
        return self.paths.get(int(image_id))

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self.paths


def coco_path(root: str | Path, split: str, image_id: int) -> Path:
    """``ROOT/val2014/COCO_val2014_000000000042.jpg``; 2017 splits: ``ROOT/val2017/0...42.jpg``."""
    name = f"{image_id:012d}.jpg"
    if not split.endswith("2017"):
        name = f"COCO_{split}_{name}"
    return Path(root) / split / name


def _to_rgb(img: Image.Image) -> Image.Image:
    """A new RGB image; 16/32-bit grey is scaled to 8 bits instead of clipped."""
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img).astype(np.int64)  # (H, W)
        if grey.size and grey.max() > 255:  # 16-bit range -> 8 bits
            grey = grey * 255 // 65535
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning
    return img.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS,
             draft: tuple[int, int] | None = None, data: bytes | None = None) -> Image.Image:
    """Decode the whole image (so truncation is caught) and return it in RGB mode.

    ``draft`` (w, h): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, PIL's
    ``draft``) while both sides stay >= ``draft``: ~2-4x less decoding for a model that resizes
    to that size anyway. Other formats ignore it.

    Raises :class:`ImageError` with a one-line reason: missing, empty, not an image, larger than
    ``max_pixels`` (checked from the header, before any pixel is decoded), truncated or corrupt,
    or a mode that cannot be converted. ``data``: the file's bytes, already read (errors still
    name ``path``).
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise ImageError(f"{path}: image file not found")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # the size is checked below, with a one-line error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if data is not None else path)
        with img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: image too large ({img.width}x{img.height} pixels, "
                                 f"more than {max_pixels}); not decoded")
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)  # decode at the smallest scale still >= draft
            img.load()  # full decode: a truncated file fails here, not later
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unknown format)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: image too large ({str(err).split(',')[0]}); "
                         "not decoded") from None
    except (OSError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"{path}: truncated or corrupt image ({reason})") from None
    except ValueError as err:
        raise ImageError(f"{path}: cannot convert to RGB ({err})") from None
