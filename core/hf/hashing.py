"""One config hash for every producer and consumer of cached foundation features.

``config_sha256(config)`` = sha256 of the transformers config as canonical JSON (sorted keys),
without the keys that say where or how a checkpoint was loaded rather than what it computes
(:data:`VOLATILE_CONFIG_KEYS`, at any depth). Extraction records it in the stores; the trainer's
frozen matching head compares it, so both must use this one function.
"""

from __future__ import annotations

import hashlib
import json

VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")


def config_sha256(config) -> str:
    """sha256 hex digest of ``config.to_dict()`` without :data:`VOLATILE_CONFIG_KEYS`."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in VOLATILE_CONFIG_KEYS}
        return obj

    text = json.dumps(strip(config.to_dict()), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
