"""A VQA-CP-style re-split of any VQA v2-format data set: answer priors that change at test time.

VQA-CP (Agrawal et al., "Don't Just Assume; Look and Answer", CVPR 2018, Sec. 3) re-organizes
VQA's train + val: the (question, image) pairs are grouped by (question type, ground-truth
answer), the groups are re-split greedily into train and test so that every question type's
answer distribution differs between the two, every test concept is kept seen in train, and an
image may have questions on both sides (VQA-CP v2: 121k train and 98k test images out of COCO's
123k). Here, with ``a = preprocess_answer(multiple_choice_answer)``, ``n_g`` the size of group
``g = (t, a)``, ``N_t`` the questions of type ``t``, ``r = test_share`` and ``s = shift``:

1. **Groups** ``g = (t, a)``.
2. **Whole-group sides** ``w_g`` in {0, 1} (1 = test): per type the largest group (the
   favourite; ties by answer) gets 0; the others, in an order shuffled by ``seed``, get 1 while
   the type's test count is below ``r * N_t``, else 0 (the greedy re-split).
3. **Shift.** Group ``g`` sends ``k_g`` of its questions to test, ``k_g`` = ``n_g * f_g`` rounded
   stochastically (seeded: ``floor(x)`` plus 1 with probability ``x - floor(x)``), with

       f_g = (1 - s) * r + s * w_g

   ``s = 0``: every group split at ``r`` (an i.i.d. split stratified by group, no shift);
   ``s = 1``: whole groups, as VQA-CP (a type's test holds none of its training favourite).
   A type's expected test share is ``(1 - s) * r + s * W_t`` (``W_t`` its step-2 share); when
   ``W_t = r`` its test answers are a mixture: ``1 - s`` of an i.i.d. draw, ``s`` of VQA-CP's.
4. **Concepts seen in train.** A group whose answer would be in no train question of any type
   keeps ``min(n_g - 1, max(1, ceil(seen_share * n_g)))`` questions in train (a group of 1 goes
   to train); ``split_groups`` counts them per type.
5. **Questions.** A group's questions, sorted by id and shuffled by ``seed``: the first ``k_g``
   go to test, the rest to train.
6. **Images.** Shared by the splits by default, as in VQA-CP. With ``disjoint_images`` an image
   goes to the side holding most of its questions (ties: test) and its other questions are
   dropped (``dropped_image``). Test questions whose answer is then in no train question are
   dropped (``dropped_unseen``; 0 with shared images).
7. **Checks, then writing.** Achieved test share ``x = |test| / (|train| + |test|)``: ``x <
   r / 2`` is refused (nothing written), ``|x - r| > 0.2 r`` is a warning. An empty split, an
   empty input or a non-VQA (e.g. GQA) file is refused. Blind rules (below) warn when the
   training favourite is the best of them (``s > 0``: the priors barely moved) or when the
   inverted prior scores >= 90% on the yes/no test questions. All files are written,
   atomically, only after everything is computed.

**The default shift, s = 0.3.** In expectation every group sends ``>= (1 - s) r = 21%`` of its
questions to test and keeps ``>= (1 - s)(1 - r) = 49%`` in train, so both answers of a yes/no
type are on both sides; a group chosen for test in step 2 sends ``(1 - s) r + s = 51%`` of its
questions to test, 2.4 times the favourite's rate (odds ratio 3.9). For a yes/no type whose
majority answer has share ``m`` (the minority chosen for test, ``r = 0.3``) the majority's share
goes from train to test as 62% -> 29% (m = 0.5), 71% -> 38% (0.6), 79% -> 49% (0.7), 87% -> 62%
(0.8): the prior moves by >= 24 points, yet for 0.5 <= m <= 0.8 neither the training favourite
nor the inverted prior answers more than 71% of the type's test questions. At s = 1 the test
questions of a yes/no type all have the minority answer (the inverted prior is always right);
at s = 0.5 it is right on up to 81% (m = 0.5), at s = 0.2 on up to 65%, with a prior move of only
>= 16 points. The default suits yes/no types near balance (VQA v2 was balanced with
complementary images); a strongly skewed type (m > 0.7) keeps its favourite as the test
majority at s = 0.3, and the blind-rule warning says so: raise ``s`` for such data.

**Where this deviates from the paper, and why.** (a) VQA-CP's concepts are words of the question
and of the answer (the C-VQA concept extraction); we keep only answers seen in train (what a
classifier over the training answers needs) and do not check question words. (b) The shift knob
is ours. Whole groups (``s = 1``) leave only the minority answer in a yes/no type's test, so the
inverted prior solves it; VQA-CP v2's yes/no test questions are no such complete flip (UpDn
keeps about 42% on them), so the default keeps part of every group on both sides. (c) The greedy
order is a seeded shuffle and the target is a test share per type (VQA-CP v2 puts about a third
of all questions in test: 220k of 658k). (d) Question types and answers are the input files' own
(``question_type``; ``preprocess_answer``).

**Shift per question type** ``t`` (from the kept questions; ``P``/``Q`` = train/test answer
distributions of ``t``, ``f`` = train favourite):

- ``test_favourite`` = share of ``t``'s test questions whose answer is ``f``;
- ``kl`` = KL(Q || P) = sum_a Q(a) log(Q(a) / P(a)) with add-one smoothing over the union of
  ``t``'s answers, ``P(a) = (n_train(a) + 1) / (N_train + V)`` (likewise ``Q``), in nats;
- ``test_seen_same_type`` = share of ``t``'s test questions whose answer occurs in ``t``'s train
  questions.

**Blind rules** (:mod:`pkd.data.blind_rules`): each rule picks one answer per question type from
the training split alone (there is no val split, so "best constant on val" is tuned on train)
and is scored on test with the official accuracy; ``best blind`` is their maximum, ``oracle
constant`` the test split's own best constant (not blind). The table is scored on at most
``blind_sample`` test questions and tunes "best constant on val" on at most ``blind_sample``
train questions (seeded samples: the best constants cost candidates x questions per type, about
a minute for 33k train questions; a sample of 5000 has a standard error <= 0.71 points). The
best rule, the training favourite and the inverted prior (``least frequent``) are also scored
per answer type on the whole test split.

Writes ``vqacp_v2_{train,test}_{questions,annotations}.json`` (lists, each record with
``coco_split``: the record's own, else the source file's ``data_subtype``, else its stem) and
``resplit_shift.json`` (config, sizes, achieved test share, warnings, shift per type, blind
rules).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pkd.data.resplit_config import SPLITS, ResplitConfig
from pkd.data.resplit_groups import (
    check_share,
    group_test_counts,
    place_images,
    question_sides,
    whole_group_sides,
)
from pkd.data.resplit_inputs import Item, check_types, load_items
from pkd.data.resplit_shift import blind_section, blind_warnings, shift
from pkd.errors import PkdError
from pkd.fsio import check_writable, write_json

SHIFT_FILE = "resplit_shift.json"


def _check_config(cfg: ResplitConfig) -> None:
    if not 0 < cfg.test_share < 1 or not 0 < cfg.seen_share < 1:
        raise PkdError(f"{cfg.out}: --test-share and --seen-share must be in (0, 1), got "
                       f"{cfg.test_share}, {cfg.seen_share}")
    if not 0 <= cfg.shift <= 1:
        raise PkdError(f"{cfg.out}: --shift must be in [0, 1], got {cfg.shift}")
    if cfg.blind_sample < 0:
        raise PkdError(f"{cfg.out}: --blind-sample must be >= 0, got {cfg.blind_sample}")


def _check_out(out: Path) -> None:
    """The output folder, or its nearest existing parent, is writable (nothing is created)."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    check_writable(probe, "output folder" if probe == out else f"parent of output folder {out}")


