"""Integrity of model folders, broken ones: truncated or malformed weight files and an image
processor whose size is not the model's are one line each, at load and in the CLI."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.pipeline.backbones import RegionBackbone
from pkd.pipeline.detectors import HFDetector
from pkd.pipeline.foundation import FoundationSpec, load_foundation

pytest.register_assert_rewrite("fixtures_extract", "model_folders")
from model_folders import (  # noqa: E402
    PROCESSOR_FILE,
    copy_model,
    edit_json,
    one_error_line,
    one_line,
    processor_settings,
    run_extract,
    truncate,
)

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data (session fixture)


LOADERS = {
    "foundation": ("tiny_clip_dir", lambda d: load_foundation(FoundationSpec(str(d)))),
    "backbone": ("tiny_resnet_dir", lambda d: RegionBackbone(str(d))),
    "detector": ("tiny_detr_dir", lambda d: HFDetector(str(d))),
}


@pytest.mark.parametrize("what", LOADERS)
def test_truncated_safetensors_is_one_line(what, request, tmp_path):
    fixture, load = LOADERS[what]
    folder = copy_model(request.getfixturevalue(fixture), tmp_path / "m")
    truncate(folder / "model.safetensors")
    with pytest.raises(PkdError) as err:
        load(folder)
    assert re.fullmatch(rf"{re.escape(str(folder / 'model.safetensors'))}: truncated "
                        r"safetensors file \(\d+ bytes, its header describes \d+\); download or "
                        r"copy it again", one_line(err)), str(err.value)


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "not a safetensors file (0 bytes, truncated or empty)"),
    (b"\xff" * 64, "truncated safetensors file (64 bytes, its header alone needs"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00not json", "corrupt safetensors file (unreadable header)"),
])
def test_malformed_safetensors_is_one_line(content, problem, tiny_resnet_dir, tmp_path):
    folder = copy_model(tiny_resnet_dir, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(PkdError) as err:
        RegionBackbone(str(folder))
    assert one_line(err).startswith(f"{folder / 'model.safetensors'}: {problem}")


def test_truncated_torch_bin_is_one_line(tiny_resnet_dir, tmp_path):
    from safetensors.torch import load_file

    folder = copy_model(tiny_resnet_dir, tmp_path / "m")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    RegionBackbone(str(folder))  # the .bin alone loads
    truncate(folder / "pytorch_model.bin")
    with pytest.raises(PkdError) as err:
        RegionBackbone(str(folder))
    assert one_line(err).startswith(f"{folder / 'pytorch_model.bin'}: truncated weights file (")


def test_truncated_weights_in_the_cli_is_one_error_line(synth_data, tiny_clip_dir, tmp_path,
                                                        capsys):
    folder = copy_model(tiny_clip_dir, tmp_path / "m")
    truncate(folder / "model.safetensors")
    capsys.readouterr()
    assert run_extract(synth_data, folder, tmp_path / "out") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{folder / 'model.safetensors'}: truncated safetensors file" in line


def _shrink_processor(folder: Path, family: str, side: int) -> None:
    def edit(doc):
        settings = processor_settings(doc, family)
        if family == "clip":
            settings.update(size={"shortest_edge": side},
                            crop_size={"height": side, "width": side})
        else:
            settings.update(size={"height": side, "width": side})

    edit_json(folder / PROCESSOR_FILE[family], edit)


def test_processor_size_other_than_the_model_is_refused_at_load(model_dir, family, tmp_path):
    folder = copy_model(model_dir, tmp_path / "m")
    _shrink_processor(folder, family, 32)
    with pytest.raises(PkdError) as err:
        load_foundation(FoundationSpec(str(folder)))
    message = one_line(err)
    assert message.startswith(f"{folder / PROCESSOR_FILE[family]}: the image processor makes "
                              "32x32 pixel inputs")
    assert f"but {folder} has vision_config.image_size 64" in message


def test_aspect_keeping_processor_is_refused_at_load(tiny_clip_dir, tmp_path):
    """Without the centre crop CLIP's processor keeps the aspect: not the model's square."""
    folder = copy_model(tiny_clip_dir, tmp_path / "m")
    edit_json(folder / "processor_config.json",
              lambda d: d["image_processor"].update(do_center_crop=False))
    with pytest.raises(PkdError, match=r"processor_config\.json: the image processor makes "
                                       r"\d+x64 pixel inputs \(for a 97x67 image\)"):
        load_foundation(FoundationSpec(str(folder)))


def test_processor_size_in_the_cli_is_one_error_line(synth_data, tiny_blip_dir, tmp_path,
                                                     capsys):
    folder = copy_model(tiny_blip_dir, tmp_path / "m")
    _shrink_processor(folder, "blip", 32)
    capsys.readouterr()
    assert run_extract(synth_data, folder, tmp_path / "out") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "preprocessor_config.json: the image processor makes 32x32 pixel inputs" in line


def test_vit_backbone_refusing_its_processor_size_is_one_line(tmp_path):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    vit = RegionBackbone(str(tmp_path), output_size=2)
    with pytest.raises(PkdError) as err:
        vit.pool([Image.new("RGB", (50, 40))], [np.array([[0, 0, 50, 40]], dtype=np.float32)])
    message = one_line(err)
    assert message.startswith(f"{tmp_path}: the model refuses the (1, 3, 16, 16) pixels its "
                              f"image processor ({tmp_path / 'preprocessor_config.json'}) makes: ")


def test_backbone_and_detector_record_processor_fingerprints(tiny_resnet_dir, tiny_detr_dir,
                                                             tmp_path):
    backbone = RegionBackbone(str(tiny_resnet_dir)).provenance()
    detector = HFDetector(str(tiny_detr_dir)).provenance()
    assert len(backbone["image_processor_sha256"]) == len(detector["image_processor_sha256"]) == 64
    assert backbone["model"] == str(tiny_resnet_dir.resolve())
    folder = copy_model(tiny_resnet_dir, tmp_path / "m")
    edit_json(folder / "preprocessor_config.json", lambda d: d.update(image_mean=[0.5] * 3))
    assert (RegionBackbone(str(folder)).provenance()["image_processor_sha256"]
            != backbone["image_processor_sha256"])


def test_pickle_errors_count_as_load_errors():
    from pkd.hf.loading import load_errors

    assert pickle.UnpicklingError in load_errors() and OSError in load_errors()
