"""Questions of the synthetic benchmark: templated families, shifted answer priors, 10 answers.

Families (``question_type`` = the VQA-style leading words, ``answer_type`` as in VQA v2):

| question_type       | example                                    | answer_type | answers         |
|---------------------|--------------------------------------------|-------------|-----------------|
| "what color is the" | What color is the (large) circle?          | other       | a colour        |
| "what shape is the" | What shape is the (small) red object?      | other       | a shape         |
| "how many"          | How many (red) objects are there?          | number      | "1".."4"        |
| "is there a"        | Is there a blue square?                    | yes/no      | "yes", "no"     |

The object asked about is named by its shape (colour) alone when that is unique in the scene,
else by size and shape (size and colour) when that is unique; otherwise it is not asked about.

Prior shift (VQA-CP style). Every scene proposes up to ``per_type`` candidate questions per
family (counting always includes "How many objects are there?"); a candidate of type ``t`` with
answer ``a`` is kept with probability

    r(t, a) = C * target(t, a) / m(t, a),   C = min over (t, a) of m(t, a) / target(t, a)

where ``m(t, a)`` is the mean number of candidates of type ``t`` with answer ``a`` per scene
(estimated on pilot scenes) and ``target`` the split's prior. Kept questions of type ``t`` per
scene then number ``sum_a m(t, a) r(t, a) = C`` on average, the same for every type and answer
shares ``target(t, .)``: each split has balanced question types and its own answer prior.
Train prior: the train-dominant answer has share ``bias``, the others share the rest equally.
Test prior: the test-dominant answer has share ``bias``, the train-dominant one only ``rare``.
Yes/no: the dominant answer has share ``yes_no_bias`` ("yes" in train, "no" in test).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pkd.data.synth_scene import COLORS, SHAPES, Scene, SceneObject, sample_scene

COLOR_Q, SHAPE_Q, COUNT_Q, EXIST_Q = "what color is the", "what shape is the", "how many", "is there a"
QUESTION_TYPES = (COLOR_Q, SHAPE_Q, COUNT_Q, EXIST_Q)
ANSWER_TYPE = {COLOR_Q: "other", SHAPE_Q: "other", COUNT_Q: "number", EXIST_Q: "yes/no"}
TRAIN_DOMINANT = {COLOR_Q: "red", SHAPE_Q: "circle", COUNT_Q: "1", EXIST_Q: "yes"}
TEST_DOMINANT = {COLOR_Q: "green", SHAPE_Q: "triangle", COUNT_Q: "3", EXIST_Q: "no"}
NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}


@dataclass(frozen=True)
class Question:
    text: str  # "What color is the circle?"
    question_type: str  # one of QUESTION_TYPES
    answer: str  # canonical (normalized) answer, also the multiple_choice_answer


def answers_of(question_type: str, max_objects: int) -> tuple[str, ...]:
    """Every answer a question type can have."""
    if question_type == COLOR_Q:
        return tuple(COLORS)
    if question_type == SHAPE_Q:
        return SHAPES
    if question_type == COUNT_Q:
        return tuple(str(n) for n in range(1, max_objects + 1))
    return ("yes", "no")


def _nameable(scene: Scene, obj: SceneObject, **attr: str) -> bool:
    """True when ``attr`` (a shape or a colour), or ``attr`` plus the size, picks out ``obj``."""
    same = [o for o in scene.objects if all(getattr(o, k) == v for k, v in attr.items())]
    return len(same) == 1 or sum(o.size == obj.size for o in same) == 1


def _size(scene: Scene, obj: SceneObject, **attr: str) -> str:
    """Empty when ``attr`` alone picks out ``obj``, else its size and a space ("large ")."""
    return "" if scene.count(**attr) == 1 else f"{obj.size} "


def _family(scene: Scene, question_type: str) -> list[Question]:
    """All questions of a colour, shape or counting family about the scene."""
    objs, t = scene.objects, question_type
    if t == COLOR_Q:  # the shape names one object, else the size and the shape do
        return [Question(f"What color is the {_size(scene, o, shape=o.shape)}{o.shape}?", t,
                         o.color) for o in objs if _nameable(scene, o, shape=o.shape)]
    if t == SHAPE_Q:
        return [Question(f"What shape is the {_size(scene, o, color=o.color)}{o.color} object?",
                         t, o.shape) for o in objs if _nameable(scene, o, color=o.color)]
    colors = sorted({o.color for o in objs})
    return [Question("How many objects are there?", t, str(len(objs)))] + [
        Question(f"How many {c} objects are there?", t, str(scene.count(color=c)))
        for c in colors]


def _existence(scene: Scene, rng: np.random.Generator, per_type: int) -> list[Question]:
    """Up to ``per_type`` "is there a" questions, each "yes" or "no" with probability 1/2.

    "no" asks for an absent pair that shares the colour or the shape of a present object, so the
    answer needs colour-shape binding, not just spotting a colour.
    """
    present = sorted({(o.color, o.shape) for o in scene.objects})
    near = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present
            and (scene.count(color=c) or scene.count(shape=s))]
    out: list[Question] = []
    for _ in range(per_type):
        pairs, answer = (present, "yes") if rng.random() < 0.5 else (near, "no")
        c, s = pairs[int(rng.integers(len(pairs)))]
        q = Question(f"Is there a {c} {s}?", EXIST_Q, answer)
        if q not in out:
            out.append(q)
    return out


def candidates(scene: Scene, rng: np.random.Generator, per_type: int) -> list[Question]:
    """Up to ``per_type`` distinct random questions of each family about the scene."""
    out: list[Question] = []
    for t in (COLOR_Q, SHAPE_Q, COUNT_Q):
        options = _family(scene, t)
        first = 1 if t == COUNT_Q else 0  # "how many objects" always, colour counts are mostly 1
        pick = first + rng.permutation(len(options) - first)[: per_type - first]
        out.extend(options[:first] + [options[i] for i in sorted(pick)])
    return out + _existence(scene, rng, per_type)


def target_prior(question_type: str, prior: str, max_objects: int, bias: float,
                 yes_no_bias: float, rare: float) -> dict[str, float]:
    """Answer shares of one question type under the "train" or "test" prior."""
    answers = answers_of(question_type, max_objects)
    train_top, test_top = TRAIN_DOMINANT[question_type], TEST_DOMINANT[question_type]
    if len(answers) == 2:
        top, low = (train_top, test_top) if prior == "train" else (test_top, train_top)
        return {top: yes_no_bias, low: 1.0 - yes_no_bias}
    if prior == "train":
        fixed = {train_top: bias}
    else:
        fixed = {test_top: bias, train_top: rare}
    rest = [a for a in answers if a not in fixed]
    share = (1.0 - sum(fixed.values())) / len(rest)
    return {a: fixed.get(a, share) for a in answers}


def estimate_base(rng: np.random.Generator, n_scenes: int, image_size: int, max_objects: int,
                  per_type: int) -> dict[str, dict[str, float]]:
    """m(t, a): mean number of candidates per scene by type and answer, over pilot scenes."""
    counts: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    for _ in range(n_scenes):
        for q in candidates(sample_scene(rng, image_size, max_objects), rng, per_type):
            counts[q.question_type][q.answer] += 1
    return {t: {a: n / n_scenes for a, n in sorted(c.items())} for t, c in counts.items()}


def acceptance(base: dict[str, dict[str, float]],
               target: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Keep probabilities r(t, a) = C * target(t, a) / m(t, a) (see the module docstring)."""
    ratios = {t: {a: target[t][a] / m for a, m in base[t].items() if target[t].get(a, 0) > 0}
              for t in base}
    c = 1.0 / max(r for per_type in ratios.values() for r in per_type.values())
    return {t: {a: c * r for a, r in per_type.items()} for t, per_type in ratios.items()}


