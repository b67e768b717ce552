"""Integrity of model folders: no silently wrong features from a missing or foreign tokenizer, no
mixed stores from edited weights / preprocessing, one-line errors for broken folders.

- tokenizer: a folder without tokenizer files is refused at load (transformers would fall back to
  an empty vocabulary); a tokenizer that maps the first text batch to unknown tokens is refused;
- provenance: whole-file weight fingerprints (a change in the middle of a file counts), tokenizer
  and image processor fingerprints; a resumed / sliced run with edited files is refused naming
  the field; the same folder given relative, absolute or through a symlink is one model;
- broken folders: truncated weight files, an image processor whose size is not the model's, and
  detectron2 config / weights errors (against a stand-in detectron2 module) are one line each.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pkd.errors import PkdError
from pkd.hf.fingerprint import file_sha256, weights_sha256
from pkd.pipeline.backbones import RegionBackbone
from pkd.pipeline.detectors import Detectron2Detector, HFDetector, build_detector
from pkd.pipeline.foundation import FoundationSpec, load_foundation
from pkd.stores import ArraySpec, FeatureStore, StoreSpec
from pkd.stores.schema import spec_difference

pytest.register_assert_rewrite("fixtures_extract")
from fixtures_extract import pkd  # noqa: E402

torch.set_num_threads(1)
pytest_plugins = ["fixtures_extract"]  # synth_data (session fixture)

TEXTS = ["what color is the square?", "is there a red circle", "how many objects are there?"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt")
PROCESSOR_FILE = {"clip": "processor_config.json", "blip": "preprocessor_config.json"}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def copy_model(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def processor_settings(doc: dict, family: str) -> dict:
    """The image processor settings inside a model's processor file."""
    return doc["image_processor"] if family == "clip" else doc


# --- tokenizer: missing or not covering the text ------------------------------------------------

def test_folder_without_tokenizer_files_is_refused(model_dir, family, tmp_path):
    """BLIP would get an empty 5-token BertTokenizer (every question [UNK]), CLIP a 2-token one
    (caught before only by accident, blaming the eos id)."""
    folder = copy_model(model_dir, tmp_path / "m")
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(PkdError) as err:
        load_foundation(FoundationSpec(str(folder)))
    message = one_line(err)
    assert message.startswith(f"{folder}: no tokenizer file (none of ")
    assert "tokenizer.json" in message and "empty" in message and "eos" not in message


def test_foreign_vocabulary_is_refused_on_the_first_batch(model_dir, family, tmp_path):
    """A tokenizer of the right kind, trained on other text: loads, but the first batch of
    questions would be mostly unknown tokens."""
    from pkd.hf.tiny_models import train_tokenizer

    folder = copy_model(model_dir, tmp_path / "m")
    kind = "bpe" if family == "clip" else "wordpiece"
    train_tokenizer(["αβγ δεζ ηθι κλμ νξο πρσ τυφ χψω"] * 4, folder, kind=kind, vocab_size=60)
    fm = load_foundation(FoundationSpec(str(folder)))
    assert fm.encode_images([Image.new("RGB", (64, 64))])["image_embeds"].shape == (1, 64)
    with pytest.raises(PkdError) as err:
        fm.encode_texts(TEXTS)
    message = one_line(err)
    assert message.startswith(f"{folder / 'tokenizer.json'}: the tokenizer maps ")
    assert re.search(r"maps \d+ of the \d+ pieces \(100%\) of the first 3 texts to the unknown "
                     r"token '(\[UNK\]|<\|unk\|>)' \(at most 5% allowed\)", message), message


def test_a_few_unknown_pieces_pass(model_dir):
    """One never-seen character among many known words is below the limit."""
    fm = load_foundation(FoundationSpec(str(model_dir)))
    texts = [*TEXTS, "how many objects are there? what color is the square? ζ"] * 2
    out = fm.encode_texts(texts)
    assert out["input_ids"].shape == (len(texts), 32)
    assert fm.tokenizer.unk_token_id in out["input_ids"][-1]  # the ζ, accepted


def test_token_ids_outside_the_model_vocabulary(tiny_clip_dir):
    fm = load_foundation(FoundationSpec(str(tiny_clip_dir)))
    fm.model.config.text_config.vocab_size = 10  # as if the tokenizer were a bigger model's
    with pytest.raises(PkdError, match=r"tokenizer\.json: token id \d+ is outside the model's "
                                       r"text vocabulary of 10 \(text_config\.vocab_size\)"):
        fm.encode_texts(TEXTS)


