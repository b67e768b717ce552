"""The image processor's work split in two: resize + crop on the host (uint8), rescale +
normalize on the device — the same pixels as the Hugging Face PIL processor, bit for bit.

A ``*ImageProcessorPil`` (CLIP, BLIP) makes ``pixel_values`` as (``transformers`` 5):

1. resize with PIL (``resample``) to ``size``: fixed ``(height, width)``, or the shortest edge
   to ``s`` with the long edge ``int(s * long / short)``;
2. center crop to ``crop_size``: ``top = (H - h) // 2``, ``left = (W - w) // 2``;
3. rescale: ``float32(float64(x) * rescale_factor)``;
4. normalize: ``(x - mean) / std`` in float32, per channel.

Steps 3-4 on float32 images are ~2/3 of the processor's time on the host (4x the bytes of the
uint8 image); here the host does 1-2 and hands a uint8 batch (B, 3, h, w) to the device, which
does 3-4 with the same float64 / float32 operations (IEEE, correctly rounded on CPU and CUDA),
so the model sees the same numbers (``tests/test_pixels.py`` compares them exactly). A processor
this does not cover (padding, a crop larger than the resize, another backend) gets ``None`` from
:meth:`PixelPlan.of`; :class:`pkd.pipeline.foundation.FoundationModel` then keeps calling it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def _size(d, key: str):
    return d.get(key) if d is not None and hasattr(d, "get") else None


@dataclass(frozen=True)
class PixelPlan:
    shortest: int | None  # resize the shortest edge to this ...
    fixed: tuple[int, int] | None  # ... or to this (height, width)
    resample: int  # PIL resampling filter
    crop: tuple[int, int] | None  # center crop (height, width)
    scale: float | None  # rescale factor (None: no rescale)
    mean: tuple[float, ...] | None  # normalize (None: no normalize)
    std: tuple[float, ...] | None

    @classmethod
    def of(cls, processor) -> PixelPlan | None:
        """The plan of ``processor``, or None when it does something this does not copy."""
        p = processor
        if not type(p).__name__.endswith("ImageProcessorPil") or not getattr(p, "do_resize", 0):
            return None
        if getattr(p, "do_pad", None) or _size(p.size, "longest_edge") \
                or _size(p.size, "max_height") or _size(p.size, "min_pixels"):
            return None
        shortest = _size(p.size, "shortest_edge")
        h, w = _size(p.size, "height"), _size(p.size, "width")
        fixed = (int(h), int(w)) if h and w and not shortest else None
        if not shortest and fixed is None:
            return None
        crop = None
        if getattr(p, "do_center_crop", None):
            ch, cw = _size(p.crop_size, "height"), _size(p.crop_size, "width")
            if not ch or not cw:
                return None
            crop = (int(ch), int(cw))
            if max(crop) > (shortest or min(fixed)):  # the processor would pad: not copied
                return None
        scale = float(p.rescale_factor) if getattr(p, "do_rescale", None) else None
        norm = getattr(p, "do_normalize", None)
        mean = tuple(float(m) for m in p.image_mean) if norm else None
        std = tuple(float(s) for s in p.image_std) if norm else None
        if norm and (len(mean) != 3 or len(std) != 3):
            return None
        return cls(int(shortest) if shortest else None, fixed, int(p.resample), crop, scale,
                   mean, std)

    def host(self, images: list[Image.Image]) -> torch.Tensor:
        """Steps 1-2 (resize, crop) of RGB images: a uint8 batch (B, 3, h, w)."""
        out = []
        for img in images:
            w, h = img.size
            if self.fixed is not None:
                th, tw = self.fixed
            else:
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = self.shortest, int(self.shortest * long / short)
                th, tw = (new_long, new_short) if w <= h else (new_short, new_long)
            a = np.asarray(img.resize((tw, th), resample=self.resample))  # (h, w, 3) uint8
            if self.crop is not None:
                ch, cw = self.crop
                top, left = (th - ch) // 2, (tw - cw) // 2
                a = a[top:top + ch, left:left + cw]
            out.append(a)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()

    def device(self, pixels: torch.Tensor) -> torch.Tensor:
        """Steps 3-4 (rescale, normalize) of a uint8 batch, wherever it is: float32 pixels."""
        x = pixels.to(torch.float64)
        x = (x * self.scale if self.scale is not None else x).to(torch.float32)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x
