"""Questions of the synthetic benchmark: templated families, shifted answer priors, 10 answers.

Families (``question_type`` = the VQA-style leading words, ``answer_type`` as in VQA v2):

| question_type       | example                                    | answer_type | answers         |
|---------------------|--------------------------------------------|-------------|-----------------|
| "what color is the" | What color is the (large) circle?          | other       | a colour        |
| "what shape is the" | What shape is the (small) red object?      | other       | a shape         |
| "how many"          | How many (red) objects are there?          | number      | "1".."4"        |
| "is there a"        | Is there a blue square left of the circle? | yes/no      | "yes", "no"     |
| "what is the color of the" | ... of the object left of the square? | other    | a colour        |
| "what is the shape of the" | ... of the object above the red object? | other  | a shape         |

Every family needs the image: the text names an object or a pair, never its answer. The object
asked about is named by its shape (colour) alone when that is unique in the scene, else by size
and shape (size and colour) when that is unique; otherwise it is not asked about.

Relational questions (v4: the two "what is the ... of the" families and every "is there a"
question) name the object asked about by where it lies from an anchor object (named as above):
B is "left of" A when B's box ends at or before A's box starts on the x
axis (``x_B + w_B <= x_A``), "right of", "above", "below" likewise; "what is the" asks a relation
only when exactly one object of the scene stands in it to the anchor. The answer needs the regions'
*positions*: a one-glimpse UpDn, whose region features carry no box geometry, can only narrow
the answer down to the scene's other objects and falls back on the prior of its question type
between them, whatever the data size, as UpDn does on VQA-CP's harder questions; a fusion
transformer reads the boxes (6-d geometry) and can answer. Each relational type has its own
train favourite (its own answer order below), so the priors are per question type, as in
VQA-CP.

Compositional split (CoGenT style). Some (shape, colour) combinations are *held out*: they never
occur in the scenes of train / val / test / test_iid, and "is there a" never asks about them
there. ``test_comp`` scenes hold at least one such object and every question is about one: its
colour, its shape, the count of its colour, or whether a held-out pair stands in a relation to
an anchor.

Mix (v5). The two direct families ("what color is the", "what shape is the") keep
``direct_weight`` (default 0.4) times as many questions as the others (:func:`weighted`): a
one-glimpse model reads them off one region at ~100% on every split, so at equal shares they
dilute every split's prior shift and compositional shift by a third (measured on v4: the
baseline's test accuracy on them 100%, LMH's gain over it 0 there and +7 / +13 on the relational
families). Their prior is unchanged; they stay the core of ``test_comp``'s held-out objects.

Prior shift (VQA-CP style). Every scene proposes up to ``per_type`` candidate questions per
family; a candidate of type ``t`` with answer ``a`` is kept with probability

    r(t, a) = C * target(t, a) / m(t, a),   C = min over (t, a) of m(t, a) / target(t, a)

where ``m(t, a)`` is the mean number of candidates of type ``t`` with answer ``a`` per scene
(estimated on pilot scenes of the split's kind) and ``target`` the split's prior. Kept questions
of type ``t`` then number ``C`` per scene on average and have answer shares ``target(t, .)``
(test_comp: one ``C_t`` per type, see :func:`acceptance`, as its scenes rarely allow some
answers: few "how many" questions there).

The priors are drawn per data seed (v6, :func:`draw_priors`): each type's train rank order
``(a_1, ..., a_k)`` is a random permutation of its answers and its shifted (test) favourite
``s_t`` a uniform draw among ``a_2 .. a_k``, stratified by rank among the types with as many
answers (:func:`_stratified_ranks`) — no order is shared or rotated between families, so no
statistic of the training split (its favourite, its least
frequent or second most frequent answer, another family's favourite) predicts ``s_t``
(v5 rotated the relational orders by ``k // 2`` and put ``s_t`` at rank ``k // 2 + 1``: the
sibling family's favourite scored 51.8 on test without the image). Then

    train:    p(a_1) = bias,  p(a_j) = (1 - bias) * (k - j + 1) / sum_{i=2..k} (k - i + 1), j >= 2
    test:     p(a_1) = rare,  p(s_t) = test_bias,  the k - 2 others (1 - rare - test_bias) / (k - 2)
    uniform:  p(a_j) = 1 / k  (test_comp, over the answers its scenes can have)
    yes/no:   train p(yes) = yes_no_bias; test and test_comp p(yes) = p(no) = 1/2

:mod:`pkd.data.blind_rules` scores the blind rules on every split (``synth_meta.json``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pkd.data.synth_scene import COLORS, SHAPES, Combo, Scene, SceneObject

COLOR_Q, SHAPE_Q, COUNT_Q, EXIST_Q = ("what color is the", "what shape is the", "how many",
                                      "is there a")
REL_COLOR_Q, REL_SHAPE_Q = "what is the color of the", "what is the shape of the"
QUESTION_TYPES = (COLOR_Q, SHAPE_Q, COUNT_Q, EXIST_Q, REL_COLOR_Q, REL_SHAPE_Q)
ANSWER_TYPE = {COLOR_Q: "other", SHAPE_Q: "other", COUNT_Q: "number", EXIST_Q: "yes/no",
               REL_COLOR_Q: "other", REL_SHAPE_Q: "other"}
COLORS_ASKED = ("red", "green", "blue", "yellow", "purple", "orange")  # answers of colour types
SHAPES_ASKED = ("circle", "square", "triangle", "diamond")  # answers of shape types
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}
PRIORS = ("train", "test", "uniform")
RARE_CANDIDATE = 0.02  # an answer offered this much less often than its type's commonest is dropped


@dataclass(frozen=True)
class Question:
    text: str  # "What color is the circle?"
    question_type: str  # one of QUESTION_TYPES
    answer: str  # canonical (normalized) answer, also the multiple_choice_answer


def answers_of(question_type: str, max_objects: int) -> tuple[str, ...]:
    """Every answer of a question type, in a fixed canonical order (train ranks:
    :class:`Priors`)."""
    if question_type in (COLOR_Q, REL_COLOR_Q):
        return COLORS_ASKED
    if question_type in (SHAPE_Q, REL_SHAPE_Q):
        return SHAPES_ASKED
    if question_type == COUNT_Q:
        return tuple(str(n) for n in range(1, max_objects + 1))
    return ("yes", "no")


@dataclass(frozen=True)
class Priors:
    """One data seed's answer priors (see the module docstring)."""
    order: dict[str, tuple[str, ...]]  # type -> answers in train rank order (favourite first)
    shifted: dict[str, str]  # type -> the test split's favourite (yes/no: balanced, "yes")

    def train_favourite(self, question_type: str) -> str:
        return self.order[question_type][0]


