"""Precompute the adapted DistillVLM teacher's outputs into a ``teacher`` store, once.

Student training then reads them per batch instead of running the large teacher every step.
The store (kind ``teacher``, keyed by ``question_id``; docs/design.md) holds per question, padded
to ``T = 1 + max_question_length + 1 + max_regions`` tokens ([CLS] words [SEP] regions)::

    teacher_logits      float16 [A]              answer logits
    teacher_attentions  float16 [H, T, T]        attention maps of the one cached layer, or
                        float16 [n, H, T, T]     of n cached layers (dims.attention_layers)
    teacher_hidden      float16 [T, d]           last-layer token states
    teacher_token_mask  uint8   [T]              1 on valid tokens (checks teacher/student alignment)
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

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pkd.errors import PkdError
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import ArraySpec, StoreSpec
from pkd.train.question_store import checked_batch, fill_question_store
from pkd.train.tasks.distillvlm import teacher_signals

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


def padded_signals(signals: dict[str, torch.Tensor], t: int, one_layer: bool
                   ) -> dict[str, np.ndarray]:
    """Signals of :func:`teacher_signals` (T_b tokens) as store rows padded to ``t`` tokens."""
    mask = signals["teacher_token_mask"].bool()  # (B, T_b)
    pad = t - mask.shape[1]
    if pad < 0:
        raise PkdError(f"teacher store: a batch has {mask.shape[1]} tokens, more than T={t}")
    pair = mask[:, None, None, :, None] & mask[:, None, None, None, :]  # (B, 1, 1, T_b, T_b)
    att = (signals["teacher_attentions"].float() * pair)  # (B, n, H, T_b, T_b)
    att = nn.functional.pad(att, (0, pad, 0, pad))  # (B, n, H, T, T)
    hidden = signals["teacher_hidden"].float() * mask[..., None]  # (B, T_b, d)
    hidden = nn.functional.pad(hidden, (0, 0, 0, pad))  # (B, T, d)
    with np.errstate(over="ignore"):  # beyond float16's range -> inf, recorded as non-finite
        return {
            "teacher_logits": signals["teacher_logits"].float().cpu().numpy().astype(np.float16),
            "teacher_attentions": (att[:, 0] if one_layer else att).cpu().numpy().astype(
                np.float16),
            "teacher_hidden": hidden.cpu().numpy().astype(np.float16),
            "teacher_token_mask": nn.functional.pad(mask, (0, pad)).cpu().numpy().astype(
                np.uint8),
            "num_tokens": mask.sum(dim=1).cpu().numpy().astype(np.int32),
        }


def cache_teacher(teacher: nn.Module, batch_for_ids: Callable[[np.ndarray], dict],
                  question_ids: Sequence[int], out_store_path: str | Path, *,
                  layers: Sequence[int], max_question_length: int, max_regions: int,
                  producer: dict | None = None, batch_size: int = 64,
                  device: str | torch.device = "cpu", overwrite: bool = False,
                  part: tuple[int, int] | None = None, items_per_chunk: int = 16,
                  items_per_shard: int = 256, compression: str = "none") -> Path:
    """Run the frozen ``teacher`` over ``question_ids`` and write the teacher store.

    ``batch_for_ids(ids)`` returns the model batch of those questions in the *teacher's* view
    (``region_*`` = the aligned teacher regions, as for teacher adaptation; ``question_id``
    included). Resumable and splittable by shards (:func:`pkd.train.question_store.fill_question_store`).
    """
    spec = teacher_store_spec(teacher, layers, max_question_length, max_regions, producer,
                              items_per_chunk, items_per_shard)
    t = int(spec.dims["num_tokens"])
    teacher = teacher.to(device).eval()

    def rows_of(ids: np.ndarray) -> dict[str, np.ndarray]:
        batch = checked_batch(batch_for_ids, ids)
        if batch["question_tokens"].shape[1] != max_question_length:
            raise PkdError(f"teacher store: batches have {batch['question_tokens'].shape[1]} "
                           f"question tokens, expected data.max_question_length="
                           f"{max_question_length}")
        inputs = {k: torch.as_tensor(v).to(device) for k, v in batch.items()}
        return padded_signals(teacher_signals(teacher, inputs, layers), t, len(layers) == 1)

    return fill_question_store(out_store_path, spec, question_ids, rows_of,
                               batch_size=batch_size, what="teacher outputs",
                               overwrite=overwrite, part=part, compression=compression)


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


def read_teacher(store: FeatureStore, rows: np.ndarray, num_tokens: int) -> dict[str, np.ndarray]:
    """The teacher batch keys of store ``rows``, cut to a batch of ``num_tokens`` tokens."""
    arrays = store.read(rows, list(BATCH_KEYS))
    return trim_teacher(arrays, num_tokens, store.path)


def cached_layers(store: FeatureStore) -> list[int]:
    """The teacher layers (0-based) whose attention maps ``store`` holds."""
    return [int(k) for k in store.spec.dims["attention_layers"]]
