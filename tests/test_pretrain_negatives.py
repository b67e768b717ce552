"""Attribute-swapped negative captions (pkd.train.pretrain.negatives)."""

import re

import pytest
import torch

from pkd.errors import PkdError
from pkd.train.pretrain.negatives import SWAP_WORDS, negative_captions, swap_one

CAPTION = "two objects: a small red circle and a large blue square."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text)


def test_swap_changes_exactly_one_attribute_word_within_its_group():
    g = torch.Generator().manual_seed(0)
    groups = {w: k for k, ws in SWAP_WORDS.items() for w in ws}
    seen = set()
    for _ in range(200):
        neg = swap_one(CAPTION, g)
        diff = [(a, b) for a, b in zip(words(CAPTION), words(neg), strict=True) if a != b]
        assert len(diff) == 1  # one word, never the true caption
        old, new = diff[0]
        assert groups[old] == groups[new]  # colour for colour, shape for shape, size for size
        seen.add(groups[old])
    assert seen == {"color", "shape", "size"}  # every occurrence gets swapped sometimes


def test_swap_does_not_touch_words_that_only_contain_an_attribute():
    g = torch.Generator().manual_seed(0)
    caption = "one object: a large red squares"  # 'squares' is not the word 'square'
    for _ in range(50):
        assert swap_one(caption, g).endswith("squares")


def test_caption_without_attributes_is_a_user_error():
    with pytest.raises(PkdError, match="no colour, shape or size word"):
        swap_one("there is nothing here.", torch.Generator().manual_seed(0))


class WordTokenizer:
    """Whitespace tokenizer with the call signature pkd uses (padding='longest', pt tensors)."""

    def __init__(self):
        self.vocab = {"<pad>": 0}

    def __call__(self, texts, padding="longest", return_tensors="pt"):
        ids = [[self.vocab.setdefault(w, len(self.vocab)) for w in t.split()] for t in texts]
        n = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])}


def test_negative_captions_are_seeded_shaped_and_length_checked():
    captions = [CAPTION, "one object: a small green triangle."]
    a = negative_captions(captions, WordTokenizer(), 3, seed=5, max_positions=64)
    b = negative_captions(captions, WordTokenizer(), 3, seed=5, max_positions=64)
    assert a.input_ids.shape[:2] == (2, 3) and a.attention_mask.shape == a.input_ids.shape
    assert torch.equal(a.input_ids, b.input_ids)  # same seed, same negatives
    with pytest.raises(PkdError, match="more than max_positions 4"):
        negative_captions(captions, WordTokenizer(), 1, seed=0, max_positions=4)


def test_swap_weight_needs_swapped_negatives(tmp_path):
    from pkd.train.pretrain import PretrainConfig

    with pytest.raises(PkdError, match="swap_weight .* needs swap_negatives > 0"):
        PretrainConfig(data_dir=tmp_path, out_dir=tmp_path / "m", swap_weight=1.0).validate()
    PretrainConfig(data_dir=tmp_path, out_dir=tmp_path / "m", swap_weight=1.0,
                   swap_negatives=2).validate()