def draw_priors(rng: np.random.Generator, max_objects: int) -> Priors:
    """Each type's train order: a random permutation of its answers (yes/no: "yes" first); its
    shifted favourite: a uniform draw among its non-favourites, stratified by train rank within
    the types of equally many answers (:func:`_stratified_ranks`). Draw order:
    :data:`QUESTION_TYPES`."""
    order = {}
    for t in QUESTION_TYPES:
        answers = answers_of(t, max_objects)
        order[t] = answers if len(answers) == 2 else tuple(
            answers[i] for i in rng.permutation(len(answers)))
    ranks = _stratified_ranks(rng, {t: len(a) for t, a in order.items() if len(a) > 2})
    shifted = {t: order[t][ranks[t]] if t in ranks else order[t][0] for t in QUESTION_TYPES}
    return Priors(order, shifted)


def _stratified_ranks(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, int]:
    """Per type, the train rank (1 .. k-1, 0 the favourite) of its shifted favourite: the types
    with the same number of answers k take ranks drawn without replacement from 1 .. k-1 (in
    random order; again from a full set when there are more types than ranks).

    Each type's rank is uniform over its non-favourites, as an independent draw would be, but
    no rank rule ("answer the second / least frequent training answer") can hit every type of a
    group at once: measured on the full preset, independent draws let "second most frequent"
    score up to 44.5 on ``test`` (draws 0-5)."""
    out: dict[str, int] = {}
    for k in sorted(set(sizes.values())):
        group = [t for t in sizes if sizes[t] == k]
        pool: list[int] = []
        for t in (group[i] for i in rng.permutation(len(group))):
            if not pool:
                pool = [1 + int(r) for r in rng.permutation(k - 1)]
            out[t] = pool.pop()
    return out


def unique_name(scene: Scene, obj: SceneObject, *attrs: str) -> str | None:
    """``obj``'s values of ``attrs`` ("blue square" for colour, shape) when they pick out ``obj``
    alone in ``scene``, else with its size in front ("small blue square") when that does, else
    None."""
    words = [getattr(obj, a) for a in attrs]
    same = [o for o in scene.objects if all(getattr(o, a) == getattr(obj, a) for a in attrs)]
    if len(same) == 1:
        return " ".join(words)
    if sum(o.size == obj.size for o in same) == 1:
        return " ".join([obj.size, *words])
    return None


