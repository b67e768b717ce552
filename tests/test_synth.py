"""Synthetic OOD benchmark v2: file contract, determinism, geometry, answers, prior shift, captions.

Held-out combinations, the detection corpus, the blind control and the presets:
``tests/test_synth_v2.py``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pkd.cli import main
from pkd.data import synth as synth_module
from pkd.data.normalize import normalize_answer
from pkd.data.synth import SPLITS, SynthConfig, generate, sample_all
from pkd.data.synth_questions import (
    ANSWER_TYPE,
    DIRECT_TYPES,
    QUESTION_TYPES,
)
from pkd.data.synth_scene import COLORS, SHAPES
from pkd.errors import PkdError

SIZE = 64
CFG = SynthConfig(seed=3, image_size=SIZE, train_images=360, val_images=180, test_images=300,
                  test_comp_images=120, test_iid_images=360, caption_images=300,
                  detection_train_images=40, detection_val_images=10)
TINY = dict(image_size=SIZE, train_images=12, val_images=3, test_images=6, test_comp_images=4,
            test_iid_images=6, caption_images=5, detection_train_images=3,
            detection_val_images=2, pilot_scenes=300)

QUESTION_KEYS = {"info", "task_type", "data_type", "data_subtype", "license", "questions"}
ANNOTATION_KEYS = {"info", "license", "data_type", "data_subtype", "annotations"}
ENTRY_KEYS = {"question_id", "image_id", "question_type", "answer_type",
              "multiple_choice_answer", "answers"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    meta = generate(CFG, out)
    data = {s: (load(out / f"synth_{s}_questions.json"), load(out / f"synth_{s}_annotations.json"))
            for s in SPLITS}
    return out, meta, data, load(out / "boxes.json"), load(out / "captions.json")


def objects_by_image(boxes: dict) -> dict[int, list[tuple[str, str, str]]]:
    """image_id -> [(shape, colour, size)] recomputed from boxes.json."""
    names = {c["id"]: c["name"] for c in boxes["categories"]}
    out: dict[int, list] = {}
    for a in boxes["annotations"]:
        out.setdefault(a["image_id"], []).append(
            (names[a["category_id"]], a["attributes"]["color"], a["attributes"]["size"]))
    return out


def test_vqa_files_have_the_exact_v2_layout(bench):
    out, meta, data, _, _ = bench
    for split, (qs, anns) in data.items():
        assert set(qs) == QUESTION_KEYS and set(anns) == ANNOTATION_KEYS
        assert qs["task_type"] == "Open-Ended" and qs["data_type"] == anns["data_type"] == "synth"
        assert qs["data_subtype"] == anns["data_subtype"] == split
        assert {"url", "name"} <= set(qs["license"]) and "description" in qs["info"]
        assert all(set(q) == {"image_id", "question", "question_id"} for q in qs["questions"])
        assert [q["question_id"] for q in qs["questions"]] == [
            a["question_id"] for a in anns["annotations"]]
        for a in anns["annotations"]:
            assert set(a) == ENTRY_KEYS
            assert a["answer_type"] == ANSWER_TYPE[a["question_type"]]
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(set(x) == {"answer", "answer_confidence", "answer_id"} for x in a["answers"])
            assert {x["answer_confidence"] for x in a["answers"]} <= {"yes", "maybe"}
            raw = Counter(x["answer"] for x in a["answers"])
            assert raw.most_common(1)[0][0] == a["multiple_choice_answer"]
        assert meta["splits"][split]["questions"] == len(qs["questions"])
        assert meta["splits"][split]["images"] == len({q["image_id"] for q in qs["questions"]})
    assert load(out / "synth_meta.json") == json.loads(json.dumps(meta))
    assert meta["seed"] == 3 and meta["config"]["train_images"] == 360 and meta["version"] == "6"


def test_images_boxes_and_ids(bench):
    out, _, data, boxes, captions = bench
    split_images = [{q["image_id"] for q in data[s][0]["questions"]} for s in SPLITS]
    caption_images = {im["id"] for im in captions["images"]}
    every = split_images + [caption_images]
    assert sum(map(len, every)) == len(set().union(*every))  # no image shared by two parts
    assert {im["id"] for im in boxes["images"]} == set().union(*every)
    qids = [q["question_id"] for s in SPLITS for q in data[s][0]["questions"]]
    cids = [c["id"] for c in captions["annotations"]]
    assert len(set(qids) | set(cids)) == len(qids) + len(cids)
    for im in boxes["images"][::50]:
        assert im["file_name"] == f"{im['id']:012d}.png"
        with Image.open(out / "images" / im["file_name"]) as png:
            assert png.size == (im["width"], im["height"]) == (SIZE, SIZE) and png.mode == "RGB"
    assert len(list((out / "images").glob("*.png"))) == len(boxes["images"])
    assert [c["name"] for c in boxes["categories"]] == list(SHAPES)
    per_image: dict[int, list] = {}
    for a in boxes["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
        assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE and w > 0 and h > 0
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    signature = Counter()
    for bbs in per_image.values():
        assert 1 <= len(bbs) <= CFG.max_objects
        for i, (x1, y1, w1, h1) in enumerate(bbs):
            for x2, y2, w2, h2 in bbs[i + 1:]:  # disjoint: separated on at least one axis
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
    scenes = {}
    for a in boxes["annotations"]:
        scenes.setdefault(a["image_id"], []).append(
            (*a["bbox"], a["category_id"], a["attributes"]["color"], a["attributes"]["size"]))
    signature.update(tuple(objs) for objs in scenes.values())
    assert max(signature.values()) == 1  # no scene repeats, within or across splits


def test_pixels_show_each_object_in_its_colour(bench):
    out, _, _, boxes, _ = bench
    for a in boxes["annotations"][:300]:
        x, y, w, h = a["bbox"]
        with Image.open(out / "images" / f"{a['image_id']:012d}.png") as png:
            pixels = np.asarray(png, dtype=np.float32)
        cx, cy = x + w // 2, y + h // 2  # inside every shape (triangle: mid-height, centred)
        patch = pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
        assert np.abs(patch - np.array(COLORS[a["attributes"]["color"]])).max() < 40


RELATION = r"(left of|right of|above|below)"


def _in_relation(objects: list, relation: str, size: str | None, name: str, key: int) -> list:
    """The objects standing in ``relation`` to the anchor named ``[size] name`` (``key``: 0 =
    named by shape, 1 = by colour); asserts the anchor is named only as precisely as needed."""
    named = [o for o in objects if o[key] == name]
    assert (len(named) > 1) == (size is not None)
    (anchor,) = [o for o in named if size in (None, o[2])]
    (ax, ay, aw, ah) = anchor[3]
    test = {"left of": lambda b: b[0] + b[2] <= ax, "right of": lambda b: b[0] >= ax + aw,
            "above": lambda b: b[1] + b[3] <= ay, "below": lambda b: b[1] >= ay + ah}[relation]
    return [o for o in objects if o is not anchor and test(o[3])]


def recompute_relational(question: str, objects: list[tuple[str, str, str, list]]) -> str:
    """The answer of a relational question from (shape, colour, size, bbox) of its image."""
    if m := re.fullmatch(rf"Is there a (\w+) (\w+) {RELATION} the (?:(small|large) )?(\w+)\?",
                         question):
        color, shape, relation, size, name = m.groups()
        assert size is not None or shape != name  # else the text alone would answer "no"
        there = _in_relation(objects, relation, size, name, 0)
        return "yes" if any(o[:2] == (shape, color) for o in there) else "no"
    target = relational_target(question, objects)
    return target[1] if question.startswith("What is the color") else target[0]


def relational_target(question: str, objects: list[tuple[str, str, str, list]]) -> tuple:
    """The one object a "What is the color / shape of the object <relation> the <anchor>?"
    question asks about (asserted unique)."""
    m = re.fullmatch(rf"What is the (color|shape) of the object {RELATION} "
                     r"the (?:(small|large) )?(\w+)(?: object)?\?", question)
    assert m, question
    asked, relation, size, name = m.groups()
    (target,) = _in_relation(objects, relation, size, name, 0 if asked == "color" else 1)
    return target


def located_objects(boxes: dict) -> dict[int, list[tuple[str, str, str, list]]]:
    """image_id -> [(shape, colour, size, bbox)] from boxes.json."""
    names = {c["id"]: c["name"] for c in boxes["categories"]}
    located: dict[int, list] = {}
    for b in boxes["annotations"]:
        located.setdefault(b["image_id"], []).append(
            (names[b["category_id"]], b["attributes"]["color"], b["attributes"]["size"], b["bbox"]))
    return located


def recompute(question: str, objects: list[tuple[str, str, str]]) -> str:
    """The answer a question must have, from the boxes.json objects of its image."""
    if m := re.fullmatch(r"What color is the (?:(small|large) )?(\w+)\?", question):
        same = [(c, z) for s, c, z in objects if s == m[2]]
        assert (len(same) > 1) == (m[1] is not None)  # the size is named only when needed
        (color,) = [c for c, z in same if m[1] in (None, z)]  # exactly one object is meant
        return color
    if m := re.fullmatch(r"What shape is the (?:(small|large) )?(\w+) object\?", question):
        same = [(s, z) for s, c, z in objects if c == m[2]]
        assert (len(same) > 1) == (m[1] is not None)
        (shape,) = [s for s, z in same if m[1] in (None, z)]
        return shape
    if question == "How many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(c == m[1] for _, c, _ in objects))
    raise AssertionError(question)


def test_answers_agree_with_the_recorded_objects(bench):
    _, _, data, boxes, _ = bench
    objects = objects_by_image(boxes)
    located = located_objects(boxes)
    templates = Counter()
    for qs, anns in data.values():
        for q, a in zip(qs["questions"], anns["annotations"], strict=True):
            assert q["question"].lower().startswith(a["question_type"])
            answer = (recompute_relational(q["question"], located[q["image_id"]])
                      if q["question"].startswith(("What is the", "Is there")) else
                      recompute(q["question"], objects[q["image_id"]]))
            assert answer == a["multiple_choice_answer"]
            words = "|".join([*COLORS, *SHAPES, "small", "large", "left of", "right of", "above",
                              "below"])
            templates[re.sub(rf"\b({words})\b", "X", q["question"])] += 1
    # colour, shape (with / without the size), 2 counts; 3 relational families x (with / without)
    assert len(templates) == 12 and min(templates.values()) > 20  # every template in use


def test_human_answers_have_variants_and_a_little_noise(bench):
    _, _, data, _, _ = bench
    kinds = Counter()
    for _, anns in data.values():
        for a in anns["annotations"]:
            mc = a["multiple_choice_answer"]
            folded = [normalize_answer(x["answer"]) for x in a["answers"]]
            assert sum(x["answer"] == mc for x in a["answers"]) >= 6
            assert sum(f == mc for f in folded) >= 8  # at most 2 annotators disagree
            kinds.update("exact" if x["answer"] == mc else "variant" if f == mc else "wrong"
                         for x, f in zip(a["answers"], folded, strict=True))
    total = sum(kinds.values())
    assert 0.02 < kinds["variant"] / total < 0.15 and 0.01 < kinds["wrong"] / total < 0.1


def shares(anns: dict, question_type: str) -> tuple[Counter, int]:
    answers = [a["multiple_choice_answer"] for a in anns["annotations"]
               if a["question_type"] == question_type]
    return Counter(answers), len(answers)


@pytest.mark.parametrize("question_type", QUESTION_TYPES)
def test_answer_prior_is_shifted_in_test_only(bench, question_type):
    _, _, data, _, _ = bench
    priors = synth_module.priors_of(CFG)
    top = priors.train_favourite(question_type)
    freq = {}
    for split in ("train", "val", "test", "test_iid"):
        counts, n = shares(data[split][1], question_type)
        thinned = question_type in DIRECT_TYPES or question_type == "is there a"
        need = (30 if split == "val" else 60) // (2 if thinned else 1)
        assert n >= need, (split, n)  # direct families keep 0.4 x, yes/no 0.5 x the questions
        freq[split] = counts[top] / n
        if split == "test" and question_type != "is there a":  # the test favourite (target
            # test_bias, calibrated through the per-image cap)
            assert counts[priors.shifted[question_type]] / n > CFG.test_bias - 0.12
    if question_type == "is there a":  # yes 0.85 in train, balanced in test
        assert freq["train"] > 0.75 and abs(freq["test"] - 0.5) < 0.1
    else:  # targets 0.75 -> 0.03
        assert freq["train"] > 0.65 and freq["test"] < 0.1
    assert abs(freq["test_iid"] - freq["train"]) < 0.15  # ~50 questions a thinned type: ±0.08 SE
    assert abs(freq["val"] - freq["train"]) < 0.2


def test_captions_describe_every_object_uniformly(bench):
    _, meta, _, boxes, captions = bench
    objects = objects_by_image(boxes)
    assert set(captions) >= {"images", "annotations"}
    assert all(set(im) == {"id", "file_name", "width", "height"} for im in captions["images"])
    assert len(captions["annotations"]) == meta["captions"]["captions"] == 2 * CFG.caption_images
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    colours, shapes, sizes = Counter(), Counter(), Counter()
    for c in captions["annotations"]:
        assert set(c) == {"id", "image_id", "caption"}
        said = re.findall(r"a (small|large) (\w+) (\w+)", c["caption"])
        truth = objects[c["image_id"]]
        assert sorted(said) == sorted((z, col, s) for s, col, z in truth)
        assert words[len(truth)] in c["caption"].split(":")[0]
        colours.update(col for _, col, _ in said)
        shapes.update(s for _, _, s in said)
        sizes.update(z for z, _, _ in said)
    for counter, k in ((colours, len(COLORS)), (shapes, len(SHAPES)), (sizes, 2)):
        n = sum(counter.values())
        assert len(counter) == k and all(abs(v / n - 1 / k) < 0.05 for v in counter.values())


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate(SynthConfig(seed=seed, **TINY), tmp_path / name)
    a, b, c = (file_bytes(tmp_path / n) for n in "abc")
    assert len(a) == 5 + 2 * len(SPLITS) + 12 + 3 + 6 + 4 + 6 + 5 + 3 + 2  # JSON files + PNGs
    assert a == b
    assert a.keys() == c.keys()
    assert a["synth_train_questions.json"] != c["synth_train_questions.json"]
    assert a["images/000001000001.png"] != c["images/000001000001.png"]


def test_bad_config_and_foreign_folder_are_user_errors(tmp_path):
    with pytest.raises(PkdError, match="SynthConfig: .*bias"):
        generate(SynthConfig(bias=0.99, **TINY), tmp_path / "x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PkdError, match="not empty"):
        generate(SynthConfig(**TINY), tmp_path)


def test_cli_writes_the_benchmark(tmp_path, capsys, monkeypatch):
    small = {"detection_train_images": 2, "detection_val_images": 2, "pilot_scenes": 300}
    monkeypatch.setitem(synth_module.PRESETS, "quick", small)  # keep the CLI run small
    out = tmp_path / "bench"
    args = ["data", "synth", str(out), "--seed", "5", "--train-images", "10", "--val-images", "3",
            "--test-images", "4", "--caption-images", "4", "--image-size", "48",
            "--direct-weight", "0.7", "--caption-relations"]
    assert main(args) == 0
    assert "test_comp" in capsys.readouterr().out
    meta = load(out / "synth_meta.json")
    assert meta["seed"] == 5 and meta["splits"]["test_iid"]["images"] == 4
    assert meta["splits"]["test_comp"]["images"] == 4 and meta["detection"]["val"]["images"] == 2
    assert meta["config"]["image_size"] == 48 and meta["config"]["direct_weight"] == 0.7
    assert meta["config"]["caption_relations"] is True
    assert main(args) == 0  # an earlier synth output may be regenerated in place
    assert main(["data", "synth", str(out), "--bias", "1.5"]) == 2
    assert main(["data", "synth", str(out), "--direct-weight", "0"]) == 2
    assert main(["data", "synth", str(out), "--preset", "huge"]) == 2


def named(scene, name: str):
    """The one object of ``scene`` that "[size] colour shape" names (asserts it is unique)."""
    *size, color, shape = name.split()
    hits = [o for o in scene.objects if (o.color, o.shape) == (color, shape)
            and (not size or o.size == size[0])]
    assert len(hits) == 1, name
    return hits[0]


def test_relational_captions_state_a_relation_that_holds_and_only_it():
    """caption_relations: the sentence names two objects uniquely and the one relation their
    boxes stand in; the default corpus states none."""
    from pkd.data.synth_formats import caption_sentences
    from pkd.data.synth_questions import RELATIONS, related

    cfg = SynthConfig(caption_images=300, pilot_scenes=300)
    scenes = [i.scene for i in sample_all(cfg)["captions"]]
    plain = [caption_sentences(s, np.random.default_rng(0), 2) for s in scenes[:50]]
    assert not any(" is " in c.split(":")[1] for cs in plain for c in cs)
    stated = 0
    rng = np.random.default_rng(1)
    for scene in scenes:
        for caption in caption_sentences(scene, rng, 2, relations=True):
            m = re.search(r"\. the ((?:small |large )?\w+ \w+) is (left of|right of|above|below) "
                          r"the ((?:small |large )?\w+ \w+)\.$", caption)
            if m is None:
                continue
            stated += 1
            other, anchor = named(scene, m.group(1)), named(scene, m.group(3))
            assert [r for r in RELATIONS if related(anchor, other, r)] == [m.group(2)], caption
    assert stated > 0.7 * 2 * len(scenes)
