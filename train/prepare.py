"""Everything a run needs before its first step, shared by training and evaluation.

Vocabularies are built from the training split once and saved in the run folder
(``answers.json``, ``words.json``); resuming and evaluating read them back, so a checkpoint's
classifier rows always mean the same answers. Stores are opened read-only; their provenance is
recorded in the run (``stores.json``) and a later resume / evaluation with stores made by another
producer is refused with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pkd.data.answers import AnswerVocab
from pkd.data.vqa import dataset_files, load_split
from pkd.errors import PkdError, StoreMismatch
from pkd.stores import FeatureStore
from pkd.train.config import TrainConfig
from pkd.train.data import SplitData, Stores, VQABatches, attach, load_split_data
from pkd.train.text import QuestionTokenizer


@dataclass
class Vocabs:
    answers: AnswerVocab
    words: QuestionTokenizer


def vocabs(cfg: TrainConfig, run_dir: Path, create: bool) -> Vocabs:
    """Load the run's vocabularies, or build them from the training split (``create``)."""
    apath, wpath = run_dir / "answers.json", run_dir / "words.json"
    if apath.is_file() and wpath.is_file():
        return Vocabs(AnswerVocab.load(apath), QuestionTokenizer.load(wpath))
    if not create:
        raise PkdError(f"{run_dir}: no answers.json / words.json (not a pkd run folder)")
    qpath, anpath = dataset_files(Path(cfg.data.root), cfg.data.dataset, cfg.data.train_split)
    items = load_split(qpath, anpath)
    answers = AnswerVocab.build([a for _, a in items], min_count=cfg.data.answer_min_count)
    words = QuestionTokenizer.build([q.question for q, _ in items])
    run_dir.mkdir(parents=True, exist_ok=True)
    answers.save(apath)
    words.save(wpath)
    return Vocabs(answers, words)


def open_stores(cfg: TrainConfig) -> Stores:
    """Open the configured stores read-only, checking each one's kind."""
    if not cfg.data.regions:
        raise PkdError("data.regions: no regions store configured (pkd extract regions ...)")
    fi, ft = cfg.data.foundation_image, cfg.data.foundation_text
    return Stores(
        regions=FeatureStore.open(cfg.data.regions, kind="regions"),
        foundation_image=FeatureStore.open(fi, kind="foundation_image") if fi else None,
        foundation_text=FeatureStore.open(ft, kind="foundation_text") if ft else None,
    )


def store_provenance(stores: Stores) -> dict:
    """``{role: {"producer": ..., "dims": ...}}`` of every open store."""
    out = {}
    for role in ("regions", "foundation_image", "foundation_text"):
        store = getattr(stores, role)
        if store is not None:
            out[role] = {"producer": store.spec.producer, "dims": store.spec.dims}
    return out


def check_provenance(run_dir: Path, stores: Stores) -> None:
    """Record store provenance on the first call; refuse other stores afterwards."""
    path = run_dir / "stores.json"
    now = store_provenance(stores)
    if not path.is_file():
        path.write_text(json.dumps(now, indent=2, sort_keys=True))
        return
    saved = json.loads(path.read_text())
    for role, info in now.items():
        before = saved.get(role)
        if before is None:
            continue
        for part in ("producer", "dims"):
            for key in sorted(set(before[part]) | set(info[part])):
                if before[part].get(key) != info[part].get(key):
                    raise StoreMismatch(
                        f"{getattr(stores, role).path}: {part}.{key} is "
                        f"{info[part].get(key)!r}, but this run was trained with "
                        f"{before[part].get(key)!r} (see {path})")


def split_batches(cfg: TrainConfig, split: str, v: Vocabs, stores: Stores,
                  foundation_tokens: bool = False) -> tuple[SplitData, VQABatches]:
    """One split's questions joined with the stores, as a batch dataset."""
    data = load_split_data(cfg.data.root, cfg.data.dataset, split, v.answers, v.words,
                           cfg.data.max_question_length)
    data, rows = attach(data, stores)
    return data, VQABatches(data, stores, rows, len(v.answers), foundation_tokens)


def model_dims(stores: Stores) -> tuple[int, int | None]:
    """(region feature dim, foundation embedding dim or None) from the store attributes."""
    region_dim = int(stores.regions.spec.dims["feature_dim"])
    fdim = None
    if stores.foundation_image is not None:
        fdim = int(stores.foundation_image.spec.dims["embed_dim"])
    return region_dim, fdim

