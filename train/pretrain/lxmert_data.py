"""Data of LXMERT pre-training: captions with their images' region features, the held-out split,
the tokenizer's texts, BERT masking and image-text matching pairs.

- Captions: ``DATA/captions.json`` (COCO captions layout, read as :mod:`~pkd.train.pretrain.corpus`
  reads it). Regions: a ``regions`` store keyed by image_id (``pkd extract regions --captions``);
  each caption image's ``region_features`` (float32), ``region_geometry[..., :4]`` (normalised
  x1, y1, x2, y2: LXMERT's ``visual_pos``) and the mask ``region < num_regions`` are read once into
  RAM (:class:`RegionCaptions`).
- Held-out split: :func:`heldout_split` depends on ``(data_dir, seed, eval_fraction)`` alone, so a
  later stage evaluates a fine-tuned model on the very images pre-training never saw
  (:func:`load_heldout_captions`).
- Masking (:func:`mask_tokens`, BERT / LXMERT): token ``t`` is chosen with probability
  ``p_t = attribute_mask_probability`` for an attribute word (:data:`ATTRIBUTE_GROUPS`) and
  ``mlm_probability`` otherwise (specials and protected tokens never); a chosen token becomes
  ``[MASK]`` (80%), a random word (10%) or stays (10%); its label is the original id on matched
  pairs and -100 everywhere else.
- ITM pairs (:func:`itm_pairs`): each caption keeps its image (label 1) or, with probability
  ``itm_negative_share``, becomes a negative (label 0): with probability ``hard_negative_share``
  its attribute-swapped copy (:func:`pkd.train.pretrain.negatives.swap_one`: one colour / shape /
  size word replaced, NegCLIP-style), else the caption of another image that is not one of this
  image's captions. The swapped word of a hard negative is never masked (masked, the negative
  would be true of the image).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pkd.data.normalize import preprocess_answer
from pkd.data.synth_formats import COUNT_WORDS
from pkd.errors import PkdError
from pkd.train.pretrain.corpus import _caption_table, _read_json, load_questions, split_heldout
from pkd.train.pretrain.evaluate import PROBE_WORDS
from pkd.train.pretrain.negatives import swap_one

# Words masked with attribute_mask_probability and probed one group at a time (mlm_<group>):
# the swap groups (colour, shape, size) and the object count word.
ATTRIBUTE_GROUPS = {**PROBE_WORDS, "count": tuple(COUNT_WORDS.values())}


@dataclass
class RegionCaptions:
    image_ids: list[int]  # caption images, in captions.json order
    captions: list[list[str]]  # captions of each image, in file order
    visual_feats: torch.Tensor  # (N, R, d) float32 region features
    visual_pos: torch.Tensor  # (N, R, 4) float32 normalised boxes (x1/W, y1/H, x2/W, y2/H)
    visual_mask: torch.Tensor  # (N, R) long, 1 on the image's regions

    def subset(self, idx: torch.Tensor) -> RegionCaptions:
        """The images ``idx`` (corpus indices), in that order."""
        keep = idx.tolist()
        return replace(self, image_ids=[self.image_ids[i] for i in keep],
                       captions=[self.captions[i] for i in keep],
                       visual_feats=self.visual_feats[idx], visual_pos=self.visual_pos[idx],
                       visual_mask=self.visual_mask[idx])

    def visual(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """LXMERT's visual inputs of images ``idx`` (B,), cut to their longest region count."""
        n = max(1, int(self.visual_mask[idx].sum(1).max()))
        return {"visual_feats": self.visual_feats[idx, :n], "visual_pos": self.visual_pos[idx, :n],
                "visual_attention_mask": self.visual_mask[idx, :n]}


@dataclass
class HeldoutCaptions:
    images: RegionCaptions  # the held-out images and their captions
    texts: list[str]  # every held-out caption, image by image
    image_of: torch.Tensor  # (M,) long, index of each caption's image in ``images``
    negatives: list[str]  # one attribute-swapped copy of each caption (seeded)
    heldout_pair: torch.Tensor  # (M,) bool, the caption names a held-out (colour, shape) pair
    heldout_combos: list[str]  # the benchmark's held-out "colour shape" pairs ([] if unknown)


# --------------------------------------------------------------------------- reading


def caption_images(data_dir: str | Path) -> tuple[list[int], list[list[str]]]:
    """(image ids, captions of each) of ``DATA/captions.json``, images in file order."""
    path = Path(data_dir) / "captions.json"
    images, captions = _caption_table(path)
    if len(images) < 4:
        raise PkdError(f"{path}: needs at least 4 captioned images")
    ids = [im["id"] for im in images]
    return ids, [captions[i] for i in ids]


def heldout_split(data_dir: str | Path, seed: int, eval_fraction: float
                  ) -> tuple[list[int], list[int]]:
    """(training, held-out) caption image ids, each in captions.json order; a function of
    ``(data_dir, seed, eval_fraction)`` alone (:func:`pkd.train.pretrain.corpus.split_heldout`)."""
    ids, _ = caption_images(data_dir)
    train, heldout = split_heldout(len(ids), eval_fraction, seed)
    return [ids[i] for i in train.tolist()], [ids[i] for i in heldout.tolist()]


