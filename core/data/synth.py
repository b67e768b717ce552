"""Synthetic VQA-CP-like benchmark (v3) in the real VQA v2 file formats: ``generate(cfg, out)``.

Writes into OUT (other tools rely on these names):

    images/{image_id:012d}.png       the five VQA splits and the caption corpus
    synth_{split}_questions.json     VQA v2 questions: train, val, test, test_comp, test_iid
    synth_{split}_annotations.json   VQA v2 annotations, 10 human answers per question
    boxes.json                       COCO detection boxes of every image above ("given boxes")
    captions.json                    COCO captions on their own images, all combinations uniform
    detection/instances_{train,val}.json   COCO detection corpus (objects + colour / size
                                     attributes, like Visual Genome for bottom-up attention)
    detection/images/{image_id:012d}.png   its images (disjoint from everything above)
    synth_meta.json                  config, seed, version, held-out combinations, sizes, priors

Splits: ``train`` and ``val`` (model selection, never ``test*``) follow the train answer prior;
``test`` the shifted prior (VQA-CP style), ``test_iid`` the train prior, ``test_comp`` asks about
objects whose (shape, colour) is held out of every VQA split but occurs in the caption and
detection corpora (CoGenT style; uniform answers). See :mod:`pkd.data.synth_questions`.

Ids: images of part p are ``ID_BASE[p] + 1, 2, ...``, so no image is shared between parts, and no
scene layout repeats anywhere; question id and caption id = ``image_id * 10 + k``.
Randomness: each part draws its scenes, answers and pixels from its own ``numpy`` Generators
seeded with ``(seed, part, stage)``; PNGs carry no timestamp, so one seed gives identical bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pkd.data import synth_formats as fmt
from pkd.data.synth_meta import prior_statistics
from pkd.data.synth_questions import (
    ANSWER_TYPE,
    QUESTION_TYPES,
    Priors,
    Question,
    acceptance,
    candidates,
    draw_priors,
    estimate_base,
    human_answers,
    target_prior,
    weighted,
)
from pkd.data.synth_scene import ALL_COMBOS, COLORS, SHAPES, Scene, render_scene, sample_scene
from pkd.errors import PkdError
from pkd.fsio import check_writable, write_atomic
from pkd.progress import track

SYNTH_VERSION = "6"
SPLITS = ("train", "val", "test", "test_comp", "test_iid")
EVAL_SPLITS = ("test", "test_comp", "test_iid")
PRIOR = {"train": "train", "val": "train", "test": "test", "test_comp": "uniform",
         "test_iid": "train"}
ID_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000, "test_iid": 4_000_000,
           "captions": 5_000_000, "test_comp": 6_000_000, "detection_train": 7_000_000,
           "detection_val": 8_000_000}
STREAM = {"pilot": 0, "train": 1, "val": 2, "test": 3, "test_iid": 4, "captions": 5,
          "test_comp": 6, "detection_train": 7, "detection_val": 8, "pilot_comp": 9, "priors": 10}
HELDOUT = ("green circle", "purple circle", "orange square", "purple square", "green triangle",
           "orange triangle", "blue diamond", "yellow diamond")  # "colour shape", CoGenT style


@dataclass
class SynthConfig:
    seed: int = 0  # master seed: the same seed gives byte-identical output
    image_size: int = 64  # image side in pixels (objects 16 / 24 px at 64)
    max_objects: int = 4  # objects per image, 1..max_objects, P(n) ∝ n (largest count answer)
    train_images: int = 1500  # images of the train split
    val_images: int = 300  # images of the val split (train prior, for model selection)
    test_images: int = 600  # images of the test split (shifted prior)
    test_comp_images: int = 600  # images of test_comp (held-out shape x colour combinations)
    test_iid_images: int = 600  # images of the test_iid split (train prior)
    # images of the unbiased caption corpus (the foundation's tagger overfits 2,000: README)
    caption_images: int = 6000
    captions_per_image: int = 2  # captions per caption image
    caption_relations: bool = False  # each caption also states one spatial relation that holds
    caption_max_objects: int = 4  # objects per caption image, 1..this, P(n) ∝ n
    detection_train_images: int = 1000  # images of detection/instances_train.json
    detection_val_images: int = 200  # images of detection/instances_val.json
    heldout: tuple[str, ...] = HELDOUT  # "colour shape" pairs never in VQA train/val/test/test_iid
    questions_per_image: int = 3  # at most this many questions per VQA image (1..9)
    candidates_per_type: int = 5  # candidate questions per family and scene before acceptance
    # the direct colour / shape families keep this share of questions (v5)
    direct_weight: float = 0.4
    # "is there a" keeps this share of its questions (v6; any constant scores >= 50 there in test)
    yes_no_weight: float = 0.5
    bias: float = 0.75  # share of the train favourite in train (VQA-CP-strength prior)
    test_bias: float = 0.4  # share of the test favourite (a random non-favourite, v6) in test
    yes_no_bias: float = 0.85  # share of "yes" in train; test and test_comp are 50 / 50
    rare: float = 0.03  # share of the train favourite in test
    answer_noise: float = 0.05  # chance that an annotator answers wrongly (at most 2 of 10)
    answer_variation: float = 0.1  # chance of a surface variant ("two", "Yes.") (at most 2 of 10)
    pixel_noise: float = 8.0  # std of the Gaussian pixel noise (0..255 scale)
    pilot_scenes: int = 3000  # scenes used to estimate the candidates' answer distribution

    @classmethod
    def preset(cls, name: str, **overrides) -> SynthConfig:
        """``quick`` (the demo's sizes) or ``full`` (draw 0: 25k training questions, >= 10k per
        test split; 19k-33k training questions over draws 0-9 with 6 objects per image)."""
        if name not in PRESETS:
            raise PkdError(f"SynthConfig: unknown preset {name!r} (choose {' | '.join(PRESETS)})")
        return replace(cls(), **{**PRESETS[name], **overrides})

    def images_of(self, part: str) -> int:
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images,
                "test_comp": self.test_comp_images, "test_iid": self.test_iid_images,
                "captions": self.caption_images, "detection_train": self.detection_train_images,
                "detection_val": self.detection_val_images}[part]

    def heldout_combos(self) -> frozenset[tuple[str, str]]:
        """The held-out combinations as (shape, colour) pairs."""
        return frozenset((p.split()[1], p.split()[0]) for p in self.heldout)

    def validate(self) -> None:
        """Raise PkdError naming the first unusable field."""
        checks = [
            (self.image_size >= 32, "image_size must be >= 32"),
            (3 <= self.max_objects <= 6, "max_objects must be in 3..6 (test favours count 3)"),
            (1 <= self.caption_max_objects <= 6, "caption_max_objects must be in 1..6"),
            (all(0 <= self.images_of(s) < 1_000_000 for s in ID_BASE),
             "image counts must be in 0..999999"),
            (1 <= self.questions_per_image <= 9, "questions_per_image must be in 1..9"),
            (1 <= self.captions_per_image <= 9, "captions_per_image must be in 1..9"),
            (self.candidates_per_type >= 1 and self.pilot_scenes >= 100,
             "candidates_per_type must be >= 1 and pilot_scenes >= 100"),
            (0 < self.rare and self.bias + 2 * self.rare < 1 and self.bias > 0,
             "need 0 < bias, 0 < rare, bias + 2 * rare < 1"),
            (0 < self.test_bias and self.test_bias + 2 * self.rare < 1,
             "need 0 < test_bias, test_bias + 2 * rare < 1"),
            (0.5 < self.yes_no_bias < 1, "yes_no_bias must be in (0.5, 1)"),
            (0 < self.direct_weight <= 1 and 0 < self.yes_no_weight <= 1,
             "direct_weight and yes_no_weight must be in (0, 1]"),
            (0 <= self.answer_noise <= 1 and 0 <= self.answer_variation <= 1,
             "answer_noise and answer_variation must be in [0, 1]"),
        ]
        for ok, problem in checks:
            if not ok:
                raise PkdError(f"SynthConfig: {problem}")
        self._validate_heldout()

    def _validate_heldout(self) -> None:
        for pair in self.heldout:
            words = pair.split()
            if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
                raise PkdError(f"SynthConfig: heldout {pair!r} is not '<colour> <shape>'")
        held = self.heldout_combos()
        if not held:
            raise PkdError("SynthConfig: heldout needs at least one combination (test_comp)")
        for shape in SHAPES:
            if sum((shape, c) not in held for c in COLORS) < 2:
                raise PkdError(f"SynthConfig: heldout leaves {shape} fewer than 2 colours")
        for color in COLORS:
            if all((s, color) in held for s in SHAPES):
                raise PkdError(f"SynthConfig: heldout leaves {color} no shape")


PRESETS = {  # SynthConfig fields that differ from the defaults (= quick)
    "quick": {},
    "full": {"train_images": 15000, "val_images": 2000, "test_images": 5000,
             "test_comp_images": 5000, "test_iid_images": 6100, "caption_images": 20000,
             "detection_train_images": 8000, "detection_val_images": 1000,
             "max_objects": 6},  # v6: counts 1..6, so no blind rule scores > 35 on test
}


@dataclass
class Item:
    image_id: int
    scene: Scene
    questions: list[Question]


def _rng(cfg: SynthConfig, part: str, stage: int = 0) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, STREAM[part], stage])


def _scene_sampler(cfg: SynthConfig, split: str, rng: np.random.Generator):
    """A function drawing one scene of the split's kind (training combos / held-out first)."""
    held = cfg.heldout_combos()
    if split == "captions":
        return lambda: sample_scene(rng, cfg.image_size, cfg.caption_max_objects)
    if split in ("detection_train", "detection_val"):
        return lambda: sample_scene(rng, cfg.image_size, cfg.max_objects)
    allowed = tuple(c for c in ALL_COMBOS if c not in held)
    first = tuple(sorted(held)) if split == "test_comp" else None
    pool = ALL_COMBOS if split == "test_comp" else allowed
    return lambda: sample_scene(rng, cfg.image_size, cfg.max_objects, pool, first)


