"""Bad inputs: broken images are recorded and skipped (``--strict`` makes them an exit status),
and a store built by another model is refused with one line naming the store and the field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pkd.stores import FeatureStore

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import done_records, extract_foundation, pkd, store_arrays  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data, ... (session fixtures)


@pytest.fixture(scope="module")
def damaged_run(synth_data, damaged_images, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged_run")
    status = extract_foundation(synth_data, tiny_clip_dir, out, "--images", damaged_images[0],
                                "--splits", "train,val,test,test_iid")
    return out, status


def test_broken_images_are_recorded_and_skipped(damaged_run, damaged_images, synth_data):
    out, status = damaged_run
    assert status == 0  # without --strict
    store = FeatureStore.open(out / "foundation_images.zarr")
    broken = damaged_images[1]
    assert store.complete
    assert {f.id: f.reason for f in store.failures}.keys() == broken.keys()
    for f in store.failures:
        assert broken[f.id] in f.reason, (f, broken[f.id])
    arrays = store_arrays(out / "foundation_images.zarr")
    failed = np.isin(arrays["ids"], list(broken))
    assert (arrays["ok"][failed] == 0).all() and (arrays["ok"][~failed] == 1).all()
    assert not arrays["vision_tokens"][failed].any()  # rows left zero
    assert np.abs(arrays["vision_tokens"][~failed]).sum(axis=(1, 2)).min() > 0
    assert FeatureStore.open(out / "foundation_questions.zarr").ok.all()  # texts unaffected


def test_strict_exit_status_and_stores_info(damaged_run, damaged_images, synth_data,
                                            tiny_clip_dir, capsys):
    out, _ = damaged_run
    capsys.readouterr()
    # a resumed run (every shard done) still knows the failures recorded before
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--images", damaged_images[0],
                              "--strict") == 1
    captured = capsys.readouterr()
    assert "5 failed" in captured.out and "5 recorded earlier" in captured.err
    assert pkd("stores", "info", out / "foundation_images.zarr", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_failures"] == 5 and info["n_ok"] == info["n_items"] - 5
    assert {f["id"] for f in info["failures"]} == set(damaged_images[1])
    assert pkd("stores", "info", out / "foundation_images.zarr") == 0
    text = capsys.readouterr().out
    assert all(f"failed {i}:" in text for i in damaged_images[1])


def test_strict_fails_on_a_fresh_run(synth_data, damaged_images, tiny_clip_dir, tmp_path,
                                     capsys):
    folder, broken = damaged_images
    truncated = next(i for i, reason in broken.items() if reason == "truncated")
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, tmp_path, "--images", folder,
                              "--splits", "test_iid", "--strict") == 1  # holds the truncated one
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"skipped image {truncated} (") and \
        "truncated" in err[0]


@pytest.fixture(scope="module")
def small_store(synth_data, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mismatch")
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--splits", "val") == 0
    return out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_store_of_other_weights_is_refused(synth_data, tiny_clip_dir, other_clip_dir, tmp_path,
                                           capsys):
    """The checkpoint at the same path retrained in place (same config, other weights): only
    the weights fingerprint tells the stores apart."""
    from pkd.pipeline.foundation import weights_sha256

    model = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    assert weights_sha256(str(model), True) == weights_sha256(str(tiny_clip_dir), True)  # moved
    assert weights_sha256(str(model), True) != weights_sha256(str(other_clip_dir), True)
    assert extract_foundation(synth_data, model, tmp_path / "out", "--splits", "val") == 0
    shutil.copy(other_clip_dir / "model.safetensors", model / "model.safetensors")
    capsys.readouterr()
    assert extract_foundation(synth_data, model, tmp_path / "out", "--splits", "val") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "out" / "foundation_images.zarr") in line
    assert "producer.weights_sha256" in line and "overwrite" in line


def test_store_of_other_text_length_is_refused(small_store, synth_data, tiny_clip_dir, capsys):
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, small_store, "--splits", "val",
                              "--max-text-len", "16") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(small_store / "foundation_images.zarr") in line and "dims.max_text_len" in line


def test_library_versions_are_recorded_not_compared(synth_data, tiny_clip_dir, tmp_path,
                                                    capsys):
    assert extract_foundation(synth_data, tiny_clip_dir, tmp_path, "--splits", "val") == 0
    meta = tmp_path / "foundation_images.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    producer = doc["attributes"]["pkd_store"]["producer"]
    assert producer["info"]["transformers_version"]
    producer["info"]["transformers_version"] = "4.0.0"  # as if built by an older transformers
    meta.write_text(json.dumps(doc))
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, tmp_path, "--splits", "val") == 0
    assert " 0 shards run, 1 skipped" in capsys.readouterr().out.splitlines()[0]


def test_overwrite_starts_over(synth_data, other_clip_dir, tmp_path, tiny_clip_dir):
    assert extract_foundation(synth_data, tiny_clip_dir, tmp_path, "--splits", "val") == 0
    before = FeatureStore.open(tmp_path / "foundation_images.zarr").spec.producer
    assert extract_foundation(synth_data, other_clip_dir, tmp_path, "--splits", "val",
                              "--overwrite") == 0
    after = FeatureStore.open(tmp_path / "foundation_images.zarr")
    assert after.complete and after.spec.producer["model"] == str(other_clip_dir)
    assert after.spec.producer["weights_sha256"] != before["weights_sha256"]
    assert after.spec.producer["config_hash"] == before["config_hash"]
    assert len(done_records(tmp_path / "foundation_images.zarr")) == 1


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--shard", "2/2", "--shard 2/2: expected i/n"),
    ("--shard", "half", "--shard half: expected i/n"),
    ("--items-per-shard", "24", "--items-per-shard 24: must be 1..16 or a multiple of 16"),
    ("--workers", "-1", "--workers -1"),
    ("--shard", "0/2 --overwrite", "--shard 0/2 --overwrite: delete the store once"),
])
def test_bad_run_options_are_one_line_errors(option, value, message, synth_data, tiny_clip_dir,
                                             tmp_path, capsys):
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, tmp_path, option, *value.split()) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {message}")
    assert not (tmp_path / "foundation_images.zarr").exists()
