"""Session fixtures of the ``pkd extract`` tests: a small synthetic benchmark, extra tiny models,
and helpers to run the CLI in-process and compare stores.

Import the fixtures a test module uses by name (``from fixtures_extract import synth_data``);
pytest then finds them like conftest fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pkd.stores import FeatureStore

SHARD = "16"  # --items-per-shard of the tests: 48 images -> 3 shards, ~107 questions -> 7


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """48 VQA images (24 train, 8 each val / test / test_iid) with ~107 questions, 8 caption
    images with 16 captions, boxes.json; 64 px PNGs."""
    from pkd.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(train_images=24, val_images=8, test_images=8, test_iid_images=8,
                         caption_images=8), out)
    return out


@pytest.fixture(scope="session")
def damaged_images(synth_data, tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """A copy of the image folder with five broken images: ``(folder, {image_id: reason part})``."""
    from bad_files import huge_png

    folder = tmp_path_factory.mktemp("damaged") / "images"
    shutil.copytree(synth_data / "images", folder)
    files = sorted(folder.iterdir())
    missing, empty, garbage, huge, truncated = files[1], files[5], files[20], files[30], files[40]
    missing.unlink()
    empty.write_bytes(b"")
    garbage.write_bytes(b"this is not a png at all" * 10)
    huge.write_bytes(huge_png(30_000, 30_000))  # 900 Mpixel header, refused before decoding
    truncated.write_bytes(truncated.read_bytes()[:120])
    ids = [int(p.stem) for p in (missing, empty, garbage, huge, truncated)]
    return folder, dict(zip(ids, ["no image file", "empty file", "not an image", "too large",
                                  "truncated"], strict=True))


@pytest.fixture(scope="session")
def clean(synth_data, tiny_clip_dir, tmp_path_factory) -> Path:
    """The reference foundation extraction: one uninterrupted in-process run, one torch thread
    (resumed, sliced and distributed runs must write exactly its bytes)."""
    out = tmp_path_factory.mktemp("clean")
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--threads", "1") == 0
    return out


@pytest.fixture(scope="session")
def teacher_resnet_dir(tmp_path_factory) -> Path:
    """A second ``ResNetModel``: the same config as ``tiny_resnet_dir``, other weights (seed 1)."""
    from pkd.hf.tiny_models import build_tiny_resnet

    return build_tiny_resnet(tmp_path_factory.mktemp("teacher_resnet"), seed=1)


@pytest.fixture(scope="session")
def other_clip_dir(tmp_path_factory) -> Path:
    """The tiny CLIP of ``tiny_clip_dir`` built with seed 1: same config, other weights."""
    from pkd.hf.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("other_clip"), seed=1)


def pkd(*args) -> int:
    """Run ``pkd ARGS`` in-process; the exit status."""
    from pkd.cli import main

    return main([str(a) for a in args])


def extract_foundation(data: Path, model: Path, out: Path, *extra) -> int:
    return pkd("extract", "foundation", "--data", data, "--model", model, "--out", out,
               "--items-per-shard", SHARD, *extra)


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store plus ``ids`` and ``ok`` (as written, not masked)."""
    store = FeatureStore.open(path)
    arrays = store.read_range(0, store.n_items)
    import zarr

    arrays["ok"] = zarr.open_array(path / "ok", mode="r")[:]
    arrays["ids"] = store.ids
    return arrays


def assert_same_store(a: Path, b: Path) -> None:
    """Same spec (creation time aside), same bytes in every array, same failures."""
    sa, sb = FeatureStore.open(a), FeatureStore.open(b)
    assert sa.spec == sb.spec
    assert sa.failures == sb.failures and sa.complete and sb.complete
    xa, xb = store_arrays(a), store_arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        assert xa[name].dtype == xb[name].dtype and xa[name].tobytes() == xb[name].tobytes(), name


def done_records(store: Path) -> list[Path]:
    return sorted((store / "_pkd" / "done").glob("shard-*.json"))


def coco_boxes(data: Path) -> dict[int, np.ndarray]:
    """``{image_id: (N, 4) x1y1x2y2}`` of the benchmark's boxes.json, in file order."""
    anns = json.loads((data / "boxes.json").read_text())["annotations"]
    out: dict[int, list] = {}
    for a in anns:
        x, y, w, h = a["bbox"]
        out.setdefault(int(a["image_id"]), []).append([x, y, x + w, y + h])
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
