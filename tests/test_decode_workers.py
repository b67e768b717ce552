"""Images decoded and preprocessed by worker threads, JPEGs decoded at a reduced scale: the
same rows in the same order whatever the number of workers, errors at their item."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pkd.data.images import load_rgb
from pkd.prefetch import prefetch_pool

torch.set_num_threads(1)


def test_prefetch_pool_keeps_the_order_and_uses_several_threads():
    names = set()

    def slow(i: int) -> int:
        names.add(threading.current_thread().name)
        time.sleep(0.01 * (i % 3))
        return i * i

    assert list(prefetch_pool(slow, range(20), workers=4)) == [i * i for i in range(20)]
    assert len(names) > 1 and all(n.startswith("pkd-decode") for n in names)


def test_prefetch_pool_raises_at_the_failing_item():
    def fn(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    got = []
    with pytest.raises(ValueError, match="item 5"):
        for x in prefetch_pool(fn, range(10), workers=3):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_jpeg_draft_decodes_at_the_smallest_scale_still_covering_the_size(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "1.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "2.png")
    assert load_rgb(tmp_path / "1.jpg").size == (640, 480)
    assert load_rgb(tmp_path / "1.jpg", draft=(224, 224)).size == (320, 240)  # 1/2: >= 224
    assert load_rgb(tmp_path / "1.jpg", draft=(100, 100)).size == (160, 120)  # 1/4
    assert load_rgb(tmp_path / "2.png", draft=(224, 224)).size == (640, 480)  # PNG: full


def test_foundation_rows_do_not_depend_on_the_decode_workers(synth_data, tiny_clip_dir):
    from pkd.pipeline.foundation import FoundationSpec, load_foundation
    from pkd.pipeline.sources import SourceConfig, load_source
    from pkd.pipeline.stages import FoundationImageStage

    fm = load_foundation(FoundationSpec(str(tiny_clip_dir)))
    source = load_source(SourceConfig(root=synth_data, splits=("val", "test")))
    ids = source.image_ids
    one, _ = FoundationImageStage(fm, source, 4, {}, workers=1).run(ids)
    three, _ = FoundationImageStage(fm, source, 4, {}, workers=3, draft=True).run(ids)
    for name in one:  # PNGs: draft changes nothing, workers change nothing
        np.testing.assert_array_equal(one[name], three[name])


pytest_plugins = ["fixtures_extract"]  # synth_data, tiny_clip_dir (session fixtures)
