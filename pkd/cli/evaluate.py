"""``pkd evaluate``: the official VQA metric on a results file (or a trained run)."""

from __future__ import annotations


def evaluate() -> None:
    """Score VQA results with the official-equivalent metric."""
    raise NotImplementedError
