"""Question tokenizer of the UpDn baseline (as in bottom-up-attention-vqa's ``Dictionary``).

Tokenization, exactly as there::

    sentence.lower().replace(",", "").replace("?", "").replace("'s", " 's").split()

(other punctuation, e.g. a final ``.``, stays attached to its word, as in the reference).

Ids: ``0`` = padding, ``1`` = unknown word, words from ``2`` in order of decreasing training
frequency (ties alphabetical), so a vocabulary built from the same questions is always the same.
Sequences are right-padded; ``encode`` returns the ids and the number of real tokens.

File format (JSON)::

    {"format": "pkd.question_tokenizer", "version": 1, "words": ["<pad>", "<unk>", "what", ...]}

``words[i]`` is the word of id ``i``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pkd.errors import PkdError

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
FORMAT = "pkd.question_tokenizer"


def tokenize(question: str) -> list[str]:
    """Words of ``question`` as bottom-up-attention-vqa splits them."""
    text = question.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.split()


class QuestionTokenizer:
    """Word-level question vocabulary: ``encode`` -> (ids int64 [max_len], length)."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[:2]) != SPECIALS:
            raise ValueError(f"the vocabulary must start with {SPECIALS}")
        self.words = list(words)  # id -> word
        self.index = {w: i for i, w in enumerate(self.words)}  # word -> id
        if len(self.index) != len(self.words):
            raise ValueError("duplicate words in the vocabulary")

    @classmethod
    def build(cls, questions: Iterable[str], min_count: int = 1) -> QuestionTokenizer:
        """Vocabulary of the words seen at least ``min_count`` times in ``questions``."""
        counts = Counter(w for q in questions for w in tokenize(q))
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, question: str, max_len: int) -> tuple[np.ndarray, int]:
        """(ids int64 [max_len] right-padded with 0, number of real tokens <= max_len)."""
        tokens = [self.index.get(w, UNK) for w in tokenize(question)][:max_len]
        ids = np.zeros(max_len, dtype=np.int64)  # (L,) padded question
        ids[: len(tokens)] = tokens
        return ids, len(tokens)

    def encode_many(self, questions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n, max_len], lengths int64 [n]) of many questions."""
        ids = np.zeros((len(questions), max_len), dtype=np.int64)  # (n, L)
        lengths = np.zeros(len(questions), dtype=np.int64)  # (n,)
        for i, q in enumerate(questions):
            ids[i], lengths[i] = self.encode(q, max_len)
        return ids, lengths

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids``, padding dropped."""
        return [self.words[i] for i in ids if i != PAD]

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "version": 1, "words": self.words}))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuestionTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise PkdError(f"{path}: cannot read tokenizer ({err.strerror or err})") from None
        except json.JSONDecodeError as err:
            raise PkdError(f"{path}: not valid JSON (line {err.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PkdError(f"{path}: not a pkd question tokenizer (format != '{FORMAT}')")
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise PkdError(f"{path}: 'words' must be a list of strings")
        try:
            return cls(words)
        except ValueError as err:
            raise PkdError(f"{path}: {err}") from None
