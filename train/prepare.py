"""Everything a run needs before its first step, shared by training and evaluation.

Vocabularies are built from the training split once and saved in the run folder
(``answers.json``, ``words.json``); resuming and evaluating read them back, so a checkpoint's
classifier rows always mean the same answers. Stores are opened read-only; their provenance is
recorded in the run (``stores.json``) and a later resume / evaluation with stores made by another
producer is refused with the reason. A store with shards still to extract is refused too (naming
it and what is missing) unless ``data.allow_incomplete``; then the questions it lacks are dropped
and counted per split on stderr.

Training joins every configured store (the losses read foundation / teacher features); validation
and evaluation join only what the VQA model's own forward reads (:func:`forward_stores`): the
regions, and the foundation embeddings only with ``model.use_foundation_features``. So a PKD run
(memory fusion inside the model; predictors and foundation head are training-only) evaluates on a
split no foundation features were ever extracted for. With ``model.foundation_inputs=predicted``
the foundation inputs are the frozen predictors' ``e_v``, ``e_t`` instead: each split then reads
its own predicted store (:func:`split_predicted`).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pkd.data.answers import AnswerVocab
from pkd.data.vqa import dataset_files, load_split
from pkd.errors import PkdError, StoreMismatch
from pkd.fsio import write_json
from pkd.stores import FeatureStore
from pkd.stores.records import n_shards, shard_range
from pkd.stores.schema import config_hash
from pkd.train.config import TrainConfig
from pkd.train.data import (
    SplitData,
    Stores,
    Vocabs,
    VQABatches,
    attach,
    keep_rows,
    load_split_data,
)
from pkd.train.models import build_model
from pkd.train.models.vlm import build_vlm, foundation_tokenizer
from pkd.train.predicted_cache import predicted_store_path, same_predictors
from pkd.train.prompts import PromptTokenizer, is_prompt_file
from pkd.train.tasks import method_of
from pkd.train.text import QuestionTokenizer

CARVED_VAL = "val_from_train"  # the validation share carved from the training images


def run_config(cfg: TrainConfig) -> TrainConfig:
    """The config the model and data are built from (the method's ``run_config``: teacher-adapt
    trains the teacher on the aligned teacher regions; every other method ``model`` on
    ``data.regions``)."""
    return method_of(cfg).run_config(cfg)


def vocab_source(cfg: TrainConfig) -> Path | None:
    """The earlier run whose vocabularies this run must share, if any (the method's
    ``vocab_source``: DistillVLM students the adapted teacher's, PKD stage 2 the stage-1
    predictors'), so word and answer ids line up."""
    path = method_of(cfg).vocab_source(cfg)
    if not path:
        return None
    for folder in (Path(path), *Path(path).parents):
        if (folder / "answers.json").is_file() and (folder / "words.json").is_file():
            return folder
    raise PkdError(f"{path}: no answers.json / words.json above it (give a checkpoint of the "
                   "earlier run, e.g. RUN or RUN/best)")


def vocabs(cfg: TrainConfig, run_dir: Path, create: bool) -> Vocabs:
    """Load the run's vocabularies, or build them from the training split (``create``).

    Runs that build on an earlier run copy its vocabularies (:func:`vocab_source`).
    """
    apath, wpath = run_dir / "answers.json", run_dir / "words.json"
    if apath.is_file() and wpath.is_file():
        return Vocabs(AnswerVocab.load(apath), _load_words(cfg, wpath))
    if not create:
        raise PkdError(f"{run_dir}: no answers.json / words.json (not a pkd run folder)")
    source = vocab_source(cfg)
    if source is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "answers.json", apath)
        shutil.copyfile(source / "words.json", wpath)
        return vocabs(cfg, run_dir, create=False)
    qpath, anpath = dataset_files(Path(cfg.data.root), cfg.data.dataset, cfg.data.train_split)
    items = load_split(qpath, anpath)
    answers = AnswerVocab.build([a for _, a in items], min_count=cfg.data.answer_min_count)
    words = _new_words(cfg, [q.question for q, _ in items])
    run_dir.mkdir(parents=True, exist_ok=True)
    answers.save(apath)
    words.save(wpath)
    return Vocabs(answers, words)


