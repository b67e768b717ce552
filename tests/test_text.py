"""Question tokenizer: bottom-up-attention-vqa splitting, stable vocabulary, padding, JSON files."""

from __future__ import annotations

import numpy as np
import pytest

from pkd.errors import PkdError
from pkd.train.text import PAD, UNK, QuestionTokenizer, tokenize


def test_tokenize_like_the_reference():
    assert tokenize("What's the man's dog, sitting on?") == [
        "what", "'s", "the", "man", "'s", "dog", "sitting", "on"]
    assert tokenize("Is it a dog.") == ["is", "it", "a", "dog."]  # '.' stays, as in the reference
    assert tokenize("  Two   spaces ") == ["two", "spaces"]


def test_vocabulary_order_and_min_count():
    tok = QuestionTokenizer.build(["what is it?", "what color is it?", "is it red?"], min_count=2)
    # counts: is 3, it 3, what 2, color 1, red 1 -> ties alphabetical, color/red dropped
    assert tok.words == ["<pad>", "<unk>", "is", "it", "what"]
    assert len(tok) == 5


def test_encode_pads_truncates_and_marks_unknown():
    tok = QuestionTokenizer.build(["what is it?", "is it red?"])
    ids, n = tok.encode("What is purple?", max_len=5)
    assert ids.dtype == np.int64 and ids.shape == (5,)
    assert ids.tolist() == [tok.index["what"], tok.index["is"], UNK, PAD, PAD] and n == 3
    ids, n = tok.encode("is it red is it red", max_len=4)
    assert n == 4 and PAD not in ids.tolist()
    ids, n = tok.encode("?", max_len=3)
    assert n == 0 and ids.tolist() == [0, 0, 0]


def test_encode_many_matches_encode():
    tok = QuestionTokenizer.build(["a b c", "b c d"])
    ids, lengths = tok.encode_many(["a b", "d c b a x"], max_len=4)
    assert ids.shape == (2, 4) and lengths.tolist() == [2, 4]
    assert ids[1].tolist() == tok.encode("d c b a x", 4)[0].tolist()
    assert tok.decode(ids[0]) == ["a", "b"]


def test_save_load_round_trip(tmp_path):
    tok = QuestionTokenizer.build(["how many dogs?", "what's that?"])
    loaded = QuestionTokenizer.load(tok.save(tmp_path / "vocab" / "questions.json"))
    assert loaded.words == tok.words
    question = "how many cats?"
    assert loaded.encode(question, 6)[0].tolist() == tok.encode(question, 6)[0].tolist()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ('{"format": "other", "words": []}', "not a pkd question tokenizer"),
        ('{"format": "pkd.question_tokenizer", "words": [1, 2]}', "list of strings"),
        ('{"format": "pkd.question_tokenizer", "words": ["a", "b"]}', "must start with"),
        ('{"format": "pkd.question_tokenizer", "words": ["<pad>", "<unk>", "a", "a"]}',
         "duplicate"),
    ],
)
def test_load_rejects_bad_files(tmp_path, text, problem):
    path = tmp_path / "vocab.json"
    path.write_text(text)
    with pytest.raises(PkdError, match=problem) as err:
        QuestionTokenizer.load(path)
    assert str(err.value).startswith(str(path))
