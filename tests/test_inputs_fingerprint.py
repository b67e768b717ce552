"""What a store was made from is recorded and checked: a resumed extraction refuses images that
changed under it, a store re-extracted from other images with the same ids is refused by the run
trained on the old one, and the batch size (it changes numbers) is part of the provenance."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pkd.data.inputs_digest import images_digest, texts_digest
from pkd.errors import StoreMismatch
from pkd.stores import FeatureStore

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import pkd  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, ... (session fixtures)

ROLES = ("regions", "foundation_image", "foundation_text", "teacher_regions", "teacher",
         "predicted")


def regions(data, images, out, *extra) -> int:
    """Regions of the 8 val images, 4 per shard, ``given:`` boxes pooled by the tiny ResNet."""
    return pkd("extract", "regions", "--data", data, "--images", images, "--splits", "val",
               "--out", out, "--items-per-shard", "4", "--detector",
               f"given:{data / 'boxes.json'}", "--max-boxes", "8", *extra)


@pytest.fixture()
def images(synth_data, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(synth_data / "images", folder)
    return folder


def repaint(folder, image_id: int) -> None:
    """Another picture under the same file name and id (one pixel changed)."""
    path = folder / f"{image_id:012d}.png"
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)


def stores_of(store: FeatureStore) -> SimpleNamespace:
    return SimpleNamespace(**{role: store if role == "regions" else None for role in ROLES})


def test_digests_change_with_any_byte_and_follow_the_order(tmp_path):
    a, b = tmp_path / "1.png", tmp_path / "2.png"
    a.write_bytes(b"abc")
    b.write_bytes(b"abd")
    one = images_digest([(1, a), (2, b)])
    assert one != images_digest([(2, b), (1, a)])
    b.write_bytes(b"abe")  # same size, other content
    assert images_digest([(1, a), (2, b)]) != one
    assert images_digest([(1, a), (2, None)]) != one  # a missing file counts
    assert texts_digest([(1, "a b")]) != texts_digest([(1, "a  b")])


def test_shards_record_their_inputs_and_a_resume_refuses_changed_images(
        synth_data, images, tiny_resnet_dir, tmp_path, capsys):
    out = tmp_path / "regions.zarr"
    args = ("--backbone", tiny_resnet_dir, "--threads", "1")
    assert regions(synth_data, images, out, *args) == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "_pkd" / "done").iterdir())]
    assert len(records) == 2 and all(set(r["inputs"]) == {"sha256", "stat"} for r in records)
    store = FeatureStore.open(out)
    first = store.inputs_sha256
    assert first is not None

    (out / "_pkd" / "done" / "shard-000001.json").unlink()  # as if killed before shard 1 ended
    repaint(images, int(store.ids[0]))  # an image of the done shard 0 changes meanwhile
    capsys.readouterr()
    assert regions(synth_data, images, out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: shard 0 was extracted from other inputs")
    assert "--overwrite" in err and err.count("\n") == 1

    assert regions(synth_data, images, out, *args, "--overwrite") == 0
    again = FeatureStore.open(out)
    assert again.complete and list(again.ids) == list(store.ids)
    assert again.inputs_sha256 != first  # same ids, same options, other pixels


def test_a_run_refuses_a_store_re_extracted_from_other_images(
        synth_data, images, tiny_resnet_dir, tmp_path):
    from pkd.train.store_checks import check_provenance

    out, run = tmp_path / "regions.zarr", tmp_path / "run"
    run.mkdir()
    args = ("--backbone", tiny_resnet_dir, "--threads", "1")
    assert regions(synth_data, images, out, *args) == 0
    check_provenance(run, stores_of(FeatureStore.open(out)))  # "trained" on it: recorded
    assert "inputs_sha256" in json.loads((run / "stores.json").read_text())["regions"]
    check_provenance(run, stores_of(FeatureStore.open(out)))  # the same store: accepted

    repaint(images, int(FeatureStore.open(out).ids[-1]))
    assert regions(synth_data, images, out, *args, "--overwrite") == 0
    with pytest.raises(StoreMismatch, match="made from other inputs than this run was trained"):
        check_provenance(run, stores_of(FeatureStore.open(out)))


def test_resuming_with_another_batch_size_is_refused(synth_data, images, tiny_resnet_dir,
                                                     tmp_path, capsys):
    out = tmp_path / "regions.zarr"
    args = ("--backbone", tiny_resnet_dir, "--threads", "1")
    assert regions(synth_data, images, out, *args, "--batch-size", "4") == 0
    assert FeatureStore.open(out).spec.producer["batch_size"] == 4
    (out / "_pkd" / "done" / "shard-000001.json").unlink()
    capsys.readouterr()
    assert regions(synth_data, images, out, *args, "--batch-size", "1") == 2
    err = capsys.readouterr().err
    assert "producer.batch_size is 4, expected 1" in err and err.count("\n") == 1


def test_probe_refuses_another_data_sets_boxes_or_images(synth_data, images, tiny_resnet_dir,
                                                        tmp_path, capsys):
    out = tmp_path / "regions.zarr"
    assert regions(synth_data, images, out, "--backbone", tiny_resnet_dir, "--threads", "1") == 0
    other = tmp_path / "other"
    other.mkdir()
    for name in ("boxes.json", *(p.name for p in synth_data.glob("synth_val_*.json"))):
        shutil.copy(synth_data / name, other / name)
    shutil.copytree(images, other / "images")
    probe = ["stores", "probe", str(out), "--data", str(other), "--train-split", "val",
             "--eval-split", "val"]
    capsys.readouterr()
    assert pkd(*probe) == 0  # the same inputs: probed
    capsys.readouterr()

    repaint(other / "images", int(FeatureStore.open(out).ids[5]))
    assert pkd(*probe) == 2
    err = capsys.readouterr().err
    assert "shard 1 was made from other images than those in" in err and err.count("\n") == 1

    boxes = json.loads((other / "boxes.json").read_text())
    boxes["annotations"][0]["bbox"][0] += 1.0  # same image ids, another box
    (other / "boxes.json").write_text(json.dumps(boxes))
    assert pkd(*probe) == 2
    err = capsys.readouterr().err
    assert "made from a boxes file with sha256" in err and err.count("\n") == 1