def priors_of(cfg: SynthConfig) -> Priors:
    """The seed's answer priors: train orders and shifted favourites (:func:`draw_priors`)."""
    return draw_priors(_rng(cfg, "priors"), cfg.max_objects)


def keep_probabilities(cfg: SynthConfig) -> dict[str, dict[str, dict[str, float]]]:
    """prior ("train" / "test" / "uniform") -> question type -> answer -> keep probability."""
    held, priors = cfg.heldout_combos(), priors_of(cfg)
    keep = {}
    for prior, pilot, split in (("train", "pilot", "train"), ("test", "pilot", "test"),
                                ("uniform", "pilot_comp", "test_comp")):
        rng = _rng(cfg, pilot)
        base = estimate_base(rng, cfg.pilot_scenes, _scene_sampler(cfg, split, rng),
                             cfg.candidates_per_type, held, split == "test_comp")
        target = {t: target_prior(t, prior, priors, cfg.bias, cfg.yes_no_bias, cfg.rare,
                                  cfg.test_bias)
                  for t in QUESTION_TYPES}
        keep[prior] = weighted(acceptance(base, target, per_type=prior == "uniform"),
                               cfg.direct_weight, cfg.yes_no_weight)
    return keep


def kept_questions(cfg: SynthConfig, scene: Scene, rng: np.random.Generator,
                   keep: dict[str, dict[str, float]], held: frozenset, comp: bool) -> list:
    """The scene's candidates each kept with probability ``keep[t][a]``, then at most
    ``questions_per_image`` of them (a uniform subset)."""
    kept = [q for q in candidates(scene, rng, cfg.candidates_per_type, held, comp)
            if rng.random() < keep[q.question_type].get(q.answer, 0.0)]
    if len(kept) > cfg.questions_per_image:
        pick = rng.choice(len(kept), cfg.questions_per_image, replace=False)
        kept = [kept[i] for i in sorted(pick)]
    return kept