def read_regions(regions: str | Path, image_ids: list[int]) -> tuple[torch.Tensor, ...]:
    """(feats (N, R, d) float32, pos (N, R, 4), mask (N, R) long) of ``image_ids`` from a
    ``regions`` store; PkdError naming the store when some are absent or failed."""
    from pkd.stores import FeatureStore  # zarr: loaded only when regions are read

    store = FeatureStore.open(regions, kind="regions")
    ids = np.asarray(image_ids, dtype=np.int64)
    rows = np.searchsorted(store.ids, ids).clip(max=max(store.n_items - 1, 0))
    have = (store.ids[rows] == ids) if store.n_items else np.zeros(len(ids), dtype=bool)
    have[have] &= store.ok[rows[have]]
    if not have.all():
        raise PkdError(f"{store.path}: {int((~have).sum())} of {len(ids)} caption images missing "
                       f"or not extracted (first: image_id {ids[~have][0]}); extract them into "
                       "this store with `pkd extract regions --captions`")
    got = store.read(rows, ["region_features", "region_geometry", "num_regions"])
    feats = torch.from_numpy(got["region_features"]).float()  # (N, R, d)
    pos = torch.from_numpy(np.ascontiguousarray(got["region_geometry"][..., :4])).float()
    mask = (torch.arange(feats.shape[1])[None, :]
            < torch.from_numpy(got["num_regions"].astype(np.int64))[:, None]).long()  # (N, R)
    return feats, pos, mask


def load_region_captions(data_dir: str | Path, regions: str | Path,
                         keep: list[int] | None = None) -> RegionCaptions:
    """Captions and region inputs of every caption image (or of the ids ``keep``)."""
    ids, captions = caption_images(data_dir)
    if keep is not None:
        wanted = set(keep)
        captions = [c for i, c in zip(ids, captions, strict=True) if i in wanted]
        ids = [i for i in ids if i in wanted]
    return RegionCaptions(ids, captions, *read_regions(regions, ids))


def heldout_combos(data_dir: str | Path) -> list[str]:
    """The held-out "colour shape" pairs of ``DATA/synth_meta.json`` ([] without that file)."""
    path = Path(data_dir) / "synth_meta.json"
    return sorted(_read_json(path).get("heldout", [])) if path.exists() else []


def heldout_captions(images: RegionCaptions, seed: int, combos: list[str]) -> HeldoutCaptions:
    """The held-out captions of ``images``, each with one swapped negative (generator seeded with
    ``seed``) and whether it names one of ``combos``."""
    texts = [c for caps in images.captions for c in caps]
    image_of = torch.tensor([i for i, caps in enumerate(images.captions) for _ in caps])
    generator = torch.Generator().manual_seed(seed)
    negatives = [swap_one(t, generator) for t in texts]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, combos)) + r")\b") if combos else None
    named = torch.tensor([bool(pattern and pattern.search(t)) for t in texts], dtype=torch.bool)
    return HeldoutCaptions(images, texts, image_of, negatives, named, list(combos))


def load_heldout_captions(data_dir: str | Path, regions: str | Path, seed: int,
                          eval_fraction: float) -> HeldoutCaptions:
    """The held-out data of a pre-training run with ``(seed, eval_fraction)``, for
    :func:`pkd.train.pretrain.lxmert.caption_metrics` on a later (fine-tuned) model."""
    _, heldout = heldout_split(data_dir, seed, eval_fraction)
    return heldout_captions(load_region_captions(data_dir, regions, heldout), seed,
                            heldout_combos(data_dir))


def tokenizer_texts(data_dir: str | Path, captions: list[list[str]]) -> list[str]:
    """What the tokenizer is trained on: the captions, the question strings and the normalised
    answers of ``DATA/*_annotations.json`` (vocabulary only: no VQA item is trained on) and one
    line of every attribute word (so each is one token)."""
    answers: set[str] = set()
    for path in sorted(Path(data_dir).glob("*_annotations.json")):
        try:
            for ann in _read_json(path)["annotations"]:
                answers.update(preprocess_answer(str(a["answer"])) for a in ann["answers"])
        except (KeyError, TypeError) as err:
            raise PkdError(f"{path}: not a VQA annotations file ({err!r})") from None
    words = " ".join(w for group in ATTRIBUTE_GROUPS.values() for w in group)
    return ([c for caps in captions for c in caps] + load_questions(Path(data_dir))
            + sorted(answers) + [words])


def group_token_ids(tokenizer) -> dict[str, torch.Tensor]:
    """Token id of every attribute word, by group; PkdError when a word is not one token."""
    out = {}
    for group, words in ATTRIBUTE_GROUPS.items():
        ids = tokenizer.convert_tokens_to_ids(list(words))
        if tokenizer.unk_token_id in ids:
            word = words[ids.index(tokenizer.unk_token_id)]
            raise PkdError(f"tokenizer: attribute word {word!r} is not one token "
                           "(raise vocab_size)")
        out[group] = torch.tensor(ids)
    return out


