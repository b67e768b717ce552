"""Answer vocabulary and soft-score targets, the bottom-up-attention-vqa convention.

Follows hengyuan-hu/bottom-up-attention-vqa ``tools/compute_softscore.py``:

- an answer is kept when its key (:func:`pkd.data.normalize.preprocess_answer` of
  ``multiple_choice_answer``: official normalization, then commas deleted) is the answer of at
  least ``min_count`` (default 9) distinct training questions;
- the soft score of vocabulary answer ``a`` for a question counts how many of the 10 human answers
  have key ``a``: ``0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0``. This bottom-up
  convention approximates ``min(1, count / 3)`` (0.33, 0.67, 1 for 1..3); with exactly 10 answers
  it is in fact the official leave-one-out average of :mod:`pkd.data.metric` (``m`` matching
  answers: ``(m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10``), up to the metric's rule of
  normalizing only when the 10 answers differ.

Differences from that script: the 10 answers are counted by key (the script counts raw strings
although its docstring asks for preprocessed ones), and indices are ordered by decreasing count
then alphabetically (the script used Python 2 dict order), so a vocabulary is reproducible.

File (``answers.json``): ``{"format": "pkd-answer-vocab", "version": 1, "min_count": int,
"answers": [str], "counts": [int]}`` — index i is ``answers[i]``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pkd.data.normalize import preprocess_answer
from pkd.data.vqa import Annotation, read_json
from pkd.errors import PkdError
from pkd.fsio import write_atomic

FORMAT, VERSION = "pkd-answer-vocab", 1
SCORE_OF_COUNT = (0.0, 0.3, 0.6, 0.9)  # count of an answer among the 10 -> score; >= 4 -> 1.0


def soft_score(count: int) -> float:
    """Bottom-up ``get_score``: 0, 0.3, 0.6, 0.9 for 0..3 agreeing annotators, 1.0 from 4."""
    return SCORE_OF_COUNT[count] if count < len(SCORE_OF_COUNT) else 1.0


class AnswerVocab:
    """Answer keys <-> classifier indices."""

    def __init__(self, answers: list[str], counts: list[int] | None = None, min_count: int = 9):
        self.answers = list(answers)  # index -> answer key
        self.counts = list(counts) if counts is not None else [0] * len(self.answers)
        self.min_count = min_count  # threshold the vocabulary was built with
        self._index = {a: i for i, a in enumerate(self.answers)}
        if len(self._index) != len(self.answers):
            raise PkdError("answer vocabulary: duplicate answers")

    @classmethod
    def build(cls, annotations: Iterable[Annotation], min_count: int = 9) -> AnswerVocab:
        """Keys answering >= ``min_count`` distinct questions, most frequent first."""
        questions: dict[str, set[int]] = {}
        for a in annotations:
            questions.setdefault(preprocess_answer(a.multiple_choice_answer), set()).add(
                a.question_id)
        kept = sorted(((len(q), k) for k, q in questions.items() if len(q) >= min_count),
                      key=lambda ck: (-ck[0], ck[1]))
        return cls([k for _, k in kept], [c for c, _ in kept], min_count)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return preprocess_answer(answer) in self._index

    def index(self, answer: str) -> int | None:
        """Index of ``answer`` (normalized to its key first), None when not in the vocabulary."""
        return self._index.get(preprocess_answer(answer))

    def answer(self, index: int) -> str:
        """The answer key at ``index``."""
        return self.answers[index]

    def soft_scores(self, annotation: Annotation) -> dict[int, float]:
        """``{index: soft score}`` of the in-vocabulary answers among the 10 human answers."""
        counts = Counter(preprocess_answer(a) for a in annotation.answers)
        return {self._index[k]: soft_score(c) for k, c in counts.items() if k in self._index}

    def target(self, annotation: Annotation) -> np.ndarray:
        """Dense soft-score target, float32 [A] (zeros outside the scored answers)."""
        out = np.zeros(len(self), dtype=np.float32)  # (A,)
        for i, s in self.soft_scores(annotation).items():
            out[i] = s
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "version": VERSION, "min_count": self.min_count,
                "answers": self.answers, "counts": self.counts}
        return write_atomic(path, json.dumps(data, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AnswerVocab:
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PkdError(f"{path}: not a pkd answer vocabulary (no format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise PkdError(f"{path}: answer vocabulary version {data.get('version')!r}, "
                           f"this pkd reads version {VERSION}")
        answers, counts = data.get("answers"), data.get("counts")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise PkdError(f"{path}: answers: expected a list of strings")
        if not isinstance(counts, list) or len(counts) != len(answers):
            raise PkdError(f"{path}: counts: expected a list as long as answers")
        try:
            return cls(answers, counts, int(data.get("min_count", 0)))
        except PkdError as err:
            raise PkdError(f"{path}: {err}") from None
