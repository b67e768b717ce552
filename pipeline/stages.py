"""Extraction stages: each turns the ids of one store shard into that shard's arrays.

A stage knows its store (``spec()``, ``ids``) and computes one work unit (``run(ids)``) with an
explicit error policy: an image that cannot be read is recorded as a :class:`Failure`, its row is
left zero with ``ok = 0``, and the rest of the shard goes on. Stages hold their frozen model, so a
process (or dask worker) builds each stage once and runs many shards with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator, Sequence

import numpy as np

from pkd.data.images import ImageError, load_rgb
from pkd.data.inputs_digest import images_digest, texts_digest
from pkd.pipeline.events import span
from pkd.pipeline.sources import Source
from pkd.prefetch import prefetch_pool
from pkd.stores import ArraySpec, Failure, StoreSpec

ImageBatch = tuple[list[int], list, list[Failure]]  # (positions in shard, PIL images, failures)


def batches(n: int, size: int) -> Iterator[range]:
    """Consecutive position ranges of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def load_images(source: Source, ids: Sequence[int], positions: range,
                draft: tuple[int, int] | None = None,
                hashed: dict[int, tuple[int, str]] | None = None) -> ImageBatch:
    """Decode the images at ``positions`` of ``ids``; unreadable ones become failures.
    ``draft``: JPEGs may be decoded down to that size (:func:`pkd.data.images.load_rgb`).
    ``hashed``: gets ``{id: (size, sha256)}`` of the bytes decoded (each file read once: the
    shard's content digest takes them, :func:`pkd.data.inputs_digest.images_digest`)."""
    with span("decode", positions.start):
        return _load_images(source, ids, positions, draft, hashed)


def _load_images(source: Source, ids: Sequence[int], positions: range,
                 draft: tuple[int, int] | None,
                 hashed: dict[int, tuple[int, str]] | None) -> ImageBatch:
    ok_pos, images, failures = [], [], []
    for p in positions:
        image_id = int(ids[p])
        path = source.image_path(image_id)
        if path is None:
            failures.append(Failure(image_id, "", "no image file for this id"))
            continue
        try:
            data = _read(path) if hashed is not None else None
            if data:
                hashed[image_id] = (len(data), hashlib.sha256(data).hexdigest())
            images.append(load_rgb(path, draft=draft, data=data))
            ok_pos.append(p)
        except ImageError as err:
            failures.append(Failure(image_id, str(path), str(err)))
    return ok_pos, images, failures