# --- fingerprints and provenance ----------------------------------------------------------------

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


def _run(data: Path, model: Path, out: Path, *extra) -> int:
    """The val split (8 images: 2 shards of 4), shards of 4 items, one torch thread."""
    return pkd("extract", "foundation", "--data", data, "--model", model, "--out", out,
               "--splits", "val", "--items-per-shard", "4", "--threads", "1", *extra)


def _refused_after_edit(data, src, tmp_path, capsys, edit) -> str:
    """Slice 0/2 with the folder as it was, slice 1/2 after ``edit(folder)``: the error line."""
    folder = copy_model(src, tmp_path / "model")
    out = tmp_path / "out"
    assert _run(data, folder, out, "--shard", "0/2") == 0
    edit(folder)
    capsys.readouterr()
    assert _run(data, folder, out, "--shard", "1/2") == 2
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
    assert _run(synth_data, Path(tiny_clip_dir.name), out) == 0
    producer = FeatureStore.open(out / "foundation_images.zarr").spec.producer
    assert producer["model"] == str(tiny_clip_dir.resolve())
    link = tmp_path / "link"
    link.symlink_to(tiny_clip_dir, target_is_directory=True)
    for model in (tiny_clip_dir, f"./{tiny_clip_dir.name}/", link):
        capsys.readouterr()
        assert _run(synth_data, model, out) == 0, model
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


# --- broken folders: one line each --------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


LOADERS = {
    "foundation": ("tiny_clip_dir", lambda d: load_foundation(FoundationSpec(str(d)))),
    "backbone": ("tiny_resnet_dir", lambda d: RegionBackbone(str(d))),
    "detector": ("tiny_detr_dir", lambda d: HFDetector(str(d))),
}


@pytest.mark.parametrize("what", LOADERS)
def test_truncated_safetensors_is_one_line(what, request, tmp_path):
    fixture, load = LOADERS[what]
    folder = copy_model(request.getfixturevalue(fixture), tmp_path / "m")
    _truncate(folder / "model.safetensors")
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
    _truncate(folder / "pytorch_model.bin")
    with pytest.raises(PkdError) as err:
        RegionBackbone(str(folder))
    assert one_line(err).startswith(f"{folder / 'pytorch_model.bin'}: truncated weights file (")


def test_truncated_weights_in_the_cli_is_one_error_line(synth_data, tiny_clip_dir, tmp_path,
                                                        capsys):
    folder = copy_model(tiny_clip_dir, tmp_path / "m")
    _truncate(folder / "model.safetensors")
    capsys.readouterr()
    assert _run(synth_data, folder, tmp_path / "out") == 2
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
    assert _run(synth_data, folder, tmp_path / "out") == 2
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


# --- detectron2: error paths against a stand-in module ------------------------------------------

