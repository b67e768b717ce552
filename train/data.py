"""Training data: questions + answers of a split, joined by id with the feature stores.

A :class:`SplitData` holds the light per-question data in memory (token ids, sparse soft-score
targets, answer / question types) ordered by ``(image_id, question_id)``; heavy features stay in
the Zarr stores and are read per batch by :class:`VQABatches`, so memory does not grow with the
number of regions or the feature size. Questions without features in a joined store (their image
failed extraction, or — with ``data.allow_incomplete`` — its shard is not extracted yet) are
dropped and counted per store (:attr:`SplitData.missing`): their features would be zeros.

Batch keys (names flow unchanged from the stores): ``question_tokens`` (B,L) int64,
``question_mask`` (B,L) bool, ``targets`` (B,A) f32, ``region_features`` (B,N,d) f32,
``region_geometry`` (B,N,6), ``region_mask`` (B,N) bool, ``question_id`` (B,) int64,
``question_type`` (B,) int64 (id in the training types' vocabulary, :func:`question_type_ids`),
and with foundation stores ``image_embeds`` / ``text_embeds`` (B,De), ``vision_tokens`` (B,P,dv),
``text_tokens`` (B,L',dt), ``text_mask`` (B,L') bool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pkd.data.answers import AnswerVocab
from pkd.data.vqa import dataset_files, load_split
from pkd.errors import PkdError
from pkd.stores import FeatureStore
from pkd.train.host_buffers import HostBatch, HostBuffers, HostSlot
from pkd.train.predicted_cache import read_predicted
from pkd.train.prompts import PromptTokenizer
from pkd.train.teacher_cache import read_teacher, teacher_crop
from pkd.train.text import QuestionTokenizer

MAX_ANSWERS = 10  # distinct answers per question at most (10 annotators)


@dataclass
class Vocabs:
    answers: AnswerVocab  # answer strings <-> classifier rows (answers.json)
    # question words <-> ids (words.json; arch vlm: the foundation tokenizer behind the prompts)
    words: QuestionTokenizer | PromptTokenizer


@dataclass
class SplitData:
    name: str  # split name
    question_ids: np.ndarray  # (Q,) int64, ordered by (image_id, question_id)
    image_ids: np.ndarray  # (Q,) int64
    tokens: np.ndarray  # (Q, L) int64 word ids, 0 = padding
    answer_index: np.ndarray  # (Q, 10) int64 vocabulary index of each scored answer, -1 = none
    answer_score: np.ndarray  # (Q, 10) float32 soft score of that answer
    answer_types: list[str]  # per question
    question_types: list[str]  # per question
    dropped: int = 0  # questions dropped because a joined store has no features for them
    missing: dict[str, int] = field(default_factory=dict)  # per store role: questions it lacks

    def __len__(self) -> int:
        return len(self.question_ids)

    def targets(self, positions: np.ndarray, num_answers: int) -> np.ndarray:
        """Dense soft-score targets (B, A) of the questions at ``positions``."""
        out = np.zeros((len(positions), num_answers), dtype=np.float32)
        idx, score = self.answer_index[positions], self.answer_score[positions]
        rows = np.repeat(np.arange(len(positions)), idx.shape[1])
        keep = idx.reshape(-1) >= 0
        out[rows[keep], idx.reshape(-1)[keep]] = score.reshape(-1)[keep]
        return out


def load_split_data(root: str | Path, dataset: str, split: str, vocab: AnswerVocab,
                    tokenizer: QuestionTokenizer, max_len: int) -> SplitData:
    """Read one split's questions + annotations and encode them for training."""
    qpath, apath = dataset_files(Path(root), dataset, split)
    items = sorted(load_split(qpath, apath), key=lambda x: (x[0].image_id, x[0].question_id))
    n = len(items)
    tokens, _ = tokenizer.encode_many([q.question for q, _ in items], max_len)
    answer_index = np.full((n, MAX_ANSWERS), -1, dtype=np.int64)
    answer_score = np.zeros((n, MAX_ANSWERS), dtype=np.float32)
    for i, (_, ann) in enumerate(items):
        for j, (a, s) in enumerate(sorted(vocab.soft_scores(ann).items())[:MAX_ANSWERS]):
            answer_index[i, j], answer_score[i, j] = a, s
    return SplitData(
        name=split,
        question_ids=np.array([q.question_id for q, _ in items], dtype=np.int64),
        image_ids=np.array([q.image_id for q, _ in items], dtype=np.int64),
        tokens=tokens.astype(np.int64),
        answer_index=answer_index,
        answer_score=answer_score,
        answer_types=[a.answer_type for _, a in items],
        question_types=[a.question_type for _, a in items],
    )