def _variant(answer: str, answer_type: str, rng: np.random.Generator) -> str:
    """A surface form the official normalization folds back to ``answer``."""
    if answer_type == "number":
        forms = [NUMBER_WORDS.get(answer, answer)]
    elif answer_type == "yes/no":
        forms = [answer.capitalize(), answer + ".", answer.capitalize() + "."]
    else:
        forms = ["the " + answer, "a " + answer, answer.capitalize(), answer + "."]
    return forms[int(rng.integers(len(forms)))]


def human_answers(q: Question, rng: np.random.Generator, max_objects: int, noise: float,
                  variation: float) -> list[dict]:
    """10 VQA answers: mostly the canonical form, a few variants, at most 2 wrong (noise)."""
    answer_type = ANSWER_TYPE[q.question_type]
    others = [a for a in answers_of(q.question_type, max_objects) if a != q.answer]
    n_wrong = min(int(rng.binomial(10, noise)), 2)
    n_variant = min(int(rng.binomial(10 - n_wrong, variation)), 2)  # canonical stays >= 6 of 10
    texts = [q.answer] * (10 - n_wrong - n_variant)
    texts += [_variant(q.answer, answer_type, rng) for _ in range(n_variant)]
    texts += [others[int(rng.integers(len(others)))] for _ in range(n_wrong)]
    wrong = [False] * (10 - n_wrong) + [True] * n_wrong
    order = rng.permutation(10)
    sure = rng.random(10)
    return [{"answer": texts[i], "answer_confidence":
             "maybe" if sure[k] < (0.5 if wrong[i] else 0.1) else "yes", "answer_id": k + 1}
            for k, i in enumerate(order)]
