"""Blind rules (golden values by hand) and the v6 prior draw (shifted favourites from the
non-favourites, stratified by rank)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pkd.data.blind_rules import BEST, ORACLE, best_blind_rule, blind_rule_table, blind_rules
from pkd.data.synth_questions import QUESTION_TYPES, answers_of, draw_priors
from pkd.data.vqa import Annotation


def anns(spec: dict[str, dict[str, int]], start: int = 0) -> list[Annotation]:
    """``{type: {answer: n}}`` -> n annotations each, 10 identical human answers."""
    out, qid = [], start
    for t, counts in spec.items():
        kind = "yes/no" if t == "is there a" else "other"
        for a, n in counts.items():
            for _ in range(n):
                out.append(Annotation(qid, qid, t, kind, a, (a,) * 10))
                qid += 1
    return out


TRAIN = anns({"what color is the": {"red": 6, "blue": 3, "green": 1},
              "what is the color of the": {"blue": 5, "green": 2, "red": 1},
              "is there a": {"yes": 8, "no": 2}})
VAL = anns({"what color is the": {"red": 3, "blue": 1},
            "what is the color of the": {"blue": 2, "green": 1}, "is there a": {"yes": 2}}, 100)
TEST = anns({"what color is the": {"red": 1, "blue": 1, "green": 8},
             "what is the color of the": {"blue": 1, "green": 2, "red": 7},
             "is there a": {"yes": 5, "no": 5}}, 200)


def test_rules_by_hand():
    rules = blind_rules(TRAIN, VAL)
    assert rules["favourite"] == {"what color is the": "red", "what is the color of the": "blue",
                                  "is there a": "yes"}
    assert rules["least frequent"] == {"what color is the": "green",
                                       "what is the color of the": "red", "is there a": "no"}
    assert rules["second most frequent"] == {"what color is the": "blue",
                                             "what is the color of the": "green",
                                             "is there a": "no"}
    assert rules["best constant on val"] == rules["favourite"]
    # the sibling family's favourite, mapped by answer; "yes" is no colour: own favourite
    assert rules["favourite of 'what is the color of the'"] == {
        "what color is the": "blue", "what is the color of the": "blue", "is there a": "yes"}
    assert rules["favourite of 'is there a'"] == rules["favourite"]


def test_table_by_hand():
    table = blind_rule_table(TRAIN, VAL, {"test": TEST})
    # 30 questions, 10 per type; identical human answers: accuracy 1 or 0 per question
    assert table["favourite"]["test"] == pytest.approx(100 * (1 + 1 + 5) / 30, abs=0.01)
    assert table["least frequent"]["test"] == pytest.approx(100 * (8 + 7 + 5) / 30, abs=0.01)
    assert table["second most frequent"]["test"] == pytest.approx(100 * (1 + 2 + 5) / 30,
                                                                  abs=0.01)
    assert table[BEST]["test"] == table["least frequent"]["test"]
    assert best_blind_rule(table, "test") == ("least frequent", table["least frequent"]["test"])
    assert table[ORACLE]["test"] == pytest.approx(100 * (8 + 7 + 5) / 30, abs=0.01)


def test_shifted_favourites_are_uniform_non_favourites_stratified_by_rank():
    ranks: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    for seed in range(600):
        p = draw_priors(np.random.default_rng(seed), 4)
        four = [t for t in QUESTION_TYPES if len(p.order[t]) == 4]
        six = [t for t in QUESTION_TYPES if len(p.order[t]) == 6]
        assert len(four) == 3 and len(six) == 2
        for t in QUESTION_TYPES:
            assert sorted(p.order[t]) == sorted(answers_of(t, 4))
            if t == "is there a":
                assert p.order[t] == ("yes", "no") and p.shifted[t] == "yes"
                continue
            assert p.shifted[t] != p.order[t][0]
            ranks[t][p.order[t].index(p.shifted[t])] += 1
        # three 4-answer types share ranks 1..3: each rank once; the 6-answer pair differs
        assert sorted(p.order[t].index(p.shifted[t]) for t in four) == [1, 2, 3]
        assert len({p.order[t].index(p.shifted[t]) for t in six}) == 2
    for t, c in ranks.items():  # marginally uniform over the non-favourite ranks
        if c:
            k = len(c)
            assert all(abs(n / 600 - 1 / k) < 0.06 for n in c.values()), (t, c)
    orders = {draw_priors(np.random.default_rng(s), 4).order["what color is the"]
              for s in range(20)}
    assert len(orders) > 15  # the train orders vary with the seed too


def test_benchmark_script_prints_each_draw_and_the_worst(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "blind_rules.py"
    out = subprocess.run([sys.executable, str(script), "--preset", "quick", "--draws", "3",
                          "--set", "train_images=200", "--set", "test_images=100",
                          "--set", "pilot_scenes=300"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("draw 3: best blind rule on test ") and "oracle constant" in out[0]
    assert out[-1].startswith("worst draw: ") and ("met" in out[-1] or "MISSED" in out[-1])
