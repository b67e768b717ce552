"""Questions as the foundation model's prompts, in its own token ids (``model.arch: vlm``).

The :class:`PromptTokenizer` stands where the UpDn word vocabulary stands for the other models
(``Vocabs.words``, the run's ``words.json``): ``encode_many`` turns questions into prompts
(:func:`pkd.data.cloze.prompt_for`: caption-style cloze / statement on the synthetic benchmark,
``question [MASK]`` on real data) and then into the foundation tokenizer's ids, right-padded with
0. ``words.json`` records where the tokenizer comes from and a hash of its vocabulary, so a run
evaluated against another foundation tokenizer is refused.

File format (JSON)::

    {"format": "pkd.prompt_tokenizer", "version": 1, "foundation": "<hub id or folder>",
     "style": "synth" | "generic", "vocab_sha256": "..."}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pkd.data.cloze import MASK, prompt_for
from pkd.errors import PkdError

FORMAT = "pkd.prompt_tokenizer"


def vocab_digest(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (tokens in id order)."""
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab, key=vocab.get)
    return hashlib.sha256("\n".join(ordered).encode()).hexdigest()


class PromptTokenizer:
    """Question -> prompt -> foundation token ids (see the module docstring)."""

    def __init__(self, tokenizer, foundation: str, style: str):
        self.tokenizer, self.foundation, self.style = tokenizer, foundation, style
        vocab = tokenizer.get_vocab()
        self.words = sorted(vocab, key=vocab.get)  # id -> token

    def __len__(self) -> int:
        return len(self.words)

    def prompts(self, questions: Sequence[str]) -> list[str]:
        """The prompt text of each question, the mask placeholder as the tokenizer's mask."""
        return [prompt_for(q, self.style).text.replace(MASK, self.tokenizer.mask_token)
                for q in questions]

    def encode_many(self, questions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n, max_len] right-padded with 0, lengths int64 [n]); a cloze whose mask
        falls beyond ``max_len`` is refused (raise ``data.max_question_length``)."""
        texts = self.prompts(questions)
        enc = self.tokenizer(texts, max_length=max_len, truncation=True, padding="max_length")
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        if len(texts) and ids.shape[1] != max_len:  # the tokenizer padded less (empty input)
            ids = np.pad(ids, ((0, 0), (0, max_len - ids.shape[1])))
        lengths = (ids != 0).sum(axis=1).astype(np.int64)
        wanted = np.array([self.tokenizer.mask_token in t for t in texts], dtype=bool)
        lost = wanted & ~(ids == self.tokenizer.mask_token_id).any(axis=1)
        if lost.any():
            i = int(np.flatnonzero(lost)[0])
            raise PkdError(f"question {questions[i]!r}: its prompt's mask falls beyond "
                           f"data.max_question_length={max_len} tokens; raise it")
        return ids, lengths

    def save(self, path: str | Path) -> Path:
        """Write the reference (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "version": 1, "foundation": self.foundation,
                                   "style": self.style,
                                   "vocab_sha256": vocab_digest(self.tokenizer)}))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, tokenizer) -> PromptTokenizer:
        """Read a reference written by :meth:`save`, checked against ``tokenizer``."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise PkdError(f"{path}: cannot read the prompt tokenizer ({err.strerror or err})") \
                from None
        except json.JSONDecodeError as err:
            raise PkdError(f"{path}: not valid JSON (line {err.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PkdError(f"{path}: not a pkd prompt tokenizer (format != '{FORMAT}')")
        if data.get("vocab_sha256") != vocab_digest(tokenizer):
            raise PkdError(f"{path}: written with the tokenizer of {data.get('foundation')!r}, "
                           "whose vocabulary differs from model.foundation's")
        return cls(tokenizer, str(data["foundation"]), str(data["style"]))


def is_prompt_file(path: str | Path) -> bool:
    """True when ``path`` (a run's words.json) is a prompt tokenizer reference."""
    try:
        return json.loads(Path(path).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