def keep_rows(split: SplitData, keep: np.ndarray) -> SplitData:
    """The questions of ``split`` where ``keep`` is True (``dropped`` counts the others)."""
    return SplitData(
        name=split.name,
        question_ids=split.question_ids[keep],
        image_ids=split.image_ids[keep],
        tokens=split.tokens[keep],
        answer_index=split.answer_index[keep],
        answer_score=split.answer_score[keep],
        answer_types=[t for t, k in zip(split.answer_types, keep, strict=True) if k],
        question_types=[t for t, k in zip(split.question_types, keep, strict=True) if k],
        dropped=split.dropped + int((~keep).sum()),
        missing=dict(split.missing),
    )


@dataclass
class Stores:
    regions: FeatureStore  # keyed by image_id
    foundation_image: FeatureStore | None = None  # keyed by image_id
    foundation_text: FeatureStore | None = None  # keyed by question_id
    teacher_regions: FeatureStore | None = None  # keyed by image_id (DistillVLM online teacher)
    teacher: FeatureStore | None = None  # keyed by question_id (DistillVLM cached teacher)
    predicted: FeatureStore | None = None  # keyed by question_id (PKD's cached predictions)

    def by_image(self) -> dict[str, FeatureStore]:
        """The open stores keyed by image_id, by role."""
        roles = ("regions", "foundation_image", "teacher_regions")
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}

    def by_question(self) -> dict[str, FeatureStore]:
        """The open stores keyed by question_id, by role."""
        roles = ("foundation_text", "teacher", "predicted")
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}


def attach(split: SplitData, stores: Stores) -> tuple[SplitData, dict[str, np.ndarray]]:
    """Drop questions without features in any store; return each store's row per question.

    A store's item has features iff it is ``ok`` (extracted without failure, in a done shard);
    ``missing`` of the result counts, per store role, the questions that store lacked.
    """
    keys = {**{r: ("image_ids", s) for r, s in stores.by_image().items()},
            **{r: ("question_ids", s) for r, s in stores.by_question().items()}}
    ok = np.ones(len(split), dtype=bool)
    missing = {}
    for role, (attr, store) in keys.items():
        has = store.ok[store.rows_of(getattr(split, attr))]
        if not has.all():
            missing[role] = int((~has).sum())
        ok &= has
    split = keep_rows(split, ok)
    for role, n in missing.items():
        split.missing[role] = split.missing.get(role, 0) + n
    return split, {role: store.rows_of(getattr(split, attr))
                   for role, (attr, store) in keys.items()}


def _trim(arrays: dict[str, np.ndarray], count: np.ndarray, names: list[str]) -> np.ndarray:
    """Cut padded axis 1 of ``names`` to the batch's own max ``count``; return the mask."""
    n = max(1, int(count.max()) if len(count) else 1)
    for name in names:
        arrays[name] = arrays[name][:, :n]
    return np.arange(n)[None, :] < count[:, None]


def question_type_vocab(split: SplitData) -> list[str]:
    """The sorted distinct question types of ``split`` (of the training split: the types'
    vocabulary, type ``i`` = id ``i``)."""
    return sorted(set(split.question_types))


def question_type_ids(types: list[str], vocab: list[str]) -> np.ndarray:
    """(Q,) int64 id of each type in ``vocab``; a type not in it gets ``len(vocab)`` (LMH: the
    "no bias" row of the prior)."""
    index = {t: i for i, t in enumerate(vocab)}
    return np.array([index.get(t, len(vocab)) for t in types], dtype=np.int64)


