"""Integrity of model folders, provenance: whole-file weight fingerprints (a change in the
middle of a file counts), tokenizer and image processor fingerprints; a resumed / sliced run
with edited files is refused naming the field; the same folder given relative, absolute or
through a symlink is one model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pkd.hf.fingerprint import file_sha256, weights_sha256
from pkd.pipeline.foundation import FoundationSpec, load_foundation
from pkd.stores import ArraySpec, FeatureStore, StoreSpec
from pkd.stores.schema import spec_difference

pytest.register_assert_rewrite("fixtures_extract", "model_folders")
from model_folders import (  # noqa: E402
    PROCESSOR_FILE,
    copy_model,
    edit_json,
    one_error_line,
    processor_settings,
    run_extract,
)

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data (session fixture)


def _head_tail_sha256(path: Path, n: int = 1 << 20) -> str:
    """The fingerprint pkd used before: size, first and last MiB only."""
    data = path.read_bytes()
    return hashlib.sha256(f"{path.name}:{len(data)}:".encode() + data[:n] + data[-n:]).hexdigest()


def test_weights_fingerprint_reads_every_byte(tmp_path):
    """A 3.6 MB checkpoint with its middle tensor scaled x1.1: same size, same first and last
    MiB, other weights."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(300_000).astype(np.float32)
               for name in ("a.first", "b.middle", "c.last")}
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    save_file(tensors, a / "model.safetensors")
    save_file({**tensors, "b.middle": tensors["b.middle"] * np.float32(1.1)},
              b / "model.safetensors")
    assert _head_tail_sha256(a / "model.safetensors") == _head_tail_sha256(b / "model.safetensors")
    assert weights_sha256(str(a), True) != weights_sha256(str(b), True)
    assert len(weights_sha256(str(a), True)) == 64
    moved = shutil.copytree(a, tmp_path / "moved")
    assert weights_sha256(str(moved), True) == weights_sha256(str(a), True)  # content, not path
    assert file_sha256(a / "model.safetensors", block=1 << 10) == hashlib.sha256(
        (a / "model.safetensors").read_bytes()).hexdigest()


def test_only_the_loaded_weight_files_count(tmp_path):
    """Safetensors are what transformers loads when present: a stale .bin beside them and
    trainer state files do not change the fingerprint."""
    from safetensors.numpy import save_file

    save_file({"w": np.ones(8, np.float32)}, tmp_path / "model.safetensors")
    before = weights_sha256(str(tmp_path), True)
    (tmp_path / "pytorch_model.bin").write_bytes(b"old weights")
    (tmp_path / "training_args.bin").write_bytes(b"trainer state")
    assert weights_sha256(str(tmp_path), True) == before
    (tmp_path / "model.safetensors").unlink()
    only_bin = weights_sha256(str(tmp_path), True)
    (tmp_path / "training_args.bin").write_bytes(b"other trainer state")
    assert weights_sha256(str(tmp_path), True) == only_bin != ""


def test_provenance_records_every_fingerprint(model_dir, family, tmp_path):
    fm = load_foundation(FoundationSpec(str(model_dir)))
    prov = fm.provenance()
    for key in ("weights_sha256", "tokenizer_sha256", "image_processor_sha256"):
        assert len(prov[key]) == 64, key
    folder = copy_model(model_dir, tmp_path / "m")
    edit_json(folder / PROCESSOR_FILE[family],
              lambda d: processor_settings(d, family).update(image_mean=[0.5, 0.5, 0.5]))
    edited = load_foundation(FoundationSpec(str(folder))).provenance()
    assert edited["image_processor_sha256"] != prov["image_processor_sha256"]
    assert edited["weights_sha256"] == prov["weights_sha256"]
    assert edited["tokenizer_sha256"] == prov["tokenizer_sha256"]


def _refused_after_edit(data, src, tmp_path, capsys, edit) -> str:
    """Slice 0/2 with the folder as it was, slice 1/2 after ``edit(folder)``: the error line."""
    folder = copy_model(src, tmp_path / "model")
    out = tmp_path / "out"
    assert run_extract(data, folder, out, "--shard", "0/2") == 0
    edit(folder)
    capsys.readouterr()
    assert run_extract(data, folder, out, "--shard", "1/2") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out / "foundation_images.zarr") in line and "existing store differs" in line
    assert not FeatureStore.open(out / "foundation_images.zarr").complete
    return line