def _prompt_style(cfg: TrainConfig) -> str:
    style = run_config(cfg).model.prompt
    return ("synth" if cfg.data.dataset == "synth" else "generic") if style == "auto" else style


def _new_words(cfg: TrainConfig, questions: list[str]) -> QuestionTokenizer | PromptTokenizer:
    """The word vocabulary of a new run: the questions' words, or (arch vlm) the foundation
    tokenizer behind the prompts."""
    model = run_config(cfg).model
    if model.arch != "vlm":
        return QuestionTokenizer.build(questions)
    return PromptTokenizer(foundation_tokenizer(model.foundation), model.foundation,
                           _prompt_style(cfg))


def _load_words(cfg: TrainConfig, path: Path) -> QuestionTokenizer | PromptTokenizer:
    if not is_prompt_file(path):
        return QuestionTokenizer.load(path)
    model = run_config(cfg).model
    if model.arch != "vlm" or not model.foundation:
        raise PkdError(f"{path}: a prompt tokenizer (model.arch=vlm run); give model.arch=vlm "
                       "and model.foundation")
    return PromptTokenizer.load(path, foundation_tokenizer(model.foundation))


def open_stores(cfg: TrainConfig, evaluation: bool = False) -> Stores:
    """Open the configured stores read-only, checking each one's kind and completeness.

    ``evaluation``: only the stores the VQA model's forward reads (:func:`forward_stores`) — the
    foundation and teacher stores feed training losses only, so they need not exist (or cover the
    split) to evaluate a run that does not feed the model foundation features.
    """
    if not cfg.data.regions:
        raise PkdError("data.regions: no regions store configured (pkd extract regions ...)")
    predicted_inputs = reads_predicted(cfg)
    cfg = run_config(cfg)
    d = cfg.data
    teachers = () if evaluation else method_of(cfg).teacher_stores(cfg)
    foundation = not evaluation or (cfg.model.use_foundation_features and not predicted_inputs)

    cache = d.chunk_cache_mib << 20
    purpose = "evaluate" if evaluation else "train"

    def opened(path: str | None, kind: str, use: bool = True) -> FeatureStore | None:
        if not (path and use):
            return None
        store = FeatureStore.open(path, kind=kind, cache_bytes=cache)
        check_complete(store, d.allow_incomplete, purpose)
        return store

    predicted = opened(d.predicted, "predicted", "predicted" in teachers or predicted_inputs)
    made_for = predicted.spec.producer.get("split") if predicted is not None else None
    if made_for is not None and made_for != d.train_split:  # pkd extract predicted --split
        raise PkdError(f"{d.predicted}: predictions of split {made_for!r}, stage 2 trains on "
                       f"{d.train_split!r}; give the training split's store")
    return Stores(
        regions=opened(d.regions, "regions"),
        foundation_image=opened(d.foundation_image, "foundation_image", foundation),
        foundation_text=opened(d.foundation_text, "foundation_text", foundation),
        teacher_regions=opened(d.teacher_regions, "regions", "teacher_regions" in teachers),
        teacher=opened(d.teacher, "teacher", "teacher" in teachers),
        predicted=predicted,
    )


def missing_items(store: FeatureStore) -> int:
    """Items of ``store`` in shards without a completion record (not extracted yet)."""
    ips = store.spec.items_per_shard
    return sum(len(shard_range(k, store.n_items, ips)) for k in store.pending)


def check_complete(store: FeatureStore, allow: bool, purpose: str = "train") -> None:
    """Refuse ``store`` if shards are still to extract (one line naming it and what is missing);
    with ``allow`` (``data.allow_incomplete``) note it on stderr instead."""
    if store.complete:
        return
    total = n_shards(store.n_items, store.spec.items_per_shard)
    what = (f"{len(store.pending)} of {total} shards ({missing_items(store)} of "
            f"{store.n_items} items) not extracted")
    if not allow:
        raise PkdError(f"{store.path}: incomplete {store.spec.kind} store, {what} (finish it by "
                       "re-running the same pkd extract command, or set "
                       f"data.allow_incomplete=true to {purpose} on the extracted items only)")
    note(f"warning: {store.path}: incomplete {store.spec.kind} store, {what}; "
         "data.allow_incomplete=true: questions without its features are dropped")


