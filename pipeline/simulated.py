"""Simulated detectors: ``--detector simulated:student:PATH`` / ``simulated:teacher:PATH``.

**Simulated, not trained.** DistillVLM's alignment (the teacher pooled on the student's boxes,
``--boxes-from``, vs on its own proposals) only means something when the two detectors propose
different boxes. A transformers DETR/YOLOS trained on the corpus would need scipy (its Hungarian
matching), a dev-only dependency, and far more than the demo's CPU budget; so each detector is
a documented, seeded *proposal model* around the given boxes of a COCO-detection JSON (the
benchmark's ``boxes.json``), labelled ``simulated`` in the store provenance:

for each given box ``(x1, y1, x2, y2)`` of side ``(w, h)``:

- dropped with probability ``drop`` (a missed object; one box per image is always kept);
- otherwise moved: ``x1 + σ w ε1, y1 + σ h ε2, x2 + σ w ε3, y2 + σ h ε4``, ``ε ~ N(0, 1)``,
  clipped to the image; score ``U(0.6, 1)``, label = its category;

plus ``Poisson(extra)`` false proposals per image: a random box of side ``U(0.15, 0.5)`` of the
image, score ``U(0.2, 0.5)``, label -1. Boxes are sorted by score, at most ``max_boxes``.
Every draw comes from ``numpy.random.default_rng([profile.seed, image_id])``: the boxes of an
image do not depend on batching or order, and the two profiles differ in σ, drop rate, extra
rate and seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pkd.errors import PkdError
from pkd.pipeline.box_sources import Detections, GivenBoxes, whole_image
from pkd.pipeline.boxes import clip_boxes


@dataclass(frozen=True)
class ProposalProfile:
    sigma: float  # std of each coordinate's jitter, as a fraction of the box side
    drop: float  # probability that a given box is missed
    extra: float  # mean number of false proposals per image (Poisson)
    seed: int  # seed of this detector's draws (with the image id)


PROFILES = {
    "student": ProposalProfile(sigma=0.10, drop=0.10, extra=1.0, seed=101),
    "teacher": ProposalProfile(sigma=0.05, drop=0.05, extra=0.5, seed=202),
}


def parse_simulated(target: str) -> tuple[str, str]:
    """``"student:PATH"`` -> ``("student", "PATH")``; PkdError for an unknown profile."""
    name, sep, path = target.partition(":")
    if not sep or name not in PROFILES or not path.strip():
        raise PkdError(f"--detector simulated:{target!r}: expected simulated:PROFILE:PATH with "
                       f"PROFILE one of {', '.join(PROFILES)}")
    return name, path.strip()


def simulate_proposals(boxes: np.ndarray, labels: np.ndarray, width: float, height: float,
                       profile: ProposalProfile, image_id: int, max_boxes: int) -> Detections:
    """The proposal model of the module doc for one image (boxes in its pixels)."""
    rng = np.random.default_rng([profile.seed, int(image_id)])
    n = len(boxes)
    keep = rng.random(n) >= profile.drop
    if n and not keep.any():
        keep[int(rng.integers(n))] = True
    side = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)  # (N, 4) w h w h
    moved = boxes + profile.sigma * side * rng.standard_normal((n, 4))
    scores = rng.uniform(0.6, 1.0, n)
    extra = int(rng.poisson(profile.extra))
    wh = rng.uniform(0.15, 0.5, (extra, 2)) * (width, height)
    xy = rng.random((extra, 2)) * ((width, height) - wh)
    all_boxes = np.concatenate([moved[keep], np.concatenate([xy, xy + wh], 1)])
    all_scores = np.concatenate([scores[keep], rng.uniform(0.2, 0.5, extra)])
    all_labels = np.concatenate([labels[keep], np.full(extra, -1)])
    box = clip_boxes(all_boxes, width, height).numpy()
    valid = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])  # a jitter may invert a box
    order = [i for i in np.argsort(-all_scores, kind="stable") if valid[i]][:max_boxes]
    if not order:
        return whole_image(int(width), int(height))
    return Detections(box[order].astype(np.float32), all_scores[order].astype(np.float32),
                      all_labels[order].astype(np.int64), None)


class SimulatedDetector(GivenBoxes):
    """A simulated detector (module doc) over a COCO-detection JSON; no per-box features.
    Reads and rescales the boxes like ``given:``; only the proposals drawn from them differ."""

    feature_dim = None

    def __init__(self, target: str, max_boxes: int = 100):
        self.name, path = parse_simulated(target)
        self.profile = PROFILES[self.name]
        super().__init__(path, max_boxes)

    def provenance(self) -> dict:
        given = super().provenance()
        return {"detector": f"simulated:{self.name}:{self.path.resolve()}", "simulated": True,
                "profile": asdict(self.profile), "boxes_sha256": given["boxes_sha256"],
                "max_boxes": self.max_boxes}

    def _one(self, size: tuple[int, int], image_id: int) -> Detections:
        width, height = size
        entry = self.by_id.get(image_id)
        if entry is None or len(entry.boxes) == 0:
            return whole_image(width, height)
        scale = np.array([width / entry.width, height / entry.height] * 2, dtype=np.float64)
        return simulate_proposals(entry.boxes.astype(np.float64) * scale, entry.labels, width,
                                  height, self.profile, image_id, self.max_boxes)