def related(anchor: SceneObject, other: SceneObject, relation: str) -> bool:
    """True when ``other`` lies ``relation`` (one of RELATIONS) ``anchor``: its box ends at or
    before the anchor's starts on that axis (image y grows downwards)."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = anchor.box, other.box
    return {"left of": bx + bw <= ax, "right of": bx >= ax + aw, "above": by + bh <= ay,
            "below": by >= ay + ah}[relation]


def _relational(scene: Scene, question_type: str, focus: frozenset | None) -> list[Question]:
    """Questions about the one object standing in a relation to a named anchor: its colour
    (anchor named by shape) or its shape (anchor named by colour); with ``focus`` only those
    whose answer object's (shape, colour) is in it."""
    out = []
    for anchor in scene.objects:
        if question_type == REL_COLOR_Q:
            name = unique_name(scene, anchor, "shape")
        else:
            name = unique_name(scene, anchor, "color")
            name = name and f"{name} object"
        if name is None:
            continue
        for relation in RELATIONS:
            others = [o for o in scene.objects if o is not anchor and related(anchor, o, relation)]
            if len(others) != 1:
                continue
            target = others[0]
            if focus is not None and (target.shape, target.color) not in focus:
                continue
            if question_type == REL_COLOR_Q:
                out.append(Question(f"What is the color of the object {relation} the {name}?",
                                    question_type, target.color))
            else:
                out.append(Question(f"What is the shape of the object {relation} the {name}?",
                                    question_type, target.shape))
    return out


def _family(scene: Scene, question_type: str, focus: frozenset | None) -> list[Question]:
    """All questions of a colour, shape or counting family; with ``focus`` (held-out combos)
    only those about an object whose (shape, colour) is in it (no "how many objects")."""
    t = question_type
    if t in (REL_COLOR_Q, REL_SHAPE_Q):
        return _relational(scene, t, focus)
    objs = [o for o in scene.objects if focus is None or (o.shape, o.color) in focus]
    if t == COLOR_Q:  # the shape names one object, else the size and the shape do
        return [Question(f"What color is the {n}?", t, o.color) for o in objs
                if (n := unique_name(scene, o, "shape")) is not None]
    if t == SHAPE_Q:
        return [Question(f"What shape is the {n} object?", t, o.shape) for o in objs
                if (n := unique_name(scene, o, "color")) is not None]
    total = [] if focus is not None else [
        Question("How many objects are there?", t, str(len(scene.objects)))]
    return total + [Question(f"How many {c} objects are there?", t, str(scene.count(color=c)))
                    for c in sorted({o.color for o in objs})]


def _existence(scene: Scene, rng: np.random.Generator, per_type: int, heldout: frozenset,
               comp: bool) -> list[Question]:
    """Up to ``per_type`` "is there a" questions, "Is there a red square left of the circle?",
    each "yes" or "no" with probability 1/2 (the anchor named as in the colour family).

    "yes": a pair (shape, colour) some object in that relation to the anchor has. "no": a pair
    that the scene holds but not in that relation (it needs the boxes' positions), or an absent
    pair that shares the colour or the shape of a present object (it needs colour-shape
    binding). A pair with the shape of an anchor named by its shape alone is never asked: that
    shape is unique in the scene, so the text alone would say "no". Outside ``comp`` a held-out
    pair is never asked; in ``comp`` only held-out pairs are.
    """
    def allowed(pair: Combo) -> bool:
        return (pair in heldout) == comp

    present = {(o.shape, o.color) for o in scene.objects}
    near = [(s, c) for s in SHAPES for c in COLORS if allowed((s, c)) and (s, c) not in present
            and (scene.count(color=c) or scene.count(shape=s))]
    options: dict[str, list] = {"yes": [], "no": []}
    for anchor in scene.objects:
        name = unique_name(scene, anchor, "shape")
        if name is None:
            continue
        for relation in RELATIONS:
            there = {(o.shape, o.color) for o in scene.objects
                     if o is not anchor and related(anchor, o, relation)}
            for pair in sorted(p for p in present | set(near) if allowed(p)):
                if name == anchor.shape and pair[0] == anchor.shape:
                    continue  # the anchor is the only such shape: "no" from the text alone
                options["yes" if pair in there else "no"].append((pair, relation, name))
    out: list[Question] = []
    for _ in range(per_type):
        answer = "yes" if rng.random() < 0.5 else "no"
        if not options[answer]:
            continue
        (s, c), relation, name = options[answer][int(rng.integers(len(options[answer])))]
        q = Question(f"Is there a {c} {s} {relation} the {name}?", EXIST_Q, answer)
        if q not in out:
            out.append(q)
    return out