def note(message: str) -> None:
    """One line on stderr, from the main process only (under torchrun, rank 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_rank() != 0:
        return
    print(message, file=sys.stderr, flush=True)


def forward_stores(cfg: TrainConfig, stores: Stores) -> Stores:
    """The stores the VQA model's own forward reads (validation, evaluation): the regions, and
    the foundation stores only with ``model.use_foundation_features`` (its ``image_embeds`` /
    ``text_embeds`` input). PKD's memory is part of the model; its predictors, foundation head
    and the foundation tokens serve the training losses only."""
    predicted = reads_predicted(cfg)
    keep = run_config(cfg).model.use_foundation_features and not predicted
    return Stores(regions=stores.regions,
                  foundation_image=stores.foundation_image if keep else None,
                  foundation_text=stores.foundation_text if keep else None,
                  predicted=stores.predicted if predicted else None)


def reads_predicted(cfg: TrainConfig) -> bool:
    """Whether the VQA model's forward reads PKD's predicted embeddings
    (``model.use_foundation_features`` with ``model.foundation_inputs=predicted``)."""
    m = run_config(cfg).model
    return m.use_foundation_features and m.foundation_inputs == "predicted"


def split_predicted(cfg: TrainConfig, stores: Stores, split: str, v: Vocabs) -> FeatureStore:
    """The predicted store the model's forward reads on ``split``: ``data.predicted`` for the
    training split and its carved validation share, else ``<stem>-<split>.zarr`` beside it
    (``pkd extract predicted --split``), which must hold that split's predictions, made by the
    same predictors as the training store and with the run's vocabularies (one line if not)."""
    d = cfg.data
    train = stores.predicted
    if train is None:
        raise PkdError(f"{d.predicted or 'data.predicted'}: model.foundation_inputs=predicted "
                       "needs the training split's predicted store (pkd extract predicted)")
    _check_vocab(train, v)
    if split in (d.train_split, CARVED_VAL):
        return train
    path = predicted_store_path(d.predicted, split)
    if not (path / "zarr.json").is_file():
        raise PkdError(f"{path}: no predictions of split {split!r} (model.foundation_inputs="
                       f"predicted reads them: pkd extract predicted CONFIG --split {split})")
    store = FeatureStore.open(path, kind="predicted", cache_bytes=d.chunk_cache_mib << 20)
    check_complete(store, d.allow_incomplete, "evaluate")
    made = store.spec.producer
    if made.get("split") != split:
        raise PkdError(f"{path}: predictions of split {made.get('split')!r}, not {split!r}")
    if not same_predictors(store, train):
        raise PkdError(f"{path}: made by other predictors (weights digest "
                       f"{made.get('predictors_digest')}) than {d.predicted} "
                       f"({train.spec.producer.get('predictors_digest')}); "
                       f"re-run pkd extract predicted --split {split}")
    _check_vocab(store, v)
    return store


def _check_vocab(store: FeatureStore, v: Vocabs) -> None:
    """Refuse predictions made with other vocabularies (the predictors read word ids)."""
    made = store.spec.producer.get("vocab")
    mine = config_hash([v.answers.answers, v.words.words])
    if made is not None and made != mine:
        raise PkdError(f"{store.path}: predictions made with other vocabularies (hash {made}, "
                       f"this run's {mine}); train on the stage-1 run's vocabularies")


def store_provenance(stores: Stores) -> dict:
    """``{role: {"producer", "dims", "inputs_sha256"}}`` of every open store
    (``inputs_sha256``: the digest of the images / texts it was made from, when recorded)."""
    out = {}
    for role in ("regions", "foundation_image", "foundation_text", "teacher_regions", "teacher",
                 "predicted"):
        store = getattr(stores, role)
        if store is not None:
            out[role] = {"producer": store.spec.producer, "dims": store.spec.dims}
            if store.complete and store.inputs_sha256 is not None:  # partial: still growing
                out[role]["inputs_sha256"] = store.inputs_sha256
    return out