class VQABatches(torch.utils.data.Dataset):
    """``dataset[positions]`` -> one batch dict (use with ``DataLoader(batch_size=None)``).

    ``type_vocab``: the training types' vocabulary of the ``question_type`` key; None = the
    split's own (:func:`question_type_vocab`), which *is* that vocabulary for the training split.
    """

    def __init__(self, split: SplitData, stores: Stores, rows: dict[str, np.ndarray],
                 num_answers: int, foundation_tokens: bool = False,
                 type_vocab: list[str] | None = None, aligned_teacher: bool = True):
        self.split, self.stores, self.rows = split, stores, rows
        self.aligned_teacher = aligned_teacher  # refuse teacher regions on other boxes
        self.num_answers, self.foundation_tokens = num_answers, foundation_tokens
        self.type_vocab = question_type_vocab(split) if type_vocab is None else list(type_vocab)
        self.question_type = question_type_ids(split.question_types, self.type_vocab)  # (Q,)
        # float16 store arrays stay float16 on the host (half the bytes to pin and copy; the
        # device converts them: :func:`to_device`) — for a GPU; on a CPU they become float32 here
        self.half_on_host = False
        # GPU feed: a ring of pinned buffers the stores read into (train/host_buffers.py)
        self.buffers: HostBuffers | None = None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        pos = np.asarray(positions, dtype=np.int64)
        tokens = self.split.tokens[pos]
        batch = {
            "question_id": self.split.question_ids[pos],
            "question_type": self.question_type[pos],
            "question_tokens": tokens,
            "question_mask": tokens > 0,
            "targets": self.split.targets(pos, self.num_answers),
        }
        slot = self.buffers.take() if self.buffers is not None else None
        regions, batch["region_mask"] = _read_trimmed(
            self.stores.regions, self.rows["regions"][pos],
            ["region_features", "region_geometry"], "num_regions", slot, "regions")
        batch.update(regions)
        batch.update(self._foundation(pos, slot))
        batch.update(self._teacher(pos, batch["region_mask"], tokens.shape[1], slot))
        if self.stores.predicted is not None:
            batch.update(read_predicted(self.stores.predicted, self.rows["predicted"][pos]))
        out = HostBatch({k: _tensor(v, self.half_on_host) for k, v in batch.items()})
        out.slot = slot
        return out

    def _foundation(self, pos: np.ndarray, slot: HostSlot | None) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if (store := self.stores.foundation_image) is not None:
            names = ["image_embeds"] + (["vision_tokens"] if self.foundation_tokens else [])
            rows = self.rows["foundation_image"][pos]
            out.update(store.read(rows, names, out=slot and slot.out("image", store, names,
                                                                      len(rows))))
        if (store := self.stores.foundation_text) is not None:
            rows = self.rows["foundation_text"][pos]
            if self.foundation_tokens:  # one read of the embeddings and the cut tokens
                text, out["text_mask"] = _read_trimmed(
                    store, rows, ["text_tokens", "input_ids"], "num_tokens", slot, "text",
                    extra=("text_embeds",))
                out.update(text)
                out["input_ids"] = out["input_ids"].astype(np.int64)
            else:
                out.update(store.read(rows, ["text_embeds"], out=slot and slot.out(
                    "text", store, ["text_embeds"], len(rows))))
        return out

    def _teacher(self, pos: np.ndarray, region_mask: np.ndarray, n_words: int,
                 slot: HostSlot | None) -> dict[str, np.ndarray]:
        """DistillVLM teacher inputs (aligned regions, or any with ``aligned_teacher=False``:
        the unaligned ablation) and/or cached teacher signals."""
        out: dict[str, np.ndarray] = {}
        if self.stores.teacher_regions is not None:
            got, mask = _read_trimmed(
                self.stores.teacher_regions, self.rows["teacher_regions"][pos],
                ["region_features", "region_geometry"], "num_regions", slot, "teacher_regions")
            if self.aligned_teacher and (mask.shape != region_mask.shape
                                         or (mask != region_mask).any()):
                raise PkdError(f"{self.stores.teacher_regions.path}: teacher regions do not line "
                               "up with the student's boxes (build it with --boxes-from; "
                               "method.distill.alignment=index is the unaligned ablation)")
            out.update({"teacher_region_features": got["region_features"],
                        "teacher_region_geometry": got["region_geometry"],
                        "teacher_region_mask": mask})
        if self.stores.teacher is not None:
            tokens = 2 + n_words + region_mask.shape[1]  # [CLS] words [SEP] regions
            store, rows = self.stores.teacher, self.rows["teacher"][pos]
            crop = teacher_crop(tokens)
            out.update(read_teacher(store, rows, tokens, out=slot and slot.out(
                "teacher", store, list(crop), len(rows), crop)))
        return out


def _read_trimmed(store: FeatureStore, rows: np.ndarray, names: list[str], count_name: str,
                  slot: HostSlot | None, prefix: str, extra: tuple[str, ...] = ()
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``names`` of store ``rows`` with padded axis 1 cut to the batch's max ``count_name``, and
    the (B, n) mask; ``extra`` arrays come in the same read, uncut. With a ``slot``, the count is
    read first and the rows are cut as they are copied into the slot's buffers (contiguous: no
    second copy before the device)."""
    if slot is None:
        got = store.read(rows, [*extra, *names, count_name])
        return got, _trim(got, got.pop(count_name), names)
    count = store.read(rows, [count_name])[count_name]
    n = max(1, int(count.max()) if len(count) else 1)
    crop = {name: (slice(0, n),) for name in names}
    every = [*extra, *names]
    got = store.read(rows, every, out=slot.out(prefix, store, every, len(rows), crop), crop=crop)
    return got, np.arange(n)[None, :] < count[:, None]


def _tensor(a: np.ndarray, keep_half: bool = False) -> torch.Tensor:
    """A batch tensor; float16 store arrays become float32 (torch converts ~6x faster than
    numpy) unless ``keep_half`` (the device converts them after the copy)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.float() if t.dtype == torch.float16 and not keep_half else t


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on ``device`` (asynchronous from pinned memory); float16 tensors become
    float32 there — the same values as converting on the host (f16 -> f32 is exact)."""
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        out[k] = v.float() if v.dtype == torch.float16 else v
    if (slot := getattr(batch, "slot", None)) is not None:  # its buffers free after the copy
        slot.record(device)
    return out


def pinned(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch in page-locked memory (for an asynchronous host -> device copy)."""
    out = HostBatch({k: v if v.is_pinned() else v.pin_memory() for k, v in batch.items()})
    out.slot = getattr(batch, "slot", None)  # read into pinned buffers: not copied again
    return out
