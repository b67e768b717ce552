"""The ``teacher`` store: the adapted DistillVLM teacher's outputs, computed once (``pkd extract
teacher``, :mod:`pkd.train.teacher_extract` writes it) and read per batch by student training
instead of running the large teacher every step. This module is the store's layout and reading.
The store (kind ``teacher``, keyed by ``question_id``; docs/design.md) holds per question, padded
to ``T = 1 + max_question_length + 1 + max_regions`` tokens ([CLS] words [SEP] regions)::

    teacher_logits      float16 [A]              answer logits
    teacher_attentions  float16 [H, T, T]        attention maps of the one cached layer, or
                        float16 [n, H, T, T]     of n cached layers (dims.attention_layers)
    teacher_hidden      float16 [T, d]           last-layer token states
    teacher_token_mask  uint8   [T]              1 on valid tokens (teacher/student alignment)
    num_tokens          int32   []               number of valid tokens

Entries of padded tokens (hidden rows, attention rows and columns) are stored as zeros, so the
padding compresses away. ``dims`` records ``num_answers``, ``num_heads``, ``hidden_size``,
``num_tokens`` (T), ``max_question_length``, ``max_regions``, ``teacher_layers`` (the teacher's
depth) and ``attention_layers`` (which layers, 0-based).

A batch of the student run has ``T_b = 2 + L + N_b`` tokens (regions are trimmed to the batch's
largest region count N_b); regions come last, so the batch's tokens are the first ``T_b`` cached
tokens: :func:`trim_teacher` cuts them (and checks that nothing valid is cut).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from pkd.errors import PkdError
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import ArraySpec, StoreSpec

BATCH_KEYS = ("teacher_logits", "teacher_attentions", "teacher_hidden", "teacher_token_mask")


def teacher_store_spec(teacher: nn.Module, layers: Sequence[int], max_question_length: int,
                       max_regions: int, producer: dict | None = None,
                       items_per_chunk: int = 16, items_per_shard: int = 256) -> StoreSpec:
    """The spec of the teacher store of a :class:`FusionTransformer` ``teacher``."""
    depth = teacher.num_layers
    if not layers or any(not 0 <= k < depth for k in layers):
        raise PkdError(f"teacher store: attention layers {list(layers)} not in 0..{depth - 1}")
    heads, hidden = teacher.num_heads, teacher.joint_dim
    answers = teacher.head[-1].out_features
    t = 2 + max_question_length + max_regions
    att_shape = (heads, t, t) if len(layers) == 1 else (len(layers), heads, t, t)
    arrays = (ArraySpec("teacher_logits", (answers,), "float16"),
              ArraySpec("teacher_attentions", att_shape, "float16"),
              ArraySpec("teacher_hidden", (t, hidden), "float16"),
              ArraySpec("teacher_token_mask", (t,), "uint8"),
              ArraySpec("num_tokens", (), "int32"))
    dims = {"num_answers": answers, "num_heads": heads, "hidden_size": hidden, "num_tokens": t,
            "max_question_length": max_question_length, "max_regions": max_regions,
            "teacher_layers": depth, "attention_layers": [int(k) for k in layers]}
    return StoreSpec("teacher", "question_id", arrays, {**(producer or {}), "dtype": "float16"},
                     dims, items_per_chunk, items_per_shard)


def trim_teacher(arrays: dict[str, np.ndarray], num_tokens: int,
                 where: str | Path = "teacher store") -> dict[str, np.ndarray]:
    """Store rows (T tokens) cut to a batch's first ``num_tokens`` tokens, under the batch keys
    (:data:`BATCH_KEYS`; ``teacher_token_mask`` as bool)."""
    mask = arrays["teacher_token_mask"].astype(bool)  # (B, T)
    if num_tokens > mask.shape[1]:
        raise PkdError(f"{where}: the batch has {num_tokens} tokens, the store only "
                       f"{mask.shape[1]} (built with a smaller max_regions / max_question_length)")
    if mask[:, num_tokens:].any():
        raise PkdError(f"{where}: valid teacher tokens beyond the batch's {num_tokens} tokens "
                       "(the teacher regions have more boxes than the student's)")
    n = num_tokens
    return {"teacher_logits": arrays["teacher_logits"],
            "teacher_attentions": arrays["teacher_attentions"][..., :n, :n],
            "teacher_hidden": arrays["teacher_hidden"][:, :n],
            "teacher_token_mask": mask[:, :n]}


def teacher_crop(num_tokens: int) -> dict[str, tuple]:
    """The store arrays a batch of ``num_tokens`` tokens cuts (``FeatureStore.read``'s crop)."""
    n = slice(0, num_tokens)
    return {"teacher_hidden": (n,), "teacher_attentions": (Ellipsis, n, n)}


def read_teacher(store: FeatureStore, rows: np.ndarray, num_tokens: int,
                 out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The teacher batch keys of store ``rows``, cut to a batch of ``num_tokens`` tokens as they
    are read (only those bytes copied; into ``out`` buffers when given)."""
    arrays = store.read(rows, list(BATCH_KEYS), out=out, crop=teacher_crop(num_tokens))
    return trim_teacher(arrays, num_tokens, store.path)


def cached_layers(store: FeatureStore) -> list[int]:
    """The teacher layers (0-based) whose attention maps ``store`` holds."""
    return [int(k) for k in store.spec.dims["attention_layers"]]
