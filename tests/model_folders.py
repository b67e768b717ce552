"""Helpers of the model-folder integrity tests (``test_integrity_*``): copy and edit a tiny model
folder, run ``pkd extract foundation`` on it, and check that an error is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

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


def run_extract(data: Path, model: Path, out: Path, *extra) -> int:
    """The val split (8 images: 2 shards of 4), shards of 4 items, one torch thread."""
    from fixtures_extract import pkd

    return pkd("extract", "foundation", "--data", data, "--model", model, "--out", out,
               "--splits", "val", "--items-per-shard", "4", "--threads", "1", *extra)


def truncate(path: Path) -> None:
    """Cut a file to half its size (a download or copy that stopped)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
