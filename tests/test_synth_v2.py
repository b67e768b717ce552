"""Synthetic benchmark v2: held-out combinations, detection corpus, blind control, presets."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from test_synth import located_objects, relational_target

from pkd.data.metric import question_accuracy
from pkd.data.synth import (
    EVAL_SPLITS,
    PRIOR,
    SPLITS,
    SynthConfig,
    generate,
    keep_probabilities,
    sample_split,
)
from pkd.data.synth_questions import DIRECT_TYPES, QUESTION_TYPES, weighted
from pkd.data.synth_scene import COLORS, SHAPES, SIZES
from pkd.data.vqa import dataset_files, load_split
from pkd.errors import PkdError

CFG = SynthConfig(seed=7, train_images=150, val_images=40, test_images=100, test_comp_images=100,
                  test_iid_images=100, caption_images=400, detection_train_images=300,
                  detection_val_images=30, pilot_scenes=1000)
DETECTION_KEYS = {"images", "annotations", "categories", "attribute_names"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_v2")
    return out, generate(CFG, out)


def combos_by_image(coco: dict) -> dict[int, set[str]]:
    """image_id -> {"colour shape"} of a COCO detection file with colour attributes."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out: dict[int, set[str]] = {}
    for a in coco["annotations"]:
        out.setdefault(a["image_id"], set()).add(f"{a['attributes']['color']} "
                                                 f"{names[a['category_id']]}")
    return out


def split_image_ids(out: Path, split: str) -> set[int]:
    return {q["image_id"] for q in load(out / f"synth_{split}_questions.json")["questions"]}