def test_edited_image_processor_between_slices_is_refused(synth_data, tiny_clip_dir, tmp_path,
                                                          capsys):
    def edit(folder):
        edit_json(folder / "processor_config.json",
                  lambda d: d["image_processor"].update(image_std=[0.5, 0.5, 0.5]))

    line = _refused_after_edit(synth_data, tiny_clip_dir, tmp_path, capsys, edit)
    assert "producer.image_processor_sha256 is '" in line
    assert "(the image processor files (size, crop, mean / std) differ)" in line


def test_edited_tokenizer_between_slices_is_refused(synth_data, tiny_blip_dir, tmp_path, capsys):
    def edit(folder):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        tokenizer.add_tokens(["diamonds"])
        tokenizer.save_pretrained(folder)

    line = _refused_after_edit(synth_data, tiny_blip_dir, tmp_path, capsys, edit)
    assert "producer.tokenizer_sha256 is '" in line and "(the tokenizer files differ)" in line


def test_weights_edited_in_the_middle_between_slices_are_refused(synth_data, tiny_clip_dir,
                                                                 tmp_path, capsys):
    """One middle layer scaled x1.1 in place: same config, same file size."""
    from safetensors.torch import load_file, save_file

    def edit(folder):
        path = folder / "model.safetensors"
        weights = load_file(path)
        key = "vision_model.encoder.layers.1.mlp.fc1.weight"
        weights[key] = weights[key] * 1.1
        size = path.stat().st_size
        save_file(weights, path, metadata={"format": "pt"})
        assert path.stat().st_size == size

    line = _refused_after_edit(synth_data, tiny_clip_dir, tmp_path, capsys, edit)
    assert "producer.weights_sha256 is '" in line and "(the model's weight files differ)" in line


def test_relative_absolute_and_linked_paths_are_one_model(synth_data, tiny_clip_dir, tmp_path,
                                                          monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.chdir(tiny_clip_dir.parent)
    assert run_extract(synth_data, Path(tiny_clip_dir.name), out) == 0
    producer = FeatureStore.open(out / "foundation_images.zarr").spec.producer
    assert producer["model"] == str(tiny_clip_dir.resolve())
    link = tmp_path / "link"
    link.symlink_to(tiny_clip_dir, target_is_directory=True)
    for model in (tiny_clip_dir, f"./{tiny_clip_dir.name}/", link):
        capsys.readouterr()
        assert run_extract(synth_data, model, out) == 0, model
        lines = [x for x in capsys.readouterr().out.splitlines() if "shards run" in x]
        assert len(lines) == 2 and all(": 0 shards run, " in x for x in lines), lines


def _spec(producer: dict) -> StoreSpec:
    return StoreSpec("regions", "image_id", (ArraySpec("boxes", (2, 4), "float32"),),
                     producer, {"max_regions": 2})


def test_spec_difference_names_nested_and_missing_fields():
    have = _spec({"stage": "regions", "backbone": {"model": "/m", "weights_sha256": "a" * 64,
                                                   "info": {"torch_version": "1"}}})
    want = _spec({"stage": "regions", "backbone": {"model": "/m", "weights_sha256": "b" * 64,
                                                   "info": {"torch_version": "2"}}})
    assert spec_difference(have, want) == (
        f"producer.backbone.weights_sha256 is {'a' * 64!r}, expected {'b' * 64!r} "
        "(the model's weight files differ)")
    older = _spec({"stage": "regions", "weights_sha256": "a"})
    newer = _spec({"stage": "regions", "weights_sha256": "a", "tokenizer_sha256": "t"})
    assert spec_difference(older, newer) == (
        "producer.tokenizer_sha256 is not recorded in the store, expected 't' (a store made by "
        "an older pkd or another producer)")
    assert "this run does not record it" in spec_difference(newer, older)
    assert spec_difference(have, have) is None
