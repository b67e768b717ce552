"""Which foundation-model families pkd reads, decided from a transformers config (one place for
extraction and the trainer's matching head)."""

from __future__ import annotations

from pkd.errors import PkdError

SUPPORTED = "CLIPModel (model_type 'clip') or BlipForImageTextRetrieval (model_type 'blip')"


def detect_family(config, where: str) -> str:
    """"clip" or "blip" from a transformers config; anything else is a :class:`PkdError`."""
    architectures = list(getattr(config, "architectures", None) or [])
    if config.model_type == "clip" and architectures in ([], ["CLIPModel"]):
        return "clip"
    if config.model_type == "blip" and "BlipForImageTextRetrieval" in architectures:
        return "blip"
    found = ", ".join(architectures) or f"model_type {config.model_type!r}"
    raise PkdError(f"{where}: unsupported foundation model {found}; supported: {SUPPORTED}")
