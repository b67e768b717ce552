"""``pkd extract teacher``: run the frozen, adapted DistillVLM teacher once into a teacher store.

Driven by the *student's* distillvlm config: the teacher is ``method.distill.teacher_model`` with
the weights of ``method.distill.teacher_checkpoint`` (a teacher-adapt run), its inputs are the
aligned ``data.teacher_regions`` (teacher features on the student's boxes), the attention layers
cached are those the student's layer mapping reads, and the store goes to ``data.teacher``. The
vocabularies are the teacher run's, which the student copies, so ids line up. The store's layout
and reading: :mod:`pkd.train.teacher_cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pkd.errors import PkdError
from pkd.stores import FeatureStore
from pkd.stores.schema import config_hash
from pkd.train.config import TrainConfig
from pkd.train.config_load import config_to_dict
from pkd.train.data import Stores
from pkd.train.losses.attention import teacher_layers_needed
from pkd.train.prepare import split_batches, vocab_source, vocabs
from pkd.train.question_store import batches_by_id, checked_batch, fill_question_store
from pkd.train.store_checks import check_complete
from pkd.train.tasks import method_of
from pkd.train.tasks.distillvlm import DistillVLM, load_teacher, teacher_signals
from pkd.train.teacher_cache import teacher_store_spec


def extract_teacher(cfg: TrainConfig, out: str | None = None, overwrite: bool = False,
                    part: tuple[int, int] | None = None, device: str = "cpu",
                    compression: str = "none") -> Path:
    """Cache teacher logits, attention maps and hidden states for the training split
    (``compression``: none | lz4, :func:`pkd.stores.writer.codec`)."""
    d = cfg.method.distill
    path = out or cfg.data.teacher
    if not isinstance(method_of(cfg), DistillVLM) or not path or not cfg.data.teacher_regions:
        raise PkdError("extract teacher: give a distillvlm config with data.teacher (the store "
                       "to write), data.teacher_regions and method.distill.teacher_checkpoint")
    v = vocabs(cfg, vocab_source(cfg), create=False)
    regions = FeatureStore.open(cfg.data.teacher_regions, kind="regions")
    check_complete(regions, cfg.data.allow_incomplete, "extract the teacher from")
    teacher = load_teacher(d, len(v.words), len(v.answers), int(regions.spec.dims["feature_dim"]))
    data, batches = split_batches(cfg, cfg.data.train_split, v, Stores(regions=regions))
    producer = {"teacher_checkpoint": str(Path(d.teacher_checkpoint).resolve()),
                "teacher_model": config_hash(config_to_dict(d.teacher_model)),
                "teacher_regions": regions.spec.producer,
                "vocab": config_hash([v.answers.answers, v.words.words])}
    layers = teacher_layers_needed(cfg.model.num_layers, d.teacher_model.num_layers,
                                   d.attention_layers)
    return cache_teacher(teacher, batches_by_id(batches), data.question_ids, path, layers=layers,
                         max_question_length=cfg.data.max_question_length,
                         max_regions=int(regions.spec.dims["max_regions"]), producer=producer,
                         overwrite=overwrite, part=part, device=device,
                         compression=compression)


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
    included). Resumable and splittable by shards
    (:func:`pkd.train.question_store.fill_question_store`).
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
