"""The split image processor (resize + crop on the host, rescale + normalize on the device)
gives exactly the Hugging Face processor's pixels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pkd.pipeline.pixels import PixelPlan


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (48, 64), (100, 300), (301, 99), (64, 64), (640, 480), (33, 70)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_split_processor_equals_the_processor_bit_for_bit(model_dir):
    from pkd.pipeline.foundation import FoundationSpec, load_foundation

    fm = load_foundation(FoundationSpec(str(model_dir)))
    plan = PixelPlan.of(fm.image_processor)
    assert plan is not None
    for img in images():  # one at a time: sizes differ before the resize
        ref = fm.image_processor(images=[img], return_tensors="pt")["pixel_values"]
        host = plan.host([img])
        assert host.dtype == torch.uint8
        got = plan.device(host)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert torch.equal(got, ref), (img.size, (got - ref).abs().max())


def test_processors_it_does_not_copy_get_none():
    class OtherImageProcessor:  # not the PIL backend
        do_resize = True

    assert PixelPlan.of(OtherImageProcessor()) is None
