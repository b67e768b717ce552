"""Steps 2-7 of the re-split (:mod:`pkd.data.resplit`): which questions of each group
(question type, answer) go to test, where the images go, and the achieved test share."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

from pkd.data.resplit_config import SPLITS, ResplitConfig
from pkd.data.resplit_inputs import Item
from pkd.errors import PkdError

SHARE_WARN = 0.2  # warn when the achieved test share is off by more than this (relative)


def whole_group_sides(counts: dict[str, Counter], cfg: ResplitConfig) -> dict[tuple[str, str], int]:
    """Step 2: ``{(question_type, answer): w}``, 1 = test (deterministic for the seed)."""
    rng = random.Random(cfg.seed)
    side: dict[tuple[str, str], int] = {}
    for qtype in sorted(counts):
        c = counts[qtype]
        groups = sorted(c, key=lambda a: (-c[a], a))
        side[(qtype, groups[0])] = 0  # the favourite
        rest = sorted(groups[1:])
        rng.shuffle(rest)
        target, in_test = cfg.test_share * sum(c.values()), 0
        for a in rest:
            side[(qtype, a)] = int(in_test < target)
            in_test += c[a] * side[(qtype, a)]
    return side


def group_test_counts(counts: dict[str, Counter], whole: dict[tuple[str, str], int],
                      cfg: ResplitConfig) -> tuple[dict[tuple[str, str], int], set]:
    """Steps 3-4: ``k_g`` per group and the groups cut back to keep their answer seen."""
    rng = random.Random(cfg.seed + 2)
    k: dict[tuple[str, str], int] = {}
    for g in sorted(whole):
        x = counts[g[0]][g[1]] * ((1 - cfg.shift) * cfg.test_share + cfg.shift * whole[g])
        k[g] = math.floor(x) + (rng.random() < x - math.floor(x))
    train_answers = {a for (t, a), kg in k.items() if counts[t][a] > kg}
    cut = set()
    for t, a in sorted(k):
        n = counts[t][a]
        if a not in train_answers:
            k[(t, a)] = n - min(n - 1, max(1, math.ceil(cfg.seen_share * n))) if n > 1 else 0
            cut.add((t, a))
    return k, cut


def question_sides(items: list[Item], k: dict[tuple[str, str], int],
                   cfg: ResplitConfig) -> list[str]:
    """Step 5: the side of every item (the first ``k_g`` seeded members of a group in test)."""
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        members[(it.qtype, it.answer)].append(i)
    out = ["train"] * len(items)
    rng = random.Random(cfg.seed + 1)
    for g in sorted(members):
        group = sorted(members[g], key=lambda i: items[i].ann.question_id)
        rng.shuffle(group)
        for i in group[:k[g]]:
            out[i] = "test"
    return out


def disjoint_images(items: list[Item], sides: list[str]) -> tuple[dict[str, list[Item]], int]:
    """Step 6 with ``disjoint_images``: one side per image; kept items per split, drop count."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for it, s in zip(items, sides, strict=True):
        votes[it.image_id][s] += 1
    image_side = {i: "test" if v["test"] >= v["train"] else "train" for i, v in votes.items()}
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for it, want in zip(items, sides, strict=True):
        if want == image_side[it.image_id]:
            out[want].append(it)
    return out, len(items) - len(out["train"]) - len(out["test"])


def place_images(items: list[Item], sides: list[str], cfg: ResplitConfig) -> tuple[dict, dict]:
    """Step 6: kept items per split and ``{"dropped_image", "dropped_unseen"}``."""
    if cfg.disjoint_images:
        split, dropped_image = disjoint_images(items, sides)
    else:
        split = {s: [it for it, want in zip(items, sides, strict=True) if want == s]
                 for s in SPLITS}
        dropped_image = 0
    train_answers = {it.answer for it in split["train"]}
    kept = [it for it in split["test"] if it.answer in train_answers]
    dropped_unseen = len(split["test"]) - len(kept)
    split["test"] = kept
    return split, {"dropped_image": dropped_image, "dropped_unseen": dropped_unseen}


def _inputs(cfg: ResplitConfig) -> str:
    """The input questions files, for error lines."""
    more = f" (+{len(cfg.questions) - 1} more)" if len(cfg.questions) > 1 else ""
    return f"{cfg.questions[0]}{more}"


def check_share(split: dict[str, list[Item]], dropped: dict,
                cfg: ResplitConfig) -> tuple[float, list[str]]:
    """Step 7: the achieved test share and its warnings; an empty split or a share below half
    the requested one is a PkdError (nothing has been written yet)."""
    n = {s: len(split[s]) for s in SPLITS}
    lost = (f"{dropped['dropped_image']} dropped (image in both), "
            f"{dropped['dropped_unseen']} (answer unseen)")
    for s in SPLITS:
        if not n[s]:
            raise PkdError(f"{_inputs(cfg)}: the {s} split is empty ({n['train']} train, "
                           f"{n['test']} test questions kept; {lost}); nothing written")
    share = n["test"] / (n["train"] + n["test"])
    hint = "(lower --shift, drop --disjoint-images or raise --test-share)"
    if share < cfg.test_share / 2:
        raise PkdError(f"{_inputs(cfg)}: achieved test share {share:.3f} is below half the "
                       f"requested {cfg.test_share:g} ({n['test']} test of "
                       f"{n['train'] + n['test']} kept questions; {lost}); nothing written {hint}")
    warnings = []
    if abs(share - cfg.test_share) > SHARE_WARN * cfg.test_share:
        warnings.append(f"achieved test share {share:.3f} differs from the requested "
                        f"{cfg.test_share:g} by {abs(share / cfg.test_share - 1):.0%} ({lost})")
    return share, warnings