def test_detection_corpus_has_the_exact_layout(bench):
    out, meta = bench
    for split, n in (("train", CFG.detection_train_images), ("val", CFG.detection_val_images)):
        coco = load(out / "detection" / f"instances_{split}.json")
        assert set(coco) == DETECTION_KEYS and len(coco["images"]) == n
        assert coco["categories"] == [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
        assert coco["attribute_names"] == {"color": list(COLORS), "size": list(SIZES)}
        ids = {im["id"] for im in coco["images"]}
        for im in coco["images"]:
            assert set(im) == {"id", "file_name", "width", "height"}
        with Image.open(out / "detection" / "images" / coco["images"][0]["file_name"]) as png:
            assert png.size == (coco["images"][0]["width"], coco["images"][0]["height"])
        assert len(list((out / "detection" / "images").glob("*.png"))) == (
            CFG.detection_train_images + CFG.detection_val_images)
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for a in coco["annotations"]:
            assert set(a) == {"id", "image_id", "bbox", "area", "iscrowd", "category_id",
                              "attributes"}
            assert a["image_id"] in ids and a["iscrowd"] == 0 and len(a["bbox"]) == 4
            assert set(a["attributes"]) == {"color", "size"}
            assert a["attributes"]["color"] in COLORS and a["attributes"]["size"] in SIZES
            assert min(a["bbox"][2:]) >= 0.25 * CFG.image_size * 0.9 - 1  # >= ~14 px objects
        assert meta["detection"][split] == {"images": n, "objects": len(coco["annotations"])}


def test_every_part_has_its_own_images(bench):
    out, _ = bench
    parts = [split_image_ids(out, s) for s in SPLITS]
    parts.append({im["id"] for im in load(out / "captions.json")["images"]})
    parts += [{im["id"] for im in load(out / "detection" / f"instances_{s}.json")["images"]}
              for s in ("train", "val")]
    assert sum(map(len, parts)) == len(set().union(*parts))
    assert all(parts)


def test_heldout_combinations_only_in_test_comp_captions_and_detection(bench):
    out, meta = bench
    held = set(CFG.heldout)
    assert meta["heldout"] == sorted(held)
    boxes = combos_by_image(load(out / "boxes.json"))
    for split in ("train", "val", "test", "test_iid"):
        seen = set().union(*(boxes[i] for i in split_image_ids(out, split)))
        assert not seen & held and len(seen) == 24 - len(held), split
    caption_ids = {im["id"] for im in load(out / "captions.json")["images"]}
    assert set().union(*(boxes[i] for i in caption_ids)) >= held
    for split in ("train", "val"):
        detection = combos_by_image(load(out / "detection" / f"instances_{split}.json"))
        if split == "train":
            assert set().union(*detection.values()) >= held
    comp = split_image_ids(out, "test_comp")
    assert all(boxes[i] & held for i in comp)  # every test_comp image shows a held-out object


def about_heldout(question: str, objects: set[str], held: set[str]) -> bool:
    """True when the question names (part of) a held-out object that the image holds, or asks
    whether a held-out pair is present."""
    if m := re.fullmatch(r"Is there a (\w+ \w+) .*\?", question):
        return m[1] in held
    words = set(re.findall(r"\w+", question))
    return any(set(o.split()) & words for o in objects & held)


def test_test_comp_questions_are_about_heldout_objects(bench):
    out, _ = bench
    held, boxes = set(CFG.heldout), combos_by_image(load(out / "boxes.json"))
    located = located_objects(load(out / "boxes.json"))
    pairs = load_split(*dataset_files(out, "synth", "test_comp"))
    assert len(pairs) >= 150
    types = Counter(a.question_type for _, a in pairs)
    assert len(types) == 6, types
    for q, a in pairs:
        if a.question_type.startswith("what is the"):  # relational: the answer object is held out
            shape, color, *_ = relational_target(q.question, located[q.image_id])
            assert f"{color} {shape}" in held, q.question
            continue
        assert about_heldout(q.question, boxes[q.image_id], held), q.question
        assert q.question != "How many objects are there?"
        if a.question_type == "what color is the":  # the answer is a held-out object's colour
            shape = q.question.rstrip("?").split()[-1]
            assert f"{a.multiple_choice_answer} {shape}" in held
        if a.question_type == "is there a" and a.multiple_choice_answer == "yes":
            assert " ".join(q.question.split()[3:5]) in boxes[q.image_id]  # the pair is there


def test_every_split_reads_with_the_vqa_loader(bench):
    out, meta = bench
    for split in SPLITS:
        pairs = load_split(*dataset_files(out, "synth", split))
        assert len(pairs) == meta["splits"][split]["questions"] > 0
        assert all(a is not None and a.image_id == q.image_id for q, a in pairs)


def by_hand(out: Path, split: str, train_answers: dict[str, Counter]) -> float:
    """The least-frequent control's accuracy counted directly from the files."""
    least = {t: min(sorted(c), key=lambda a: c[a]) for t, c in train_answers.items()}
    anns = load(out / f"synth_{split}_annotations.json")["annotations"]
    hits = [question_accuracy([x["answer"] for x in a["answers"]], least[a["question_type"]])
            for a in anns]
    return 100.0 * sum(hits) / len(hits)


def test_meta_control_accuracy_equals_a_count_by_hand(bench):
    out, meta = bench
    train = Counter()
    per_type: dict[str, Counter] = {}
    for a in load(out / "synth_train_annotations.json")["annotations"]:
        per_type.setdefault(a["question_type"], Counter())[a["multiple_choice_answer"]] += 1
        train[a["question_type"]] += 1
    priors = meta["priors"]
    assert priors["train_least"]["is there a"] == "no"
    for split in EVAL_SPLITS:
        got = priors[split]["least_frequent_control"]["accuracy"]
        assert got == pytest.approx(by_hand(out, split, per_type), abs=0.006)
        assert priors[split]["questions"] == meta["splits"][split]["questions"]


def test_the_blind_controls_stay_low_out_of_distribution(bench):
    """The training favourite is rare in test, every type's shifted favourite is drawn from its
    non-favourites, yes/no is 50/50, and synth_meta.json carries the blind-rule table."""
    from pkd.data.synth import priors_of

    _, meta = bench
    priors = priors_of(CFG)
    assert json.loads(json.dumps(meta["answer_priors"])) == json.loads(json.dumps(
        {"train_order": priors.order, "test_favourite": priors.shifted}))
    test = meta["priors"]["test"]
    assert test["train_favourite_control"]["accuracy"] < 35
    share = test["answer_distribution"]
    for t in QUESTION_TYPES:
        order = priors.order[t]
        if len(order) > 2:  # target 0.03; < 0.15 leaves room for ~40 questions' noise
            assert share[t].get(order[0], 0.0) < 0.15, t
            assert priors.shifted[t] in order[1:]
    n_yes_no = test["questions"] * 0.1  # yes/no: ~12% of test; 3 standard errors of n/10
    assert test["answer_distribution"]["is there a"]["yes"] == pytest.approx(
        0.5, abs=3 * (0.25 / n_yes_no) ** 0.5)
    iid = meta["priors"]["test_iid"]
    assert iid["train_favourite_share"] > 50 > iid["least_frequent_control"]["accuracy"]
    blind = meta["priors"]["blind_rules"]
    assert {"favourite", "least frequent", "second most frequent", "best constant on val",
            "best blind", "oracle constant"} <= set(blind)
    assert blind["favourite"]["test"] == test["train_favourite_control"]["accuracy"]
    assert blind["oracle constant"]["test"] >= blind["best blind"]["test"] - 1e-9
    assert blind["favourite"]["test_iid"] > blind["favourite"]["test"]


def test_presets_and_their_errors():
    quick, full = SynthConfig.preset("quick"), SynthConfig.preset("full", seed=3)
    assert quick == SynthConfig() and full.seed == 3 and full.train_images > quick.train_images
    with pytest.raises(PkdError, match="unknown preset 'big'"):
        SynthConfig.preset("big")
    with pytest.raises(PkdError, match="heldout 'red cube'"):
        SynthConfig(heldout=("red cube",)).validate()
    with pytest.raises(PkdError, match="circle fewer than 2 colours"):
        SynthConfig(heldout=tuple(f"{c} circle" for c in list(COLORS)[:5])).validate()


def test_full_preset_sizes_without_rendering():
    """The full preset's question counts, sampled as generate() does but not rendered."""
    cfg = SynthConfig.preset("full")
    keep = keep_probabilities(cfg)
    seen: set = set()
    questions = {s: sum(len(i.questions) for i in sample_split(cfg, s, keep, seen))
                 for s in SPLITS}
    assert questions["train"] >= 24_000, questions  # 25,057 on draw 0 (max_objects 6)
    assert all(questions[s] >= 10_000 for s in EVAL_SPLITS), questions
    assert set(PRIOR) == set(SPLITS)


def test_weighted_scales_only_the_direct_families_by_hand():
    keep = {"what color is the": {"red": 0.5, "blue": 0.2}, "how many": {"1": 0.4},
            "what is the color of the": {"red": 0.1}}
    assert weighted(keep, 0.25) == {"what color is the": {"red": 0.125, "blue": 0.05},
                                    "how many": {"1": 0.4},
                                    "what is the color of the": {"red": 0.1}}
    assert weighted(keep, 1.0) == keep
    keep["is there a"] = {"yes": 0.6, "no": 0.2}
    assert weighted(keep, 1.0, 0.5)["is there a"] == {"yes": 0.3, "no": 0.1}
    assert weighted(keep, 1.0, 0.5)["how many"] == {"1": 0.4}
    for field in ("direct_weight", "yes_no_weight"):
        with pytest.raises(PkdError, match="direct_weight and yes_no_weight must be in"):
            SynthConfig(**{field: 0.0}).validate()


def test_direct_weight_thins_the_direct_families_and_keeps_their_prior():
    """Sampled as generate() does (no rendering): halving the direct families' weight about
    halves their share of the train questions and leaves their answer shares as they were."""
    def counts(cfg):
        items = sample_split(cfg, "train", keep_probabilities(cfg), set())
        return Counter((q.question_type, q.answer) for i in items for q in i.questions)

    base = dict(train_images=1500, pilot_scenes=1000)
    full = counts(SynthConfig(direct_weight=1.0, **base))  # v4: equal shares
    thin = counts(SynthConfig(direct_weight=0.5, **base))

    def n(c, t):
        return sum(v for (u, _), v in c.items() if u == t)

    def top(c, t):  # share of the type's commonest answer (its train favourite)
        return max(v for (u, _), v in c.items() if u == t) / n(c, t)

    for t in DIRECT_TYPES:  # relative to an undirected family: ~0.5 (each image keeps <= 3)
        ratio = (n(thin, t) / n(thin, "how many")) / (n(full, t) / n(full, "how many"))
        assert 0.4 < ratio < 0.6, (t, ratio)
        assert abs(top(thin, t) - top(full, t)) < 0.06, (t, top(full, t), top(thin, t))
    assert n(thin, "what is the color of the") > 1.05 * n(full, "what is the color of the")