def _read(path) -> bytes | None:
    """The file's bytes; None when it cannot be read (``load_rgb`` then says why)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def iter_image_batches(source: Source, ids: Sequence[int], batch_size: int,
                       prepare: Callable | None = None, workers: int = 1,
                       draft: tuple[int, int] | None = None) -> Iterator[ImageBatch]:
    """Image batches of one shard, decoded (and ``prepare`` d: images -> model inputs, e.g. the
    processor's pixels) ahead of the consumer by ``workers`` threads."""
    def load(r: range) -> ImageBatch:
        pos, images, failures = load_images(source, ids, r, draft)
        return pos, (prepare(images) if prepare is not None and images else images), failures

    yield from prefetch_pool(load, batches(len(ids), batch_size), workers)


def iter_shard_batches(source: Source, shards: Sequence[Sequence[int]], batch_size: int,
                       prepare: Callable | None = None, workers: int = 1,
                       draft: tuple[int, int] | None = None,
                       hashed: dict[int, tuple[int, str]] | None = None
                       ) -> Iterator[tuple[int, ImageBatch]]:
    """``(shard index, batch)`` for the batches of every shard in turn, as
    :func:`iter_image_batches` but one stream: the workers decode the next shard's first images
    while the consumer finishes this one (no idle start at a shard boundary). ``hashed``: see
    :func:`load_images`."""
    def load(job: tuple[int, range]) -> tuple[int, ImageBatch]:
        i, r = job
        pos, images, failures = load_images(source, shards[i], r, draft, hashed)
        return i, (pos, (prepare(images) if prepare is not None and images else images),
                   failures)

    jobs = ((i, r) for i, ids in enumerate(shards) for r in batches(len(ids), batch_size))
    yield from prefetch_pool(load, jobs, workers)


def image_inputs(source: Source, ids: Sequence[int], content: bool,
                 hashed: dict[int, tuple[int, str]] | None = None) -> str:
    """Digest of the image files of ``ids`` (:func:`pkd.data.inputs_digest.images_digest`;
    ``hashed``: the bytes hashed while decoding, taken instead of reading the files again)."""
    return images_digest(((int(i), source.image_path(int(i))) for i in ids), content, hashed)


def kept_ids(ids: Sequence[int], failed: Collection[int]) -> list[int]:
    """``ids`` without the failed ones (their files are broken or absent: a fixed one is read
    again by ``--retry-failed``, so it is not part of what the shard was made from)."""
    failed = set(failed)
    return [int(i) for i in ids if int(i) not in failed]


def shard_inputs(stage, ids: Sequence[int], failed: Collection[int]) -> dict[str, str] | None:
    """``{"sha256": content digest, "stat": listing digest}`` of what ``stage`` read for
    ``ids`` except the ``failed`` ones; None for a stage that does not say (no
    ``inputs(ids, content)``)."""
    inputs = getattr(stage, "inputs", None)
    if inputs is None:
        return None
    kept = kept_ids(ids, failed)
    return {"sha256": inputs(kept, True), "stat": inputs(kept, False)}


def empty_arrays(spec: StoreSpec, n: int) -> dict[str, np.ndarray]:
    """Zero-filled arrays for ``n`` rows of every array in ``spec``."""
    return {a.name: np.zeros((n, *a.item_shape), dtype=a.dtype) for a in spec.arrays}


class FoundationImageStage:
    """Vision tokens + projected image embedding of the frozen foundation model, per image."""

    kind = "foundation_image"

    def __init__(self, model, source: Source, batch_size: int, producer: dict, workers: int = 1,
                 draft: bool = False):
        self.model, self.source, self.batch_size = model, source, batch_size
        self.workers = workers  # decode + preprocess threads
        self.draft = model.decode_size if draft else None  # JPEG decode scale floor
        self.ids = source.image_ids
        self._hashed: dict[int, tuple[int, str]] = {}  # bytes hashed as decoded, until digested
        d = model.dims
        self._spec = StoreSpec(
            kind=self.kind,
            key="image_id",
            arrays=(
                ArraySpec("vision_tokens", (d["vision_tokens"], d["vision_dim"]), "float16"),
                ArraySpec("image_embeds", (d["embed_dim"],), "float32"),
            ),
            producer=producer,
            dims=dict(d),
        )

    def spec(self) -> StoreSpec:
        return self._spec

    def run(self, ids: Sequence[int]) -> tuple[dict[str, np.ndarray], list[Failure]]:
        return next(self.run_many([ids]))

    def run_many(self, shards: Sequence[Sequence[int]]
                 ) -> Iterator[tuple[dict[str, np.ndarray], list[Failure]]]:
        """``run(ids)`` of each shard in turn, decoded as one stream across shard boundaries
        (:func:`iter_shard_batches`)."""
        current, arrays, failures = 0, None, []
        stream = iter_shard_batches(self.source, shards, self.batch_size, self.model.preprocess,
                                    self.workers, self.draft, self._hashed)
        for i, (pos, pixels, failed) in stream:
            while current < i:  # every batch of shard `current` is done
                yield (arrays if arrays is not None
                       else empty_arrays(self._spec, len(shards[current]))), failures
                current, arrays, failures = current + 1, None, []
            if arrays is None:
                arrays = empty_arrays(self._spec, len(shards[i]))
            failures += failed
            for f in failed:  # not part of the shard's digest: nothing to keep for it
                self._hashed.pop(f.id, None)
            if pos:
                out = self.model.encode_pixels(pixels)
                for name in arrays:
                    arrays[name][pos] = out[name]
        while current < len(shards):  # the last shard, and shards without any id
            yield (arrays if arrays is not None
                   else empty_arrays(self._spec, len(shards[current]))), failures
            current, arrays, failures = current + 1, None, []

    def inputs(self, ids: Sequence[int], content: bool) -> str:
        return image_inputs(self.source, ids, content, self._hashed if content else None)


class FoundationTextStage:
    """Text tokens, projected text embedding and token ids of the foundation model, per text."""

    kind = "foundation_text"

    def __init__(self, model, texts: dict[int, str], ids: list[int], key: str, batch_size: int,
                 producer: dict):
        self.model, self.texts, self.ids, self.batch_size = model, texts, ids, batch_size
        d = model.dims
        length = d["max_text_len"]
        self._spec = StoreSpec(
            kind=self.kind,
            key=key,
            arrays=(
                ArraySpec("text_tokens", (length, d["text_dim"]), "float16"),
                ArraySpec("text_embeds", (d["embed_dim"],), "float32"),
                ArraySpec("input_ids", (length,), "int32"),
                ArraySpec("num_tokens", (), "int32"),
            ),
            producer=producer,
            dims=dict(d),
        )

    def spec(self) -> StoreSpec:
        return self._spec

    def run(self, ids: Sequence[int]) -> tuple[dict[str, np.ndarray], list[Failure]]:
        arrays = empty_arrays(self._spec, len(ids))
        for r in batches(len(ids), self.batch_size):
            out = self.model.encode_texts([self.texts[int(ids[p])] for p in r])
            for name in arrays:
                arrays[name][r.start : r.stop] = out[name]
        return arrays, []

    def inputs(self, ids: Sequence[int], content: bool) -> str:
        """The texts of ``ids`` (one digest for content and listing: both are the texts)."""
        return texts_digest((int(i), self.texts[int(i)]) for i in ids)