class Node(dict):
    """A yacs-like config node: attribute access, merge from YAML (unknown keys refused)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def merge_from_file(self, path: str) -> None:
        self._merge(yaml.safe_load(Path(path).read_text()) or {}, "")

    def _merge(self, doc: dict, prefix: str) -> None:
        for key, value in doc.items():
            full = f"{prefix}{key}"
            if key not in self:
                raise KeyError(f"Non-existent config key: {full}")
            if isinstance(self[key], Node):
                self[key]._merge(value, f"{full}.")
            else:
                self[key] = value

    def freeze(self) -> None:
        pass

    def dump(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self)))


def _fake_cfg() -> Node:
    return Node(MODEL=Node(DEVICE="cuda", WEIGHTS="", META_ARCHITECTURE="GeneralizedRCNN",
                           ROI_HEADS=Node(SCORE_THRESH_TEST=0.05, NMS_THRESH_TEST=0.5),
                           RESNETS=Node(RES2_OUT_CHANNELS=256)),
                TEST=Node(DETECTIONS_PER_IMAGE=100),
                INPUT=Node(MIN_SIZE_TEST=800, MAX_SIZE_TEST=1333, FORMAT="BGR"))


class FakeRCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)
        self.roi_heads = types.SimpleNamespace(
            box_head=types.SimpleNamespace(output_shape=types.SimpleNamespace(channels=16)))


def _build_model(cfg):
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise KeyError(f"No object named '{cfg.MODEL.META_ARCHITECTURE}' found in 'META_ARCH' "
                       "registry!")
    return FakeRCNN()


class FakeCheckpointer:
    def __init__(self, model):
        self.model = model

    def load(self, path: str):
        state = torch.load(path, weights_only=True)  # a truncated file fails here, as in fvcore
        self.model.load_state_dict(state)
        return {}


@pytest.fixture
def fake_detectron2(monkeypatch):
    modules = {name: types.ModuleType(name) for name in (
        "detectron2", "detectron2.data", "detectron2.data.transforms", "detectron2.checkpoint",
        "detectron2.config", "detectron2.modeling")}
    modules["detectron2.config"].get_cfg = _fake_cfg
    modules["detectron2.modeling"].build_model = _build_model
    modules["detectron2.checkpoint"].DetectionCheckpointer = FakeCheckpointer
    modules["detectron2.data.transforms"].ResizeShortestEdge = lambda sizes, max_size: (sizes,
                                                                                        max_size)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def d2_files(tmp_path):
    """(config path, weights path) of a valid stand-in detector."""
    weights = tmp_path / "model_final.pth"
    torch.save(FakeRCNN().state_dict(), weights)
    config = tmp_path / "vg.yaml"
    config.write_text(yaml.safe_dump({"MODEL": {"WEIGHTS": str(weights)},
                                      "INPUT": {"MIN_SIZE_TEST": 600}}))
    return config, weights


def test_detectron2_stand_in_loads_and_records_the_weights(fake_detectron2, d2_files,
                                                           monkeypatch):
    config, weights = d2_files
    monkeypatch.chdir(config.parent)
    det = build_detector(f"detectron2:{config.name}", max_boxes=36)
    assert isinstance(det, Detectron2Detector) and det.feature_dim == 16
    assert det.cfg.MODEL.DEVICE == "cpu" and det.cfg.TEST.DETECTIONS_PER_IMAGE == 1000
    prov = det.provenance()
    assert prov["detector"] == f"detectron2:{config.resolve()}"  # relative = absolute
    assert prov["weights_sha256"] == file_sha256(weights)


def _break(case: str, config: Path, weights: Path) -> str:
    """Break the stand-in detector's files as ``case`` says; the expected message after the
    config path."""
    doc = yaml.safe_load(config.read_text())
    if case == "unknown key":
        doc["MODEL"]["FOO"] = 1
        expected = "not a valid detectron2 config (Non-existent config key: MODEL.FOO)"
    elif case == "not yaml":
        config.write_text("MODEL: [unclosed\n")
        return "not a valid detectron2 config ("
    elif case == "no weights":
        doc["MODEL"]["WEIGHTS"] = ""
        expected = "MODEL.WEIGHTS is empty (the detector would run with random weights)"
    elif case == "missing weights":
        doc["MODEL"]["WEIGHTS"] = str(weights.with_name("nope.pth"))
        expected = f"MODEL.WEIGHTS {weights.with_name('nope.pth')}: no such file"
    elif case == "unknown architecture":
        doc["MODEL"]["META_ARCHITECTURE"] = "Nope"
        expected = ("cannot build the detectron2 model (No object named 'Nope' found in "
                    "'META_ARCH' registry!)")
    else:  # truncated weights
        _truncate(weights)
        expected = f"cannot load MODEL.WEIGHTS {weights} ("
    config.write_text(yaml.safe_dump(doc))
    return expected


@pytest.mark.parametrize("case", ["unknown key", "not yaml", "no weights", "missing weights",
                                  "unknown architecture", "truncated weights"])
def test_detectron2_errors_are_one_line(case, fake_detectron2, d2_files):
    config, weights = d2_files
    expected = _break(case, config, weights)
    with pytest.raises(PkdError) as err:
        build_detector(f"detectron2:{config}")
    assert one_line(err).startswith(f"{config}: {expected}"), str(err.value)


def test_detectron2_error_in_the_cli_is_one_error_line(fake_detectron2, d2_files, synth_data,
                                                       tmp_path, capsys):
    config, weights = d2_files
    expected = _break("unknown key", config, weights)
    capsys.readouterr()
    assert pkd("extract", "regions", "--data", synth_data, "--splits", "val", "--out",
               tmp_path / "regions.zarr", "--detector", f"detectron2:{config}") == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {config}: {expected}"


def test_detectron2_missing_config_file(fake_detectron2, tmp_path):
    with pytest.raises(PkdError, match=re.escape(f"{tmp_path / 'nope.yaml'}: no such detectron2 "
                                                 "config file")):
        build_detector(f"detectron2:{tmp_path / 'nope.yaml'}")


def test_pickle_errors_count_as_load_errors():
    from pkd.hf.loading import load_errors

    assert pickle.UnpicklingError in load_errors() and OSError in load_errors()
