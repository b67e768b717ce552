"""RoIAlign for the extraction stages: re-exported from the ground module :mod:`pkd.roi`, which
the region-backbone pre-training (``pkd.train.pretrain.regions``) pools through too."""

from pkd.roi import CHUNK_ELEMENTS, BoxesArg, roi_align, roi_align_op, to_rois

__all__ = ["CHUNK_ELEMENTS", "BoxesArg", "roi_align", "roi_align_op", "to_rois"]
