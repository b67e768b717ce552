"""``pkd extract predicted``: run PKD's frozen stage-1 predictors once into a ``predicted`` store.

Driven by the stage-2 ``pkd`` config: the predictors of ``method.pkd.predictors``, the frozen
foundation head of the foundation stores, the training split joined with the regions and
foundation stores (tokens included; with ``data.val_fraction > 0`` its carved validation share
too), and the store goes to ``data.predicted`` (:mod:`pkd.train.predicted_cache`); ``split``
names another split to predict (its ``producer`` records which; the store goes beside
``data.predicted`` as ``<stem>-<split>.zarr`` unless ``out`` is given). The vocabularies are the
stage-1 run's, as in stage 2. The store's layout and reading: :mod:`pkd.train.predicted_cache`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pkd.errors import PkdError
from pkd.stores.reader import FeatureStore
from pkd.stores.schema import StoreSpec, config_hash
from pkd.train.config import TrainConfig
from pkd.train.data import Stores
from pkd.train.predicted_cache import (
    predicted_store_path,
    predicted_store_spec,
    same_predictors,
    weights_digest,
)
from pkd.train.prepare import open_stores, split_batches, vocab_source, vocabs
from pkd.train.question_store import batches_by_id, checked_batch, fill_question_store
from pkd.train.tasks import method_of
from pkd.train.tasks.pkd import PKD
from pkd.train.tasks.pkd_predictors import (
    build_predictors,
    load_predictors,
    pkd_setup,
    predicted_view,
)


def extract_predicted(cfg: TrainConfig, out: str | None = None, overwrite: bool = False,
                      device: str = "cpu", split: str | None = None) -> Path:
    """Cache ṽ, t̃, their embeddings and the positive teacher logit for the training split
    (what stage 2 reads), or for ``split`` (another split's questions, for probes of what the
    predictors carry: :mod:`pkd.demo.probe_predicted`)."""
    p = cfg.method.pkd
    train_split = split in (None, cfg.data.train_split)
    path = out or (cfg.data.predicted if train_split or not cfg.data.predicted
                   else str(predicted_store_path(cfg.data.predicted, split)))
    if not isinstance(method_of(cfg), PKD) or not path or not p.predictors:
        raise PkdError("extract predicted: give a pkd (stage 2) config with data.predicted (the "
                       "store to write) and method.pkd.predictors (the stage-1 run)")
    if not p.use_predictors or p.finetune_predictors:
        raise PkdError("extract predicted: the cache holds frozen predictors' outputs "
                       "(needs method.pkd.use_predictors=true, finetune_predictors=false)")
    # the store is not there yet; the training split's store covers its carved validation share
    # too (model.foundation_inputs=predicted validates on it)
    base = replace(cfg, data=replace(cfg.data, predicted="", val_fraction=0.0))
    v = vocabs(base, vocab_source(base), create=False)
    stores = open_stores(base)
    setup = pkd_setup(base, stores, len(v.words), True)
    predictors = load_predictors(build_predictors(p, setup), p.predictors).eval()
    split = split or base.data.train_split
    made_from = {"foundation_image": stores.foundation_image.spec.producer,
                 "regions": stores.regions.spec.producer}
    if not train_split and p.predictor_tokens > 0:
        # pooled predictors read the question and the regions only: another split needs no
        # foundation features (PKD's test time has none); token-wise t̃ is cut to the real text
        stores = Stores(regions=stores.regions)
    _, batches = split_batches(base, split, v, stores, foundation_tokens=True, teacher=True)
    head = setup.head
    producer = {"predictors": str(Path(p.predictors).resolve()),
                "predictors_digest": weights_digest(predictors),
                **made_from,
                "vocab": config_hash([v.answers.answers, v.words.words]), "split": split}
    spec = predicted_store_spec((predictors.vision.queries.shape[0], head.vision_dim),
                                (predictors.text.queries.shape[0], head.text_dim),
                                head.embed_dim, producer)
    return cache_predicted(predictors, head, p.predictor_tokens == 0, batches_by_id(batches),
                           batches.split.question_ids, path, spec, device=device,
                           overwrite=overwrite)


def split_predictions(cfg: TrainConfig, split: str) -> Path:
    """``split``'s predictions beside ``data.predicted`` (the training split's store, which must
    exist), extracted unless a complete store of the same predictors is there: a partial one
    resumes, a stale one (other predictors) is rebuilt."""
    train_store = Path(cfg.data.predicted)
    if not (train_store / "zarr.json").is_file():
        raise PkdError(f"{train_store}: no predicted store (run pkd extract predicted first)")
    train = FeatureStore.open(train_store, kind="predicted")
    store = predicted_store_path(train_store, split)
    made = FeatureStore.open(store, kind="predicted") if store.exists() else None
    stale = made is not None and not same_predictors(made, train)
    if made is None or stale or not made.complete:  # a partial store resumes
        extract_predicted(cfg, str(store), overwrite=stale, split=split)
        made = FeatureStore.open(store, kind="predicted")
        if not same_predictors(made, train):
            raise PkdError(f"{train_store}: made by other predictors than the config's "
                           f"method.pkd.predictors ({cfg.method.pkd.predictors})")
    return store


@torch.no_grad()
def predicted_rows(predictors: nn.Module, head: nn.Module, tokenwise: bool,
                   batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Store rows of one batch: the frozen ``predictors`` and ``head`` exactly as stage 2's
    online forward runs them (:meth:`pkd.train.tasks.pkd.PKDTask.predict`)."""
    pred = predicted_view(predictors(batch), batch, tokenwise)
    mask = pred.text_mask  # (B, L_b)
    text = pred.text * mask[..., None]
    width = predictors.text.queries.shape[0]  # L' (token-wise: the store's max_text_len)
    text = nn.functional.pad(text, (0, 0, 0, width - text.shape[1]))  # (B, L', d_t)
    half = np.float16
    return {
        "predicted_vision": pred.vision.cpu().numpy().astype(half),
        "predicted_text": text.cpu().numpy().astype(half),
        "num_predicted_text": mask.sum(1).cpu().numpy().astype(np.int32),
        "predicted_image_embed": head.embed_image(pred.vision).cpu().numpy().astype(half),
        "predicted_text_embed": head.embed_text(pred.text, mask).cpu().numpy().astype(half),
        "predicted_teacher": head(pred.vision, pred.text, mask).float().cpu().numpy(),
    }


def cache_predicted(predictors: nn.Module, head: nn.Module, tokenwise: bool, batch_for_ids,
                    question_ids, out_store_path: str | Path, spec: StoreSpec,
                    batch_size: int = 64, device: str = "cpu", overwrite: bool = False) -> Path:
    """Write the store of ``question_ids`` (resumable by shards:
    :func:`pkd.train.question_store.fill_question_store`)."""
    predictors, head = predictors.to(device).eval(), head.to(device).eval()

    def rows_of(ids: np.ndarray) -> dict[str, np.ndarray]:
        batch = checked_batch(batch_for_ids, ids)
        return predicted_rows(predictors, head, tokenwise,
                              {k: torch.as_tensor(v).to(device) for k, v in batch.items()})

    return fill_question_store(out_store_path, spec, question_ids, rows_of,
                               batch_size=batch_size, what="predicted features",
                               overwrite=overwrite)