def sample_split(cfg: SynthConfig, split: str, keep: dict, seen: set) -> list[Item]:
    """Draw scenes until ``images_of(split)`` of them keep at least one question (no rendering;
    caption and detection parts keep every scene and ask nothing)."""
    rng = _rng(cfg, split)
    draw, asks = _scene_sampler(cfg, split, rng), split in PRIOR
    held, comp = cfg.heldout_combos(), split == "test_comp"
    items: list[Item] = []
    for _ in range(1000 * (cfg.images_of(split) + 1)):
        if len(items) == cfg.images_of(split):
            return items
        scene = draw()
        if scene.signature() in seen:  # never repeat a layout across parts
            continue
        kept = kept_questions(cfg, scene, rng, keep[PRIOR[split]], held, comp) if asks else []
        if kept or not asks:
            seen.add(scene.signature())
            items.append(Item(ID_BASE[split] + len(items) + 1, scene, kept))
    raise PkdError(f"SynthConfig: split {split} kept too few questions; lower bias / raise rare")


def sample_all(cfg: SynthConfig, keep: dict | None = None) -> dict[str, list[Item]]:
    """Every part's scenes and questions (what :func:`generate` renders), drawn in this order:
    VQA splits, captions, detection corpus; ``keep`` = :func:`keep_probabilities` (computed
    when not given)."""
    cfg.validate()
    keep = keep_probabilities(cfg) if keep is None else keep
    seen: set = set()
    return {part: sample_split(cfg, part, keep, seen)
            for part in (*SPLITS, "captions", "detection_train", "detection_val")}


def vqa_records(cfg: SynthConfig, split: str, items: list[Item]) -> tuple[list, list]:
    """VQA v2 question and annotation records of one split."""
    rng = _rng(cfg, split, 1)
    questions, annotations = [], []
    for item in items:
        for k, q in enumerate(item.questions):
            qid = item.image_id * 10 + k
            questions.append({"image_id": item.image_id, "question": q.text, "question_id": qid})
            answers = human_answers(q, rng, cfg.max_objects, cfg.answer_noise,
                                    cfg.answer_variation)
            annotations.append({
                "question_type": q.question_type, "multiple_choice_answer": q.answer,
                "answers": answers, "image_id": item.image_id,
                "answer_type": ANSWER_TYPE[q.question_type], "question_id": qid})
    return questions, annotations


