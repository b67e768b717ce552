"""Linear probes of region features: does a regions store carry an object's colour and shape?

The synthetic benchmark's ``boxes.json`` gives each object's box, shape (category) and colour
(attribute). Each stored region is matched to the object of its image whose box overlaps it most,
if ``IoU >= MATCH_IOU`` (0.5, the detection-matching convention; ``given:`` boxes match their
object with IoU 1, a simulated or real detector's jittered boxes their nearest object, false
proposals nothing); a multinomial logistic regression ``softmax(W x + b)`` on the
standardised features of the training images' regions is fitted (full batch, L-BFGS, L2
``weight_decay``) and scored on the regions of ``eval_split``'s images. Accuracy near chance means
the VQA model reading this store cannot see that attribute, whatever it learns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pkd.data.vqa import dataset_files, load_questions
from pkd.errors import PkdError
from pkd.roi import box_iou
from pkd.stores import FeatureStore

MATCH_IOU = 0.5  # a region belongs to the object it overlaps most, from this IoU on


def object_labels(boxes_json: Path) -> dict[int, tuple[np.ndarray, list[dict[str, str]]]]:
    """``{image_id: (boxes (K, 4) x1 y1 x2 y2, [{"shape", "color"}] * K)}`` of the objects."""
    coco = json.loads(Path(boxes_json).read_text())
    shapes = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, tuple[list, list]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes, tags = by_image.setdefault(int(a["image_id"]), ([], []))
        boxes.append([x, y, x + w, y + h])
        tags.append({"shape": shapes[a["category_id"]], "color": a["attributes"]["color"]})
    return {i: (np.asarray(b, np.float64), t) for i, (b, t) in by_image.items()}


def labelled_regions(store: FeatureStore, image_ids: np.ndarray, labels: dict
                     ) -> tuple[np.ndarray, list[dict[str, str]]]:
    """(features (R, d) float32, labels) of every valid region of ``image_ids`` that matches an
    object (module doc)."""
    image_ids = image_ids[store.ok[store.rows_of(image_ids)]]
    got = store.read(store.rows_of(image_ids), ["region_features", "boxes", "num_regions"])
    feats, tags = [], []
    for i, image_id in enumerate(image_ids.tolist()):
        n = int(got["num_regions"][i])
        if image_id not in labels or n == 0:
            continue
        objects, names = labels[image_id]
        iou = box_iou(torch.from_numpy(got["boxes"][i, :n].astype(np.float64)),
                      torch.from_numpy(objects)).numpy()  # (n, K)
        for j in np.flatnonzero(iou.max(1) >= MATCH_IOU).tolist():
            feats.append(got["region_features"][i, j].astype(np.float32))
            tags.append(names[int(iou[j].argmax())])
    if not feats:
        raise PkdError(f"{store.path}: no region overlaps a box of the benchmark with IoU >= "
                       f"{MATCH_IOU} (regions of another data set?)")
    return np.stack(feats), tags


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, weight_decay: float = 1e-3,
              steps: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression on ``x`` (already standardised), full-batch L-BFGS."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(xt), yt)
        loss = loss + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def probe_store(store_path: Path, boxes_json: Path, train_ids: np.ndarray, eval_ids: np.ndarray
                ) -> dict[str, dict[str, float]]:
    """``{"shape" | "color": {"accuracy", "chance", "majority", "regions"}}`` (percent) on the
    eval images; chance = 1 / classes, majority = the most frequent eval class's share."""
    store = FeatureStore.open(store_path, kind="regions")
    labels = object_labels(boxes_json)
    x_train, t_train = labelled_regions(store, np.asarray(train_ids, np.int64), labels)
    x_eval, t_eval = labelled_regions(store, np.asarray(eval_ids, np.int64), labels)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_eval = (x_train - mean) / std, (x_eval - mean) / std
    out = {}
    for attr in ("shape", "color"):
        names = sorted({t[attr] for t in t_train + t_eval})
        index = {n: k for k, n in enumerate(names)}
        y_train = np.array([index[t[attr]] for t in t_train])
        y_eval = np.array([index[t[attr]] for t in t_eval])
        probe = fit_probe(x_train, y_train, len(names))
        with torch.no_grad():
            pred = probe(torch.from_numpy(x_eval)).argmax(1).numpy()
        out[attr] = {"accuracy": 100.0 * float((pred == y_eval).mean()),
                     "chance": 100.0 / len(names),
                     "majority": 100.0 * float(np.bincount(y_eval).max() / len(y_eval)),
                     "regions": int(len(y_eval))}
    return out


def split_image_ids(data: Path, split: str) -> np.ndarray:
    """Sorted image ids of a synthetic benchmark split (``synth_<split>_questions.json``)."""
    questions, _ = dataset_files(Path(data), "synth", split)
    if not questions.is_file():
        raise PkdError(f"{questions}: no such split file (a `pkd data synth` folder?)")
    return np.unique(np.array([q.image_id for q in load_questions(questions)], dtype=np.int64))


def probe_benchmark_store(store_path: Path, data: Path, train_split: str = "train",
                          eval_split: str = "test") -> dict[str, dict[str, float]]:
    """:func:`probe_store` with the benchmark folder's boxes and splits; refused (one line)
    when the store was made from another folder's boxes or images."""
    from pkd.stores.made_from import (  # PIL: loaded only when the image check runs
        check_boxes,
        check_images,
    )

    data = Path(data)
    store = FeatureStore.open(store_path, kind="regions")
    check_boxes(store, data / "boxes.json")
    check_images(store, data / "images")
    return probe_store(store_path, data / "boxes.json", split_image_ids(data, train_split),
                       split_image_ids(data, eval_split))
