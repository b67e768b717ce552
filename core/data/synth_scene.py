"""Scenes of the synthetic benchmark: a few coloured shapes on a noisy background.

A scene holds 1..``max_objects`` objects, each one shape x colour x size, whose boxes do not
overlap (at least ``GAP`` pixels apart) and lie inside the image. Boxes are COCO ``[x, y, w, h]``
in pixels, the shape filling its box. Rendering adds a tinted grey background with a linear
gradient, a per-object colour jitter and Gaussian pixel noise, so that a model has to look at
shapes and hues rather than at exact pixel values. All randomness comes from the caller's
``numpy.random.Generator``: same generator state -> same scene and same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")  # also the COCO categories, ids 1..4
COLORS = {  # name -> RGB before jitter; saturated, so none is confused with the grey background
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SIZES = {"small": 0.25, "large": 0.375}  # box side / image side (64 px: 16 and 24 px objects)
GAP = 2  # minimum free pixels between two boxes


@dataclass(frozen=True)
class SceneObject:
    shape: str  # one of SHAPES
    color: str  # a key of COLORS
    size: str  # a key of SIZES
    box: tuple[int, int, int, int]  # (x, y, w, h) pixels, COCO order

    @property
    def area(self) -> float:
        """Area of the drawn shape in pixels (circle pi*r^2, triangle/diamond half the box)."""
        w, h = self.box[2], self.box[3]
        factor = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}
        return round(float(w * h * factor[self.shape]), 2)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # in drawing order

    def count(self, color: str | None = None, shape: str | None = None) -> int:
        """Number of objects matching the given colour and/or shape (None = any)."""
        return sum(
            (color is None or o.color == color) and (shape is None or o.shape == shape)
            for o in self.objects
        )

    def signature(self) -> tuple:
        """Identity of the layout; two splits never share one (no repeated scene)."""
        return tuple((o.shape, o.color, o.size, o.box) for o in self.objects)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """True when boxes a and b are closer than GAP pixels on both axes."""
    return (
        a[0] < b[0] + b[2] + GAP
        and b[0] < a[0] + a[2] + GAP
        and a[1] < b[1] + b[3] + GAP
        and b[1] < a[1] + a[3] + GAP
    )


def _place(rng: np.random.Generator, side: int, image_size: int, taken: list) -> tuple | None:
    """The first free (x, y, side, side) box of 50 random positions inside the image, or None."""
    for x, y in rng.integers(1, image_size - side, size=(50, 2)).tolist():
        box = (x, y, side, side)
        if not any(_overlaps(box, other) for other in taken):
            return box
    return None


Combo = tuple[str, str]  # (shape, colour)
ALL_COMBOS: tuple[Combo, ...] = tuple((s, c) for s in SHAPES for c in COLORS)


def sample_scene(rng: np.random.Generator, image_size: int, max_objects: int,
                 combos: tuple[Combo, ...] = ALL_COMBOS,
                 first: tuple[Combo, ...] | None = None) -> Scene:
    """Random non-overlapping objects, n of them with P(n) ∝ n, sizes uniform.

    Each object's (shape, colour) is uniform over ``combos``; the first object's over ``first``
    when given (a compositional test scene: at least one object with a held-out combination).
    Favouring fuller scenes (P(n) ∝ n for n = 1..max_objects) gives more questions per scene and
    more counts above 1, which the shifted test prior of "how many" needs.
    """
    sizes = list(SIZES)
    cumulative = np.cumsum(np.arange(1, max_objects + 1)) / (max_objects * (max_objects + 1) / 2)
    while True:  # attributes whose boxes cannot be laid out are redrawn (rare: see _layout)
        n = min(max_objects, 1 + int(np.searchsorted(cumulative, rng.random(), side="right")))
        drawn = []
        for k, (u_combo, u_size, u_side) in enumerate(rng.random((n, 3)).tolist()):
            pool = first if (k == 0 and first) else combos
            shape, color = pool[int(u_combo * len(pool))]
            size = sizes[int(u_size * len(sizes))]
            drawn.append((shape, color, size, max(4, round(SIZES[size] * image_size
                                                           * (0.9 + 0.2 * u_side)))))
        boxes = _layout(rng, [side for *_, side in drawn], image_size)
        if boxes is not None:
            return Scene(tuple(SceneObject(shape, color, size, box)
                               for (shape, color, size, _), box in zip(drawn, boxes, strict=True)))


def _layout(rng: np.random.Generator, sides: list[int], image_size: int,
            tries: int = 20) -> list[tuple] | None:
    """Non-overlapping boxes of the given sides (largest placed first), or None after ``tries``
    full attempts; retrying positions, not attributes, keeps sizes and counts unbiased."""
    order = sorted(range(len(sides)), key=lambda i: -sides[i])
    for _ in range(tries):
        boxes: dict[int, tuple] = {}
        for i in order:
            box = _place(rng, sides[i], image_size, list(boxes.values()))
            if box is None:
                break
            boxes[i] = box
        if len(boxes) == len(sides):
            return [boxes[i] for i in range(len(sides))]
    return None


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, int, int]) -> None:
    x, y, w, h = obj.box
    x2, y2 = x + w - 1, y + h - 1
    if obj.shape == "circle":
        draw.ellipse((x, y, x2, y2), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x, y, x2, y2), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x + (w - 1) / 2, y), (x2, y2), (x, y2)], fill=fill)
    else:  # diamond
        draw.polygon([(x + (w - 1) / 2, y), (x2, y + (h - 1) / 2), (x + (w - 1) / 2, y2),
                      (x, y + (h - 1) / 2)], fill=fill)


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator,
                 noise: float = 8.0) -> Image.Image:
    """RGB image: tinted grey + gradient background, jittered object colours, pixel noise."""
    s = image_size
    tint = rng.uniform(90, 170) + rng.uniform(-15, 15, size=3)  # (3,) background RGB
    slope = rng.normal(0.0, 20.0, size=2)  # gradient strength along x and y
    ramp = np.linspace(-0.5, 0.5, s)
    background = tint + (slope[0] * ramp[None, :] + slope[1] * ramp[:, None])[..., None]  # (s,s,3)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        rgb = np.array(COLORS[obj.color]) + rng.integers(-15, 16, size=3)
        _draw(draw, obj, tuple(int(v) for v in np.clip(rgb, 0, 255)))
    pixels = np.asarray(image, dtype=np.float32) + noise * rng.standard_normal(
        (s, s, 3), dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
