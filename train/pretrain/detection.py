"""The detection corpus the region backbone is pre-trained on (Visual Genome's role in bottom-up).

Layout (COCO detection + per-object attributes)::

    DATA/detection/instances_train.json, instances_val.json
        {"images": [{"id", "file_name", "width", "height"}],
         "annotations": [{"id", "image_id", "bbox": [x, y, w, h], "area", "iscrowd": 0,
                          "category_id", "attributes": {"color": str, "size": str}}],
         "categories": [{"id", "name"}],
         "attribute_names": {"color": [...], "size": [...]}}
    DATA/detection/images/<file_name>

:func:`load_detection_split` checks every field and raises a one-line PkdError naming the file
and the key (``instances_train.json: annotations[3].bbox: ...``); :func:`decode_pixels` turns the
images into the backbone's input exactly as the region extraction does (the processor's resize
rule without crop, its resample filter, then its rescale + normalize).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pkd.errors import PkdError
from pkd.roi import resized_size

SPLIT_FILES = {"train": "instances_train.json", "val": "instances_val.json"}


@dataclass
class DetectionSplit:
    path: Path  # the instances_<split>.json file
    image_ids: list[int]  # image ids in file order
    files: list[Path]  # image file of each image
    sizes: list[tuple[float, float]]  # (width, height) the boxes refer to, per image
    boxes: list[np.ndarray]  # per image (N_i, 4) float32 x1y1x2y2 pixels
    labels: list[np.ndarray]  # per image (N_i,) int64 class index 1..K (0 = background)
    attributes: dict[str, list[np.ndarray]]  # group -> per image (N_i,) int64 value index
    categories: list[str]  # class names, index k-1 = class k
    attribute_names: dict[str, list[str]]  # group -> value names


def _need(obj, key: str, where: str, kind: type | tuple[type, ...]):
    if not isinstance(obj, dict) or key not in obj:
        raise PkdError(f"{where}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise PkdError(f"{where}.{key}: expected {getattr(kind, '__name__', 'a number')}, "
                       f"got {value!r}")
    return value


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PkdError(f"{path}: no such file (a detection corpus folder?)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PkdError(f"{path}: not a readable JSON file ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise PkdError(f"{path}: expected a JSON object")
    return data


def _vocabularies(data: dict, name: str) -> tuple[dict[int, int], list[str], dict[str, list[str]]]:
    cats = _need(data, "categories", name, list)
    index, names = {}, []
    for i, cat in enumerate(cats):
        cid = _need(cat, "id", f"{name}: categories[{i}]", int)
        names.append(str(_need(cat, "name", f"{name}: categories[{i}]", str)))
        index[cid] = len(names)  # class index 1..K
    groups = _need(data, "attribute_names", name, dict)
    attrs = {}
    for group, values in groups.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, str)
                                                                 for v in values):
            raise PkdError(f"{name}: attribute_names.{group}: expected a list of strings")
        attrs[group] = list(values)
    if not names or not attrs:
        raise PkdError(f"{name}: 'categories' and 'attribute_names' must not be empty")
    return index, names, attrs


def load_detection_split(data_dir: Path, split: str) -> DetectionSplit:
    """Parse ``DATA/detection/instances_<split>.json`` (see the module doc); PkdError on any
    malformed field, unknown category / attribute value or image id."""
    path = Path(data_dir) / "detection" / SPLIT_FILES[split]
    data, name = _read_json(path), path.name
    cat_index, categories, attr_names = _vocabularies(data, name)
    ids, files, sizes, rows = [], [], [], {}
    for i, img in enumerate(_need(data, "images", name, list)):
        where = f"{name}: images[{i}]"
        image_id = _need(img, "id", where, int)
        ids.append(image_id)
        files.append(path.parent / "images" / _need(img, "file_name", where, str))
        sizes.append((float(_need(img, "width", where, (int, float))),
                      float(_need(img, "height", where, (int, float)))))
        rows[image_id] = []
    for j, ann in enumerate(_need(data, "annotations", name, list)):
        where = f"{name}: annotations[{j}]"
        image_id = _need(ann, "image_id", where, int)
        if image_id not in rows:
            raise PkdError(f"{where}.image_id: {image_id} is not listed in 'images'")
        rows[image_id].append(_annotation(ann, where, cat_index, attr_names))
    return DetectionSplit(
        path, ids, files, sizes,
        boxes=[np.array([r[0] for r in rows[i]], np.float32).reshape(-1, 4) for i in ids],
        labels=[np.array([r[1] for r in rows[i]], np.int64) for i in ids],
        attributes={g: [np.array([r[2][g] for r in rows[i]], np.int64) for i in ids]
                    for g in attr_names},
        categories=categories, attribute_names=attr_names)


def _annotation(ann: dict, where: str, cat_index: dict, attr_names: dict) -> tuple:
    """``(x1y1x2y2, class index, {group: value index})`` of one checked annotation."""
    bbox = _need(ann, "bbox", where, list)
    if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                 for v in bbox):
        raise PkdError(f"{where}.bbox: expected [x, y, w, h] numbers, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise PkdError(f"{where}.bbox: width and height must be > 0, got {bbox!r}")
    cid = _need(ann, "category_id", where, int)
    if cid not in cat_index:
        raise PkdError(f"{where}.category_id: {cid} is not listed in 'categories'")
    given = _need(ann, "attributes", where, dict)
    values = {}
    for group, names in attr_names.items():
        value = _need(given, group, f"{where}.attributes", str)
        if value not in names:
            raise PkdError(f"{where}.attributes.{group}: {value!r} is not in "
                           f"attribute_names.{group}")
        values[group] = names.index(value)
    return [x, y, x + w, y + h], cat_index[cid], values


def check_same_vocabulary(train: DetectionSplit, val: DetectionSplit) -> None:
    """The val split must name the same classes and attribute values as train."""
    if val.categories != train.categories or val.attribute_names != train.attribute_names:
        raise PkdError(f"{val.path.name}: categories / attribute_names differ from "
                       f"{train.path.name}")


def decode_pixels(files: list[Path], processor) -> list[torch.Tensor]:
    """One ``(3, h, w)`` float32 tensor per image, made as the region extraction makes it
    (``pkd.pipeline.backbones.RegionBackbone.feature_maps``): resize by the processor's size
    rule without crop, its resample filter, then ``processor(do_resize=False,
    do_center_crop=False)`` rescales and normalizes."""
    resample = int(getattr(processor, "resample", Image.Resampling.BILINEAR))
    out = []
    for file in files:
        try:
            with Image.open(file) as img:
                rgb = img.convert("RGB")
        except FileNotFoundError as err:
            raise PkdError(f"{file}: no such image file") from err
        except OSError as err:
            raise PkdError(f"{file}: not a readable image ({str(err).splitlines()[0]})") from err
        rgb = rgb.resize(resized_size(processor, *rgb.size), resample)
        pixels = processor(images=[rgb], do_resize=False, do_center_crop=False,
                           return_tensors="pt")["pixel_values"][0]
        out.append(pixels.float())
    return out