def _render(cfg: SynthConfig, part: str, items: list[Item], folder: Path) -> None:
    rng = _rng(cfg, part, 2)
    for item in track(items, description=f"rendering {part}"):
        image = render_scene(item.scene, cfg.image_size, rng, cfg.pixel_noise)
        image.save(folder / fmt.image_file_name(item.image_id), format="PNG")


def _prepare(out: Path) -> tuple[Path, Path]:
    """Create OUT/images and OUT/detection/images; refuse a non-empty folder that is not an
    earlier synth output; drop an earlier run's images so no stale id survives."""
    if out.exists() and not out.is_dir():
        raise PkdError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth_meta.json").exists():
        raise PkdError(f"{out}: folder is not empty and holds no earlier synth output")
    check_writable(out)
    folders = (out / "images", out / "detection" / "images")
    for folder in folders:
        if folder.is_dir():
            for old in folder.glob("*.png"):
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
    for old in (*out.glob("synth_*_questions.json"), *out.glob("synth_*_annotations.json")):
        old.unlink()  # an earlier run's split files
    return folders


def _write_json(path: Path, obj: dict, indent: int | None = None) -> None:
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")


def _write_split(cfg: SynthConfig, out: Path, split: str, items: list[Item]) -> list[dict]:
    questions, annotations = vqa_records(cfg, split, items)
    _render(cfg, split, items, out / "images")
    _write_json(out / f"synth_{split}_questions.json", fmt.questions_file(split, questions))
    _write_json(out / f"synth_{split}_annotations.json", fmt.annotations_file(split, annotations))
    return annotations


def _write_captions(cfg: SynthConfig, out: Path, items: list[Item]) -> int:
    rng = _rng(cfg, "captions", 1)
    anns = [{"id": item.image_id * 10 + k, "image_id": item.image_id, "caption": text}
            for item in items for k, text in
            enumerate(fmt.caption_sentences(item.scene, rng, cfg.captions_per_image,
                                            cfg.caption_relations))]
    _render(cfg, "captions", items, out / "images")
    images = [fmt.image_entry(i.image_id, cfg.image_size) for i in items]
    _write_json(out / "captions.json", fmt.captions_file(images, anns))
    return len(anns)


def _write_detection(cfg: SynthConfig, out: Path, parts: dict[str, list[Item]]) -> dict:
    sizes = {}
    for split in ("train", "val"):
        items = parts[f"detection_{split}"]
        _render(cfg, f"detection_{split}", items, out / "detection" / "images")
        images = [fmt.image_entry(i.image_id, cfg.image_size) for i in items]
        anns = [a for i in items for a in fmt.box_annotations(i.image_id, i.scene)]
        _write_json(out / "detection" / f"instances_{split}.json",
                    fmt.detection_file(images, anns))
        sizes[split] = {"images": len(images), "objects": len(anns)}
    return sizes


def _combos_of(items: list[Item]) -> list[str]:
    return sorted({f"{o.color} {o.shape}" for i in items for o in i.scene.objects})


def generate(cfg: SynthConfig, out: Path) -> dict:
    """Write the benchmark into ``out`` (see the module docstring); returns the meta dict."""
    cfg.validate()
    out = Path(out)
    _prepare(out)
    keep, priors = keep_probabilities(cfg), priors_of(cfg)
    parts = sample_all(cfg, keep)
    annotations = {s: _write_split(cfg, out, s, parts[s]) for s in SPLITS}
    n_captions = _write_captions(cfg, out, parts["captions"])
    detection = _write_detection(cfg, out, parts)
    boxed = [i for p in (*SPLITS, "captions") for i in parts[p]]
    _write_json(out / "boxes.json", fmt.boxes_file(
        [fmt.image_entry(i.image_id, cfg.image_size) for i in boxed],
        [a for i in boxed for a in fmt.box_annotations(i.image_id, i.scene)]))
    meta = {
        "generator": "pkd.data.synth", "version": SYNTH_VERSION, "seed": cfg.seed,
        "config": asdict(cfg), "heldout": sorted(cfg.heldout),
        "splits": {s: {"prior": PRIOR[s], "images": len(parts[s]),
                       "questions": len(annotations[s]), "combinations": len(_combos_of(parts[s]))}
                   for s in SPLITS},
        "captions": {"images": len(parts["captions"]), "captions": n_captions},
        "detection": detection, "id_base": ID_BASE,
        "priors": prior_statistics(annotations, EVAL_SPLITS),
        "answer_priors": {"train_order": priors.order, "test_favourite": priors.shifted},
        "keep_probabilities": {prior: {t: {a: round(r, 4) for a, r in per.items()}
                                       for t, per in by_type.items()}
                               for prior, by_type in keep.items()},
    }
    _write_json(out / "synth_meta.json", meta, indent=2)
    return meta
