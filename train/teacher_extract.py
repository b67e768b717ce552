"""``pkd extract teacher``: run the frozen, adapted DistillVLM teacher once into a teacher store.

Driven by the *student's* distillvlm config: the teacher is ``method.distill.teacher_model`` with
the weights of ``method.distill.teacher_checkpoint`` (a teacher-adapt run), its inputs are the
aligned ``data.teacher_regions`` (teacher features on the student's boxes), the attention layers
cached are those the student's layer mapping reads, and the store goes to ``data.teacher``. The
vocabularies are the teacher run's, which the student copies, so ids line up.
"""

from __future__ import annotations

from pathlib import Path

from pkd.errors import PkdError
from pkd.stores import FeatureStore
from pkd.stores.schema import config_hash
from pkd.train.config import TrainConfig, config_to_dict
from pkd.train.data import Stores
from pkd.train.losses.attention import teacher_layers_needed
from pkd.train.prepare import check_complete, split_batches, vocab_source, vocabs
from pkd.train.question_store import batches_by_id
from pkd.train.tasks import method_of
from pkd.train.tasks.distillvlm import DistillVLM, load_teacher
from pkd.train.teacher_cache import cache_teacher


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
