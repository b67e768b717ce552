"""The settings of a VQA-CP-style re-split (:mod:`pkd.data.resplit`) and its two sides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ResplitConfig:
    questions: tuple[Path, ...]  # VQA v2-format questions files (one per source split)
    annotations: tuple[Path, ...]  # their annotation files, same order
    out: Path  # output folder (created)
    seed: int = 0  # shuffles groups and questions; same seed, identical files
    test_share: float = 0.3  # target share of each question type's questions in test
    min_per_type: int = 10  # a question type needs this many questions (and 2 answers)
    seen_share: float = 0.1  # share of a group kept in train when its answer is otherwise unseen
    shift: float = 0.3  # 0 = i.i.d. split of every group, 1 = whole groups (pkd.data.resplit)
    disjoint_images: bool = False  # True: no image in both splits (questions dropped)
    # blind-rule table on at most this many test (and val) questions; 0 = all
    blind_sample: int = 5000