def _summary(cfg: ResplitConfig, items: list[Item], split: dict, dropped: dict,
             cut: set, share: float, warnings: list[str]) -> dict:
    images = {s: {it.image_id for it in split[s]} for s in SPLITS}
    summary = {
        "config": {k: (str(v) if isinstance(v, Path)
                       else [str(p) for p in v] if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
        "sizes": {s: {"questions": len(split[s]), "images": len(images[s])} for s in SPLITS}
        | {"input_questions": len(items), "images_in_both": len(images["train"] & images["test"]),
           **dropped},
        "test_share": {"requested": cfg.test_share, "achieved": share},
        "warnings": warnings,
        "shift": shift(*[[(it.qtype, it.answer) for it in split[s]] for s in SPLITS]),
    }
    for row in summary["shift"].values():
        row["split_groups"] = 0
    for t, _ in cut:
        if t in summary["shift"]:
            summary["shift"][t]["split_groups"] += 1
    return summary


def _write_all(out: Path, split: dict[str, list[Item]], summary: dict) -> None:
    """Every output file, atomically; the summary last (an old one is removed first)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SHIFT_FILE).unlink(missing_ok=True)
    for s in SPLITS:
        kept = sorted(split[s], key=lambda it: it.ann.question_id)
        write_json(out / f"vqacp_v2_{s}_questions.json", [it.record_q for it in kept])
        write_json(out / f"vqacp_v2_{s}_annotations.json", [it.record_a for it in kept])
    write_json(out / SHIFT_FILE, summary, indent=2)


def resplit(cfg: ResplitConfig) -> dict:
    """Write the re-split (module docstring) into ``cfg.out``; returns the saved summary."""
    _check_config(cfg)
    out = Path(cfg.out)
    _check_out(out)
    items = load_items(cfg)
    counts = check_types(items, cfg)
    k, cut = group_test_counts(counts, whole_group_sides(counts, cfg), cfg)
    split, dropped = place_images(items, question_sides(items, k, cfg), cfg)
    share, warnings = check_share(split, dropped, cfg)
    summary = _summary(cfg, items, split, dropped, cut, share, warnings)
    summary["blind_rules"] = blind_section(split, cfg)
    summary["warnings"] += blind_warnings(summary["blind_rules"], cfg)
    _write_all(out, split, summary)
    return summary

