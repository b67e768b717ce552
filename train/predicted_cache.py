"""The ``predicted`` store: PKD's frozen stage-1 outputs, computed once (``pkd extract predicted``,
:mod:`pkd.train.predicted_extract` writes it) and read per batch in stage 2.

In stage 2 with frozen predictors (``finetune_predictors=false``) everything the predictors and
the foundation head compute from one question is a constant of training: its predicted features
``ṽ``, ``t̃`` (:class:`pkd.train.tasks.pkd_predictors.Predicted`), their unit-norm foundation
embeddings ``e_v = F.embed_image(ṽ)``, ``e_t = F.embed_text(t̃)`` (the memory's rows, and the
embeddings of the predicted pairs D reads in ``L_mkd``) and the teacher's logit on the positive
pair ``M(ṽ, t̃)``. Measured before this cache, the frozen predictors and the head took more than
half of a stage-2 step (``benchmarks/bench_steps.py``). Only the negatives' teacher logits
``M(ṽ_i, t̃_π(i))`` depend on the batch (π is drawn per batch) and stay online.

The store (kind ``predicted``, keyed by ``question_id``, training split) holds per question::

    predicted_vision       float16 [P', d_v]    ṽ
    predicted_text         float16 [L', d_t]    t̃ (token-wise mode: zero beyond the text)
    num_predicted_text     int32   []           valid tokens of t̃
    predicted_image_embed  float16 [d_e]        e_v
    predicted_text_embed   float16 [d_e]        e_t
    predicted_teacher      float32 []           M(ṽ, t̃)

``producer`` records a digest of the predictor weights (:func:`weights_digest`), the foundation
model of the head, and the regions / foundation stores' producers: stage 2 refuses a store made
by other predictors (:func:`check_predicted_store`). Values are rounded to float16, so the cached
losses match the online ones to ~1e-3 (``tests/test_predicted_cache.py``). This module is the
store's layout and reading; it imports no task.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from torch import nn

from pkd.errors import PkdError
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import ArraySpec, StoreSpec

BATCH_KEYS = {  # store array -> batch key
    "predicted_vision": "predicted_vision",
    "predicted_text": "predicted_text",
    "predicted_image_embed": "predicted_image_embed",
    "predicted_text_embed": "predicted_text_embed",
    "predicted_teacher": "predicted_teacher",
}


def predicted_store_path(train_store: str | Path, split: str) -> Path:
    """The store of ``split``'s predictions beside the training split's ``train_store``:
    ``<stem>-<split>.zarr`` (written by ``pkd extract predicted --split``; read by the probes
    and, with ``model.foundation_inputs=predicted``, to validate and evaluate on ``split``)."""
    train_store = Path(train_store)
    return train_store.with_name(f"{train_store.stem}-{split}.zarr")


def same_predictors(store: FeatureStore, train_store: FeatureStore) -> bool:
    """Whether ``store`` holds predictions of the predictors that made ``train_store`` (the
    ``predictors_digest`` of both producers)."""
    return (store.spec.producer.get("predictors_digest")
            == train_store.spec.producer.get("predictors_digest"))


def weights_digest(module: nn.Module) -> str:
    """First 16 hex digits of sha256 over ``module``'s state (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def predicted_store_spec(vision: tuple[int, int], text: tuple[int, int], embed_dim: int,
                         producer: dict, items_per_chunk: int = 64,
                         items_per_shard: int = 1024) -> StoreSpec:
    """Spec of the store for ``vision`` (P', d_v), ``text`` (L', d_t) and ``embed_dim`` d_e."""
    arrays = (ArraySpec("predicted_vision", vision, "float16"),
              ArraySpec("predicted_text", text, "float16"),
              ArraySpec("num_predicted_text", (), "int32"),
              ArraySpec("predicted_image_embed", (embed_dim,), "float16"),
              ArraySpec("predicted_text_embed", (embed_dim,), "float16"),
              ArraySpec("predicted_teacher", (), "float32"))
    dims = {"vision_tokens": vision[0], "vision_dim": vision[1], "text_tokens": text[0],
            "text_dim": text[1], "embed_dim": embed_dim}
    return StoreSpec("predicted", "question_id", arrays, {**producer, "dtype": "float16"}, dims,
                     items_per_chunk, items_per_shard)


def read_predicted(store: FeatureStore, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Batch keys of store ``rows``: the arrays of :data:`BATCH_KEYS`, ``predicted_text`` cut to
    the batch's longest text and ``predicted_text_mask`` (B, L_b) bool."""
    arrays = store.read(rows, [*BATCH_KEYS, "num_predicted_text"])
    count = arrays.pop("num_predicted_text")
    n = max(1, int(count.max()) if len(count) else 1)
    out = {BATCH_KEYS[k]: v for k, v in arrays.items()}
    out["predicted_text"] = out["predicted_text"][:, :n]
    out["predicted_text_mask"] = np.arange(n)[None, :] < count[:, None]
    return out


def check_predicted_store(store: FeatureStore, digest: str, inputs: dict[str, FeatureStore],
                          where: str) -> None:
    """Refuse a store made by other predictors, or from other input stores (``inputs``: role ->
    the run's open store, e.g. ``regions``): one line with the reason."""
    made = store.spec.producer.get("predictors_digest")
    if made != digest:
        raise PkdError(f"{where}: built by other predictors (weights digest {made}, this run's "
                       f"method.pkd.predictors give {digest}); re-run pkd extract predicted")
    for role, given in inputs.items():
        if store.spec.producer.get(role) != given.spec.producer:
            raise PkdError(f"{where}: built from another {role} store than this run's "
                           f"{given.path}; re-run pkd extract predicted")
