"""Shared fixtures: tiny Hugging Face models saved once per test session, like hub checkpoints.

Each fixture returns a directory that loads with ``from_pretrained(dir, local_files_only=True)``
(weights + config + tokenizer and/or PIL image processor). Models are random and tiny (built in
well under a second); treat the directories as read-only — copy one before editing it.
transformers is imported only when a test asks for one of these fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """``CLIPModel``: 64 px images, 8 px patches (P = 65 tokens), width 64, 2 layers, BPE."""
    from pkd.hf.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory) -> Path:
    """``BlipForImageTextRetrieval``: same sizes as the CLIP fixture, WordPiece tokenizer."""
    from pkd.hf.tiny_models import build_tiny_blip_itm

    return build_tiny_blip_itm(tmp_path_factory.mktemp("tiny_blip"))


@pytest.fixture(scope="session")
def tiny_detr_dir(tmp_path_factory) -> Path:
    """``DetrForObjectDetection`` on a 2-stage ResNet: 10 queries, 5 labels."""
    from pkd.hf.tiny_models import build_tiny_detr

    return build_tiny_detr(tmp_path_factory.mktemp("tiny_detr"))


@pytest.fixture(scope="session")
def tiny_yolos_dir(tmp_path_factory) -> Path:
    """``YolosForObjectDetection``: 10 detection tokens, 5 labels."""
    from pkd.hf.tiny_models import build_tiny_yolos

    return build_tiny_yolos(tmp_path_factory.mktemp("tiny_yolos"))


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory) -> Path:
    """``ResNetModel`` backbone: (B, 32, H/8, W/8) feature map."""
    from pkd.hf.tiny_models import build_tiny_resnet

    return build_tiny_resnet(tmp_path_factory.mktemp("tiny_resnet"))


@pytest.fixture(scope="session")
def caption_data(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark with 24 caption images (read-only: the tag tests share it)."""
    from pkd.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("captions") / "synth"
    generate(SynthConfig(train_images=4, val_images=2, test_images=2, test_iid_images=2,
                         caption_images=24, pilot_scenes=100), out)
    return out


@pytest.fixture(scope="module", params=["clip", "blip"])
def family(request) -> str:
    """Each foundation-model family pkd reads: a test using it runs once per family."""
    return request.param


@pytest.fixture(scope="module")
def model_dir(family, request) -> Path:
    """The tiny model directory of ``family`` (``tiny_clip_dir`` or ``tiny_blip_dir``)."""
    return request.getfixturevalue(f"tiny_{family}_dir")
