"""Attribute-swapped negative captions for contrastive pre-training (NegCLIP-style).

In-batch negatives of CLIP's ITC almost always differ from the positive caption in many words,
so the cheapest cue (colour: the mean pixel value) separates them and shape binding is never
needed: the demo foundation model read colour at ~90% and shape at ~45% zero-shot. Hard
negatives made by swapping one attribute word of the true caption (Yuksekgonul et al., ICLR 2023,
"When and why vision-language models behave like bags-of-words", NegCLIP) make the binding the
only way to tell them apart. For caption ``c`` with attribute occurrences ``o_1..o_n`` (words of
:data:`SWAP_WORDS`), a negative replaces one occurrence ``o`` (uniform) by another word of its
group (uniform)::

    neg(c) = c[o -> w],   w ∈ group(o) \\ {o}

The swapped caption describes a different multiset of objects, so it is false for the image
(never one of its captions). Only the caption corpus is read: the VQA data never are.

``K`` negatives per caption are drawn once (seeded) and tokenized to one padded tensor; each
training step uses one of them per caption (:func:`pkd.train.pretrain.loop.fit_epochs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from pkd.errors import PkdError
from pkd.train.pretrain.evaluate import PROBE_WORDS as SWAP_WORDS  # the probes' word groups

_GROUP = {w: words for words in SWAP_WORDS.values() for w in words}
_PATTERN = re.compile(r"\b(" + "|".join(map(re.escape, _GROUP)) + r")\b")


@dataclass
class NegativeCaptions:
    input_ids: torch.Tensor  # (M, K, L) long, K swapped negatives of each caption, padded
    attention_mask: torch.Tensor  # (M, K, L) long


def swap_one(caption: str, generator: torch.Generator) -> str:
    """One attribute word of ``caption`` replaced by another of its group (module doc); a
    caption without attribute words is a PkdError (nothing to swap)."""
    found = list(_PATTERN.finditer(caption))
    if not found:
        raise PkdError(f"captions.json: caption {caption!r} has no colour, shape or size word "
                       "to swap (set swap_negatives=0)")
    m = found[int(torch.randint(len(found), (1,), generator=generator))]
    others = [w for w in _GROUP[m.group()] if w != m.group()]
    w = others[int(torch.randint(len(others), (1,), generator=generator))]
    return caption[:m.start()] + w + caption[m.end():]


def negative_captions(captions: list[str], tokenizer, per_caption: int, seed: int,
                      max_positions: int) -> NegativeCaptions:
    """``per_caption`` swapped negatives of every caption (in ``captions`` order), tokenized."""
    generator = torch.Generator().manual_seed(seed)
    texts = [swap_one(c, generator) for c in captions for _ in range(per_caption)]
    enc = tokenizer(texts, padding="longest", return_tensors="pt")
    if enc["input_ids"].shape[1] > max_positions:
        raise PkdError(f"captions.json: a swapped caption has {enc['input_ids'].shape[1]} "
                       f"tokens, more than max_positions {max_positions}")
    shape = (len(captions), per_caption, enc["input_ids"].shape[1])
    return NegativeCaptions(enc["input_ids"].view(shape), enc["attention_mask"].view(shape))
