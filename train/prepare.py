"""Everything a run needs before its first step, shared by training and evaluation.

Vocabularies are built from the training split once and saved in the run folder
(``answers.json``, ``words.json``); resuming and evaluating read them back, so a checkpoint's
classifier rows always mean the same answers. Stores are opened read-only and checked
(:mod:`pkd.train.store_checks`: completeness, provenance); splits are joined with them by
:mod:`pkd.train.splits`. What the run reads and builds is asked of its method
(:func:`pkd.train.tasks.method_of`): this module sits above the tasks.

Training joins every configured store (the losses read foundation / teacher features); validation
and evaluation join only what the VQA model's own forward reads (:func:`forward_stores`): the
regions, and the foundation embeddings only with ``model.use_foundation_features``. So a PKD run
(memory fusion inside the model; predictors and foundation head are training-only) evaluates on a
split no foundation features were ever extracted for. With ``model.foundation_inputs=predicted``
the foundation inputs are the frozen predictors' ``e_v``, ``e_t`` instead: each split then reads
its own predicted store (:func:`split_predicted`).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from torch import nn

from pkd.data.answers import AnswerVocab
from pkd.data.vqa import dataset_files, load_split
from pkd.errors import PkdError
from pkd.stores import FeatureStore
from pkd.stores.schema import config_hash
from pkd.train.config import TrainConfig
from pkd.train.data import SplitData, Stores, Vocabs, VQABatches
from pkd.train.models import build_model
from pkd.train.models.vlm import build_vlm, foundation_tokenizer
from pkd.train.predicted_cache import predicted_store_path, same_predictors
from pkd.train.prompts import PromptTokenizer, is_prompt_file
from pkd.train.splits import CARVED_VAL, join_split
from pkd.train.store_checks import check_complete
from pkd.train.tasks import method_of
from pkd.train.text import QuestionTokenizer


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
    data, rows = join_split(cfg, split, v, stores)
    return data, VQABatches(data, stores, rows, len(v.answers), foundation_tokens, type_vocab,
                            aligned_teacher=cfg.method.distill.alignment == "aligned")


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