def check_provenance(run_dir: Path, stores: Stores) -> None:
    """Record store provenance on the first call; refuse other stores afterwards (another
    producer or dims, or the same options run on other images: ``inputs_sha256``)."""
    path = run_dir / "stores.json"
    now = store_provenance(stores)
    if not path.is_file():
        write_json(path, now, indent=2, sort_keys=True)
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
        was, now_digest = before.get("inputs_sha256"), info.get("inputs_sha256")
        if was is not None and now_digest is not None and was != now_digest:
            raise StoreMismatch(
                f"{getattr(stores, role).path}: made from other inputs than this run was "
                f"trained with (inputs digest {now_digest[:12]}…, the run's {was[:12]}…: "
                f"images or texts changed and the store was re-extracted; see {path})")


def held_out(image_ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for the images of the carved validation share: a fixed hash of the image id
    (Knuth's multiplicative hash) below ``fraction``, so the carve never depends on order."""
    h = (image_ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return h.astype(np.float64) / 2**32 < fraction


def split_batches(cfg: TrainConfig, split: str, v: Vocabs, stores: Stores,
                  foundation_tokens: bool = False, teacher: bool = False,
                  type_vocab: list[str] | None = None) -> tuple[SplitData, VQABatches]:
    """One split's questions joined with the stores, as a batch dataset.

    ``split`` may be ``"<train_split>"`` or, with ``data.val_fraction > 0``, the carved
    validation share ``"val_from_train"`` (the training split then excludes those images).
    ``teacher`` marks the training split: it joins every store (DistillVLM teacher stores cover the
    training split only; the losses read the foundation stores). Without it (validation,
    evaluation) only the stores the model's forward reads are joined (:func:`forward_stores`), so
    questions are never dropped for lacking features the forward does not read. Dropped questions
    are counted per store on stderr. ``type_vocab``: the training split's question types (the
    ``question_type`` ids of a validation split must index the training prior, as LMH's does);
    None = the split's own.
    """
    if not teacher:
        stores = forward_stores(cfg, stores)
        if stores.predicted is not None:  # model.foundation_inputs=predicted
            stores = replace(stores, predicted=split_predicted(cfg, stores, split, v))
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
    return data, VQABatches(data, stores, rows, len(v.answers), foundation_tokens, type_vocab,
                            aligned_teacher=cfg.method.distill.alignment == "aligned")


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


def model_dims(stores: Stores, foundation_dims: dict | None = None
               ) -> tuple[int, dict | None]:
    """(region feature dim, the foundation_image store's dims — ``embed_dim``, ``vision_dim``,
    ``text_dim``, ... — or None) from the store attributes; ``foundation_dims`` stands in when no
    foundation_image store is open (evaluation), else the predicted store's dims."""
    region_dim = int(stores.regions.spec.dims["feature_dim"])
    dims = foundation_dims
    if stores.foundation_image is not None:
        dims = {k: int(v) for k, v in stores.foundation_image.spec.dims.items()}
    elif dims is None and stores.predicted is not None:  # its embed_dim, vision_dim, text_dim
        dims = {k: int(v) for k, v in stores.predicted.spec.dims.items()}
    return region_dim, dims


def recorded_foundation_dims(run_dir: Path) -> dict | None:
    """The foundation_image store's dims a run was trained with (``stores.json``), or None: size
    D's foundation inputs and PKD's memory at evaluation without opening the foundation stores."""
    path = Path(run_dir) / "stores.json"
    if not path.is_file():
        return None
    dims = json.loads(path.read_text()).get("foundation_image", {}).get("dims", {})
    return {k: int(v) for k, v in dims.items()} if "embed_dim" in dims else None



def build_run_model(cfg: TrainConfig, v: Vocabs, stores: Stores,
                    foundation_dims: dict | None = None) -> nn.Module:
    """The VQA model a run trains (the teacher for ``teacher-adapt``), sized from the stores
    (``foundation_dims``: the foundation store's dims when none is open, evaluation).

    The method attaches what is part of the model's own state (PKD stage 2: its memory fusion).
    """
    model_cfg = run_config(cfg).model
    region_dim, dims = model_dims(stores, foundation_dims)
    fdim = dims["embed_dim"] if dims else None
    if model_cfg.arch == "vlm":
        model = build_vlm(model_cfg, v.answers.answers, v.words, region_dim)
    else:
        model = build_model(model_cfg, len(v.words), len(v.answers), region_dim,
                            fdim if model_cfg.use_foundation_features else None)
    method_of(cfg).attach(model, cfg, dims)
    return method_of(cfg).vqa_model(cfg, model)
