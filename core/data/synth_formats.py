"""File layouts written by the synthetic benchmark, and the caption sentences.

- ``synth_{split}_questions.json`` (VQA v2):
  ``{info, task_type: "Open-Ended", data_type: "synth", data_subtype: split, license,
  questions: [{image_id, question, question_id}]}``
- ``synth_{split}_annotations.json`` (VQA v2):
  ``{info, license, data_type, data_subtype, annotations: [{question_id, image_id,
  question_type, answer_type, multiple_choice_answer, answers: [{answer, answer_confidence,
  answer_id}] x 10}]}``
- ``boxes.json`` (COCO detection): ``{images: [{id, file_name, width, height}], annotations:
  [{id, image_id, bbox: [x, y, w, h], category_id, area, iscrowd: 0, attributes: {color, size}}],
  categories: [{id, name}]}`` with the shapes as categories.
- ``captions.json`` (COCO captions): ``{images: [...], annotations: [{id, image_id, caption}]}``.
- ``detection/instances_{train,val}.json`` (COCO detection + attributes, the region-backbone
  corpus): ``{images: [{id, file_name, width, height}], annotations: [{id, image_id, bbox:
  [x, y, w, h], area, iscrowd: 0, category_id, attributes: {color, size}}], categories: [{id,
  name}] (one per shape), attribute_names: {color: [...], size: [...]}}``.
"""

from __future__ import annotations

import numpy as np

from pkd.data.synth_questions import RELATIONS, related, unique_name
from pkd.data.synth_scene import COLORS, SHAPES, SIZES, Scene, SceneObject

INFO = {
    "description": "pkd synthetic VQA-CP-like benchmark (VQA v2 layout)",
    "url": "",  # generated locally, nothing to download
    "version": "2.0",
    "year": 2024,
    "contributor": "pkd data synth",
    "date_created": "1970-01-01 00:00:00",  # fixed: output bytes depend on the seed only
}
LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/",
           "name": "Creative Commons Attribution 4.0 International License"}
CATEGORY_ID = {shape: i + 1 for i, shape in enumerate(SHAPES)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def image_file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def image_entry(image_id: int, image_size: int) -> dict:
    return {"id": image_id, "file_name": image_file_name(image_id), "width": image_size,
            "height": image_size}


def questions_file(split: str, questions: list[dict]) -> dict:
    return {"info": INFO, "task_type": "Open-Ended", "data_type": "synth", "license": LICENSE,
            "data_subtype": split, "questions": questions}


def annotations_file(split: str, annotations: list[dict]) -> dict:
    return {"info": INFO, "license": LICENSE, "data_type": "synth", "data_subtype": split,
            "annotations": annotations}


def box_annotations(image_id: int, scene: Scene) -> list[dict]:
    """COCO annotations of one image; annotation id = image_id * 10 + object index."""
    return [{"id": image_id * 10 + k, "image_id": image_id, "bbox": list(o.box),
             "category_id": CATEGORY_ID[o.shape], "area": o.area, "iscrowd": 0,
             "attributes": {"color": o.color, "size": o.size}}
            for k, o in enumerate(scene.objects)]


def boxes_file(images: list[dict], annotations: list[dict]) -> dict:
    categories = [{"id": i, "name": name, "supercategory": "shape"}
                  for name, i in CATEGORY_ID.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def detection_file(images: list[dict], annotations: list[dict]) -> dict:
    """A COCO detection file with colour and size attributes (the layout above)."""
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name} for name, i in CATEGORY_ID.items()],
            "attribute_names": {"color": list(COLORS), "size": list(SIZES)}}


def captions_file(images: list[dict], annotations: list[dict]) -> dict:
    return {"info": INFO, "licenses": [LICENSE], "images": images, "annotations": annotations}


def _listing(objects: list[SceneObject]) -> str:
    """'a small red circle, a large blue square and a small green triangle'."""
    phrases = [f"a {o.size} {o.color} {o.shape}" for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relation_sentence(scene: Scene, rng: np.random.Generator) -> str | None:
    """"the blue square is right of the red circle." for a random (object, relation, anchor),
    both named uniquely (:func:`~pkd.data.synth_questions.unique_name`), among the ordered pairs
    that stand in exactly one relation (``related``), so each other relation word makes the
    sentence false; None when there is no such pair."""
    named = [(o, n) for o in scene.objects
             if (n := unique_name(scene, o, "color", "shape")) is not None]
    options = []
    for a, a_name in named:
        for o, o_name in named:
            held = [r for r in RELATIONS if o is not a and related(a, o, r)]
            if len(held) == 1:
                options.append((o_name, held[0], a_name))
    if not options:
        return None
    o, r, a = options[int(rng.integers(len(options)))]
    return f"the {o} is {r} the {a}."


def caption_sentences(scene: Scene, rng: np.random.Generator, n: int,
                      relations: bool = False) -> list[str]:
    """``n`` captions naming every object's size, colour and shape, and the object count.

    Caption k (k even): "two objects: a small red circle and a large blue square." (left to right);
    caption k (k odd): "there are two objects: ..." with the objects in a random order.
    ``relations``: each caption ends with one :func:`relation_sentence` ("... the blue square is
    right of the red circle."), drawn uniformly among the pairs that stand in one relation.
    """
    count = len(scene.objects)
    noun = "object" if count == 1 else "objects"
    word = COUNT_WORDS.get(count, str(count))
    left_to_right = sorted(scene.objects, key=lambda o: (o.box[0], o.box[1]))
    out = []
    for k in range(n):
        if k % 2 == 0:
            out.append(f"{word} {noun}: {_listing(left_to_right)}.")
        else:
            shuffled = [scene.objects[i] for i in rng.permutation(count)]
            verb = "is" if count == 1 else "are"
            out.append(f"there {verb} {word} {noun}: {_listing(shuffled)}.")
        if relations and (extra := relation_sentence(scene, rng)) is not None:
            out[-1] = f"{out[-1]} {extra}"
    return out
