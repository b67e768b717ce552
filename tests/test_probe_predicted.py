"""Retrieval and answer probes of pkd.demo.probe_predicted, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pkd.demo.probe_predicted import answer_probes, own_image_recall


def test_own_image_recall_by_hand():
    images = np.eye(3, dtype=np.float32)  # three images, orthogonal embeddings
    ids = np.array([10, 11, 12, 10])  # four queries; the last asks about image 10 again
    rows = images[[0, 1, 2, 0]]  # (4, 3) each query's own image embedding
    assert own_image_recall(rows, rows, ids) == 100.0
    queries = np.array([[1, 0, 0], [1, 0.1, 0], [0, 0, 1], [0, 0.5, 1]], np.float32)
    # own image first for queries 0 and 2; query 1 (image 11) ranks it 2nd (after image 10),
    # query 3 (image 10) ranks it 3rd
    assert own_image_recall(queries, rows, ids) == 50.0
    assert own_image_recall(queries, rows, ids, k=2) == 75.0
    assert own_image_recall(queries, rows, ids, k=5) == 100.0  # k capped at the 3 images


def _split(rng, n, answers_of, informative):
    """A toy split of two question families; the first feature column is the answer (index)
    when ``informative``, else noise."""
    types = ["what color is the"] * n + ["how many"] * n
    answers = [answers_of[t][int(k)]
               for t, k in zip(types, rng.integers(0, 2, 2 * n), strict=True)]
    code = np.array([answers_of[t].index(a) for t, a in zip(types, answers, strict=True)],
                    np.float32)
    col = code if informative else rng.standard_normal(2 * n).astype(np.float32)
    x = np.stack([col, rng.standard_normal(2 * n).astype(np.float32)], 1)
    return {"e_v": x, "e_t": x, "e_I": x, "e_Q": x, "type": types, "answer": answers}


def test_answer_probes_read_what_the_features_hold_and_the_prior_by_hand():
    rng = np.random.default_rng(0)
    answers_of = {"what color is the": ["red", "blue"], "how many": ["one", "two"]}
    train = _split(rng, 200, answers_of, informative=True)
    test = _split(rng, 100, answers_of, informative=True)
    out = answer_probes(train, {"test": test})["test"]
    assert out["predicted pair"]["all"] == 100.0 and out["foundation pair"]["all"] == 100.0
    for qtype, names in answers_of.items():  # the prior: the family's training favourite
        rows = [i for i, t in enumerate(train["type"]) if t == qtype]
        favourite = max(names, key=[train["answer"][i] for i in rows].count)
        mine = [a for t, a in zip(test["type"], test["answer"], strict=True) if t == qtype]
        assert out["prior"][qtype] == pytest.approx(100 * mine.count(favourite) / len(mine))
    noise = answer_probes(train, {"test": _split(rng, 300, answers_of, informative=False)})
    assert 30 < noise["test"]["predicted pair"]["all"] < 70  # features without the answer


def test_an_answer_the_training_family_never_gives_is_a_miss():
    rng = np.random.default_rng(1)
    train = _split(rng, 50, {"what color is the": ["red", "blue"], "how many": ["one", "two"]},
                   informative=True)
    test = _split(rng, 20, {"what color is the": ["green", "pink"], "how many": ["one", "two"]},
                  informative=True)
    out = answer_probes(train, {"test": test})["test"]
    assert out["predicted pair"]["what color is the"] == 0.0
    assert out["predicted pair"]["how many"] == 100.0
