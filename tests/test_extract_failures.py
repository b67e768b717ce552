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


def test_retry_failed_reruns_only_the_failed_items(synth_data, damaged_images, clean,
                                                   tiny_clip_dir, tmp_path, capsys):
    """Fix some broken images, run again with --retry-failed: those rows are computed (as in a
    clean run), the rows and shards without failures are left as they were."""
    folder, broken = damaged_images
    images = shutil.copytree(folder, tmp_path / "images")
    originals = {int(p.stem): p for p in (synth_data / "images").iterdir()}
    by_reason = {reason: i for i, reason in broken.items()}
    shutil.copy(originals[by_reason["truncated"]], images)  # shard 2 (rows 32-47): no failure
    out = tmp_path / "out"
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--images", images,
                              "--threads", "1") == 0
    path = out / "foundation_images.zarr"
    before, records = store_arrays(path), {p.name: p.read_text() for p in done_records(path)}
    fixed = [by_reason["no image file"], by_reason["not an image"]]  # shards 0 and 1
    for i in fixed:
        shutil.copy(originals[i], images)
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--images", images, "--threads",
                              "1", "--retry-failed") == 0
    lines = capsys.readouterr().out.splitlines()
    assert " 2 shards run, 1 skipped (done); 4 items " in lines[0]  # the 4 failed images only
    assert " 0 shards run, " in lines[1] and " 0 items " in lines[1]  # questions: none had failed
    store, after = FeatureStore.open(path), store_arrays(path)
    assert store.complete
    assert {f.id for f in store.failures} == {by_reason["empty file"], by_reason["too large"]}
    rows = np.isin(after["ids"], fixed)
    assert after["ok"][rows].all() and after["ok"].sum() == 46
    reference = store_arrays(clean / "foundation_images.zarr")
    for name in ("vision_tokens", "image_embeds"):
        np.testing.assert_allclose(after[name][rows].astype(np.float32),
                                   reference[name][rows].astype(np.float32), rtol=1e-3, atol=1e-3)
        assert after[name][~rows].tobytes() == before[name][~rows].tobytes()
    assert (path / "_pkd/done/shard-000002.json").read_text() == records["shard-000002.json"]
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, out, "--images", images,
                              "--retry-failed", "--overwrite") == 2
    assert one_error_line(capsys.readouterr().err).startswith("error: --retry-failed --overwrite")


def test_non_finite_features_at_extraction_are_failed_items(synth_data, tiny_clip_dir, tmp_path,
                                                            monkeypatch, capsys):
    """A model output that overflows float16 (or is NaN) is never stored as data: the image is
    recorded as failed (the run goes on; --strict makes it an exit status)."""
    from pkd.pipeline.stages import FoundationImageStage

    run_many = FoundationImageStage.run_many  # what the runner calls (every shard, one stream)
    blown = {}

    def overflowing(self, shards):
        for ids, (arrays, failures) in zip(shards, run_many(self, shards), strict=True):
            with np.errstate(over="ignore"):
                arrays["vision_tokens"][0, 3, 1] = np.float32(7e4)  # beyond float16: inf
            arrays["image_embeds"][2, 0] = np.nan
            blown.update({int(ids[0]): "vision_tokens holds inf as float16 (overflows float16",
                          int(ids[2]): "image_embeds holds nan as float32"})
            yield arrays, failures

    monkeypatch.setattr(FoundationImageStage, "run_many", overflowing)
    capsys.readouterr()
    assert extract_foundation(synth_data, tiny_clip_dir, tmp_path, "--splits", "val,test",
                              "--strict") == 1
    captured = capsys.readouterr()
    assert " 2 failed" in captured.out.splitlines()[0]
    for i, reason in blown.items():
        assert f"skipped image {i} (no file): non-finite features: {reason}" in captured.err
    store = FeatureStore.open(tmp_path / "foundation_images.zarr")
    assert {f.id for f in store.failures} == set(blown)
    arrays = store_arrays(tmp_path / "foundation_images.zarr")
    bad = np.isin(arrays["ids"], list(blown))
    assert not arrays["ok"][bad].any() and arrays["ok"][~bad].all()
    assert not arrays["vision_tokens"][bad].any() and np.isfinite(arrays["image_embeds"]).all()
