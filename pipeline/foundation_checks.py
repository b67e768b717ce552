"""Checks of a foundation checkpoint's parts (:mod:`pkd.pipeline.foundation`): its tokenizer
and image processor, their agreement with the model config, and the store dims it implies."""

from __future__ import annotations

import torch

from pkd.errors import PkdError
from pkd.hf.loading import first_line, load_errors

UNKNOWN_LIMIT = 0.05  # most unknown-token pieces the first text batch may have (a share)


def load_preprocessing(source: str, local: bool, where: str):
    """(tokenizer, image processor) saved with the checkpoint; PIL processors, no torchvision."""
    from transformers import (  # transformers: loaded only when a model is checked
        AutoImageProcessor,
        AutoTokenizer,
    )

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=local)
    except load_errors() as err:
        raise PkdError(f"{where}: no tokenizer/image processor found (save one with "
                       f"save_pretrained; {first_line(err)})") from err
    if tokenizer.pad_token_id is None:
        raise PkdError(f"{where}: the tokenizer has no pad token (set one and save_pretrained)")
    return tokenizer, image_processor


def check_image_size(image_processor, config, processor_file: str, where: str) -> None:
    """The processor must make exactly the ``vision_config.image_size`` square the model's
    position embeddings were built for (CLIP / BLIP do not interpolate them): checked on one
    blank, non-square probe image, before any data is read."""
    from PIL import Image  # PIL: loaded only when an image is checked

    side = int(config.vision_config.image_size)
    probe = Image.new("RGB", (side + side // 2 + 1, side + 3))
    try:
        pixels = image_processor(images=[probe], return_tensors="pt")["pixel_values"]
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
        raise PkdError(f"{processor_file}: the image processor fails on a "
                       f"{probe.width}x{probe.height} test image ({first_line(err)})") from err
    height, width = (int(x) for x in pixels.shape[-2:])
    if (height, width) != (side, side):
        raise PkdError(f"{processor_file}: the image processor makes {width}x{height} pixel "
                       f"inputs (for a {probe.width}x{probe.height} image), but {where} has "
                       f"vision_config.image_size {side}: the processor settings (size / "
                       "crop_size) do not belong to this model")


def check_coverage(tokenizer, texts: list[str], tokenizer_file: str) -> None:
    """Refuse a tokenizer that maps more than :data:`UNKNOWN_LIMIT` of the pieces of ``texts``
    (the first batch) to its unknown token: a missing or foreign vocabulary, which would
    otherwise give a complete store of features of ``[UNK] [UNK] ...``."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return  # byte-level vocabularies cover every text
    pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(p) for p in pieces)
    unknown = sum(list(p).count(unk) for p in pieces)
    if total and unknown > UNKNOWN_LIMIT * total:
        raise PkdError(f"{tokenizer_file}: the tokenizer maps {unknown} of the {total} pieces "
                       f"({unknown / total:.0%}) of the first {len(pieces)} texts to the unknown "
                       f"token {tokenizer.unk_token!r} (at most {UNKNOWN_LIMIT:.0%} allowed): its "
                       "vocabulary does not cover the text (missing or foreign tokenizer files)")


def model_dims(config, family: str, max_text_len: int, where: str = "") -> dict[str, int]:
    """Store dims: P = 1 + (image_size / patch_size)^2 vision tokens, widths, text length."""
    vision, text = config.vision_config, config.text_config
    if max_text_len > text.max_position_embeddings:
        raise PkdError(f"{where}: max_text_len {max_text_len} exceeds the model's "
                       f"{text.max_position_embeddings} text positions")
    embed = config.projection_dim if family == "clip" else config.image_text_hidden_size
    return {"vision_tokens": 1 + (vision.image_size // vision.patch_size) ** 2,
            "vision_dim": vision.hidden_size, "text_dim": text.hidden_size,
            "embed_dim": embed, "max_text_len": max_text_len}


def library_info() -> dict:
    """Versions of the libraries that ran a model: recorded in stores, never compared."""
    import transformers  # transformers: loaded only to read its version

    return {"transformers_version": transformers.__version__, "torch_version": torch.__version__}


def check_eos(input_ids: torch.Tensor, num_tokens: torch.Tensor, eos_id: int, where: str) -> None:
    """CLIP pools each text at ``num_tokens - 1``: that must be where the model's own pooler looks
    (first ``eos_token_id``; the legacy id 2 means the highest id, as in transformers)."""
    hits = input_ids.argmax(-1) if eos_id == 2 else (input_ids == eos_id).int().argmax(-1)  # (B,)
    if not bool((hits == num_tokens - 1).all()):
        raise PkdError(f"{where}: the tokenizer does not end every text with the config's "
                       f"eos_token_id {eos_id} (text_config and tokenizer disagree)")
