"""Losses, one file per family; each a small ``nn.Module`` over tensors with its formula."""

from pkd.train.losses.vqa import VQALoss, vqa_score

__all__ = ["VQALoss", "vqa_score"]