def candidates(scene: Scene, rng: np.random.Generator, per_type: int,
               heldout: frozenset = frozenset(), comp: bool = False) -> list[Question]:
    """Up to ``per_type`` distinct random questions of each family about the scene; ``comp``:
    only questions about its held-out objects (see the module docstring)."""
    out: list[Question] = []
    for t in (COLOR_Q, SHAPE_Q, COUNT_Q, REL_COLOR_Q, REL_SHAPE_Q):
        options = _family(scene, t, heldout if comp else None)
        first = 1 if (t == COUNT_Q and not comp) else 0  # "how many objects" always
        pick = first + rng.permutation(len(options) - first)[: per_type - first]
        out.extend(options[:first] + [options[i] for i in sorted(pick)])
    return out + _existence(scene, rng, per_type, heldout, comp)


def target_prior(question_type: str, prior: str, priors: Priors, bias: float,
                 yes_no_bias: float, rare: float, test_bias: float) -> dict[str, float]:
    """Answer shares of one question type under the "train", "test" or "uniform" prior (the
    formulas of the module docstring)."""
    answers = priors.order[question_type]
    k = len(answers)
    if prior == "uniform" or (k == 2 and prior == "test"):
        return {a: 1.0 / k for a in answers}
    if k == 2:
        return {"yes": yes_no_bias, "no": 1.0 - yes_no_bias}
    if prior == "train":
        weights = [k - j for j in range(1, k)]  # k-1, ..., 1 for a_2 .. a_k
        rest = {a: (1.0 - bias) * w / sum(weights)
                for a, w in zip(answers[1:], weights, strict=True)}
        return {answers[0]: bias, **rest}
    fixed = {answers[0]: rare, priors.shifted[question_type]: test_bias}
    share = (1.0 - rare - test_bias) / max(1, k - 2)
    return {a: fixed.get(a, share) for a in answers}


def estimate_base(rng: np.random.Generator, n_scenes: int, scene_of: Callable[[], Scene],
                  per_type: int, heldout: frozenset, comp: bool) -> dict[str, dict[str, float]]:
    """m(t, a): mean number of candidates per scene by type and answer, over pilot scenes."""
    counts: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    for _ in range(n_scenes):
        for q in candidates(scene_of(), rng, per_type, heldout, comp):
            counts[q.question_type][q.answer] += 1
    return {t: {a: n / n_scenes for a, n in sorted(c.items())} for t, c in counts.items()}


def acceptance(base: dict[str, dict[str, float]], target: dict[str, dict[str, float]],
               per_type: bool = False) -> dict[str, dict[str, float]]:
    """Keep probabilities r(t, a) = C * target(t, a) / m(t, a) (see the module docstring);
    the target is first renormalized over the answers the scenes can offer (m(t, a) at least
    ``RARE_CANDIDATE`` times the type's largest m; rarer answers are never asked). ``per_type``
    (test_comp, whose scenes rarely allow some answers): C_t = min(c_t, c_(2)) per type, with
    c_t = min_a m(t, a) / target(t, a) and c_(2) the second smallest c_t, so every type but the
    scarcest has the same number of questions."""
    ratios = {}
    for t, all_answers in base.items():
        floor = RARE_CANDIDATE * max(all_answers.values(), default=0.0)
        per_answer = {a: m for a, m in all_answers.items() if m >= floor}
        mass = sum(p for a, p in target[t].items() if a in per_answer)
        ratios[t] = {a: target[t][a] / mass / m for a, m in per_answer.items()
                     if target[t].get(a, 0) > 0}
    if per_type:  # C_t = min(own constant, second smallest constant): at most 1 type short
        own = {t: 1.0 / max(rs.values()) for t, rs in ratios.items() if rs}
        cap = sorted(own.values())[min(1, len(own) - 1)]
        return {t: {a: min(own[t], cap) * r for a, r in rs.items()} for t, rs in ratios.items()}
    c = 1.0 / max(r for rs in ratios.values() for r in rs.values())
    return {t: {a: c * r for a, r in rs.items()} for t, rs in ratios.items()}


DIRECT_TYPES = (COLOR_Q, SHAPE_Q)  # the families a one-glimpse model reads off one region


def weighted(keep: dict[str, dict[str, float]], direct_weight: float,
             yes_no_weight: float = 1.0) -> dict[str, dict[str, float]]:
    """r'(t, a) = w_t * r(t, a) with w_t = ``direct_weight`` for the direct colour / shape
    families, ``yes_no_weight`` for "is there a" and 1 for the others: those families keep that
    share of their questions, with the same answer shares (the prior of every type is
    unchanged)."""
    def w(t: str) -> float:
        return direct_weight if t in DIRECT_TYPES else yes_no_weight if t == EXIST_Q else 1.0

    return {t: {a: r * w(t) for a, r in rs.items()} for t, rs in keep.items()}


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
