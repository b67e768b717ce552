"""A split's questions joined with the run's stores: the carved validation share, the questions
dropped for lacking features, and the split validation reads.

``data.val_fraction > 0`` carves a validation share (:data:`CARVED_VAL`) out of the training
images (:func:`held_out`, a fixed hash of the image id); the training split then excludes them.
:func:`join_split` drops the questions a joined store has no features for and counts them per
store on stderr. Which stores a split joins — every store for training, only those the VQA
model's forward reads otherwise — is the caller's choice (:func:`pkd.train.prepare.split_batches`).
A task built from the training split reads :func:`training_questions`: exactly the trainer's
training questions (LMH's answer prior counts those).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pkd.errors import PkdError
from pkd.train.config import TrainConfig
from pkd.train.data import SplitData, Stores, Vocabs, attach, keep_rows, load_split_data
from pkd.train.distributed import note

CARVED_VAL = "val_from_train"  # the validation share carved from the training images


def held_out(image_ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for the images of the carved validation share: a fixed hash of the image id
    (Knuth's multiplicative hash) below ``fraction``, so the carve never depends on order."""
    h = (image_ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return h.astype(np.float64) / 2**32 < fraction


def join_split(cfg: TrainConfig, split: str, v: Vocabs, stores: Stores
               ) -> tuple[SplitData, dict[str, np.ndarray]]:
    """One split's questions joined with ``stores`` (each store's row per question).

    ``split`` may be ``"<train_split>"`` or, with ``data.val_fraction > 0``, the carved
    validation share ``"val_from_train"`` (the training split then excludes those images).
    Questions without features in a store are dropped and counted per store on stderr.
    """
    carved = split == CARVED_VAL
    name = cfg.data.train_split if carved else split
    data = load_split_data(cfg.data.root, cfg.data.dataset, name, v.answers, v.words,
                           cfg.data.max_question_length)
    if cfg.data.val_fraction > 0 and name == cfg.data.train_split:
        val = held_out(data.image_ids, cfg.data.val_fraction)
        data = replace(keep_rows(data, val if carved else ~val), name=split, dropped=0)
    data, rows = attach(data, stores)
    if data.dropped:
        lacks = ", ".join(f"{role} {n}" for role, n in sorted(data.missing.items()))
        note(f"{split}: {data.dropped} of {data.dropped + len(data)} questions dropped "
             f"(no features in: {lacks})")
    return data, rows


def training_questions(cfg: TrainConfig, v: Vocabs, stores: Stores) -> SplitData:
    """The questions the trainer trains on: the training split (less the carved validation
    share) joined with every store the run opened, as :func:`pkd.train.prepare.split_batches`
    joins it for training."""
    return join_split(cfg, cfg.data.train_split, v, stores)[0]


def require_questions(data: SplitData, role: str) -> None:
    """Refuse an empty ``role`` (``"validation"`` / ``"training"``) split before training starts:
    ``best/`` picked on an empty validation split would be a model scored on nothing."""
    if len(data):
        return
    if data.dropped:
        lacks = ", ".join(f"{r} {n}" for r, n in sorted(data.missing.items()))
        why = f"all {data.dropped} questions dropped, no features in: {lacks}"
    else:
        why = "the split holds no questions"
    stake = "best/ would be chosen on nothing" if role == "validation" else "nothing to train on"
    raise PkdError(f"{role} split {data.name!r} is empty ({why}): {stake}; training not started")


def val_split_name(cfg: TrainConfig) -> str:
    """The split validation (and best-checkpoint selection) reads — never the test split."""
    return CARVED_VAL if cfg.data.val_fraction > 0 else cfg.data.val_split