# --------------------------------------------------------------------------- masking and pairs


@dataclass(frozen=True)
class Masking:
    mlm_probability: float  # chance to choose an ordinary word token
    attribute_probability: float  # chance to choose an attribute word token
    mask_id: int  # the tokenizer's [MASK]
    first_word_id: int  # random replacements are drawn from [first_word_id, vocab_size)
    vocab_size: int  # the tokenizer's length


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, attribute: torch.Tensor,
                matched: torch.Tensor, masking: Masking, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (module doc): (masked ids (B, L), labels (B, L), -100 except on the chosen
    tokens of matched pairs). ``maskable`` (B, L) bool: tokens that may be chosen; ``attribute``
    (B, L) bool: attribute words; ``matched`` (B,) bool."""
    p = torch.where(attribute, masking.attribute_probability, masking.mlm_probability)
    chosen = (torch.rand(input_ids.shape, generator=generator) < p) & maskable  # (B, L)
    labels = torch.where(chosen & matched[:, None], input_ids, -100)
    action = torch.rand(input_ids.shape, generator=generator)  # < .8 mask, < .9 random, else keep
    random_ids = torch.randint(masking.first_word_id, masking.vocab_size, input_ids.shape,
                               generator=generator)
    masked = torch.where(chosen & (action < 0.8), masking.mask_id, input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels


def changed_span(caption: str, other: str) -> tuple[int, int]:
    """Character span ``[start, end)`` of ``other`` where it differs from ``caption`` (the
    swapped word of a hard negative)."""
    start = len(os.path.commonprefix([caption, other]))
    suffix = len(os.path.commonprefix([caption[start:][::-1], other[start:][::-1]]))
    return start, len(other) - suffix


def itm_pairs(captions: list[str], own: list[set[str]], pool: list[str], negative_share: float,
              hard_share: float, generator: torch.Generator
              ) -> tuple[list[str], torch.Tensor, list[tuple[int, int] | None]]:
    """(texts, matched (B,) bool, protected span of each text or None) for a batch of
    ``captions`` whose images have the caption sets ``own``; easy negatives are drawn from
    ``pool`` (the training captions) until one is not among the image's captions."""
    pairs: list[tuple[str, bool, tuple[int, int] | None]] = []
    draws = torch.rand((len(captions), 2), generator=generator)
    for caption, mine, (negative, hard) in zip(captions, own, draws.tolist(), strict=True):
        if negative >= negative_share:
            pairs.append((caption, True, None))
        elif hard < hard_share:
            swapped = swap_one(caption, generator)
            pairs.append((swapped, False, changed_span(caption, swapped)))
        else:
            pairs.append((_other_caption(mine, pool, generator), False, None))
    texts, matched, spans = (list(column) for column in zip(*pairs, strict=True))
    return texts, torch.tensor(matched, dtype=torch.bool), spans


def _other_caption(mine: set[str], pool: list[str], generator: torch.Generator) -> str:
    """A caption of ``pool`` (seeded draws) that is not in ``mine``."""
    for _ in range(100):
        other = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        if other not in mine:
            return other
    raise PkdError("captions.json: no caption of another image differs from this image's "
                   "captions in 100 draws (nearly all captions identical?)")


def encode_texts(tokenizer, texts: list[str], spans: list[tuple[int, int] | None],
                 attribute_ids: torch.Tensor, max_positions: int) -> dict[str, torch.Tensor]:
    """``{input_ids, attention_mask (B, L), maskable, attribute (B, L) bool}``: maskable = real
    word tokens outside the protected ``spans``; attribute = ids in ``attribute_ids``."""
    enc = tokenizer(texts, padding="longest", return_tensors="pt", return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    if enc["input_ids"].shape[1] > max_positions:
        raise PkdError(f"captions.json: a caption has {enc['input_ids'].shape[1]} tokens, more "
                       f"than max_positions {max_positions}")
    offsets = enc["offset_mapping"]  # (B, L, 2) character span of each token
    protected = torch.zeros(enc["input_ids"].shape, dtype=torch.bool)
    for b, span in enumerate(spans):
        if span is not None:
            protected[b] = (offsets[b, :, 0] < span[1]) & (offsets[b, :, 1] > span[0])
    maskable = (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1) & ~protected
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "maskable": maskable, "attribute": torch.isin(enc["input_ids"], attribute_ids)}


__all__ = ["ATTRIBUTE_GROUPS", "HeldoutCaptions", "Masking", "RegionCaptions", "caption_images",
           "changed_span", "encode_texts", "group_token_ids", "heldout_captions",
           "heldout_combos", "heldout_split", "itm_pairs", "load_heldout_captions",
           "load_region_captions", "mask_tokens", "read_regions", "tokenizer_texts"]
