"""``pkd data resplit``: a VQA-CP-style re-split of generated VQA v2-format files."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict

import pytest
from typer.testing import CliRunner

from pkd.cli import app, main
from pkd.data.normalize import preprocess_answer
from pkd.data.vqa import dataset_files, load_split

COLOURS, COUNTS = ["red", "blue", "green", "white", "black"], ["1", "2", "3", "4"]
TYPES = {"what color is the": COLOURS, "what color are the": COLOURS[::-1],  # shared concepts,
         "how many": COUNTS, "how many people are": COUNTS[1:] + COUNTS[:1],  # as in VQA
         "is the": ["yes", "no"], "is this": ["no", "yes"]}


def _write_vqa2(folder, split: str, n_images: int, first_image: int, rng: random.Random):
    """VQA v2 files (the real dict layout) with skewed answers per question type."""
    questions, annotations = [], []
    for image in range(first_image, first_image + n_images):
        for k, (qtype, answers) in enumerate(sorted(TYPES.items())):
            if rng.random() < 0.25:
                continue
            qid = image * 10 + k
            answer = rng.choices(answers, weights=[2 ** -i for i in range(len(answers))])[0]
            questions.append({"image_id": image, "question": f"{qtype} thing?", "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": image, "question_type": qtype,
                "answer_type": "yes/no" if qtype == "is the" else "other",
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": j + 1}
                            for j in range(10)]})
    head = {"info": {}, "license": {}, "data_subtype": split}
    q, a = folder / f"v2_OpenEnded_mscoco_{split}_questions.json", folder / f"v2_mscoco_{split}_annotations.json"
    q.write_text(json.dumps({**head, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}))
    a.write_text(json.dumps({**head, "data_type": "mscoco", "annotations": annotations}))
    return q, a


@pytest.fixture
def vqa2(tmp_path):
    rng = random.Random(7)
    return [_write_vqa2(tmp_path, "train2014", 300, 1, rng), _write_vqa2(tmp_path, "val2014", 150, 1000, rng)]


def _run(vqa2, out, seed=0, expect=0):
    args = ["data", "resplit", str(out), "--seed", str(seed)]
    for q, a in vqa2:
        args += ["--questions", str(q), "--annotations", str(a)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == expect, result.output
    return result.output


def _shift_from_files(out) -> dict:
    """An independent recomputation of the shift from the written VQA-CP files."""
    dist = {}
    for split in ("train", "test"):
        qpath, apath = dataset_files(out, "vqacp2", split)
        c = defaultdict(Counter)
        for _, a in load_split(qpath, apath):
            c[a.question_type][preprocess_answer(a.multiple_choice_answer)] += 1
        dist[split] = c
    shift = {}
    for t in dist["train"]:
        p, q = dist["train"][t], dist["test"][t]
        fav = sorted(p.items(), key=lambda x: (-x[1], x[0]))[0][0]
        support = set(p) | set(q)
        pn, qn = sum(p.values()) + len(support), sum(q.values()) + len(support)
        kl = sum((q[a] + 1) / qn * math.log(((q[a] + 1) / qn) / ((p[a] + 1) / pn)) for a in support)
        shift[t] = (fav, q[fav] / sum(q.values()), kl, p[fav] / sum(p.values()))
    return shift, dist


def test_resplit_matches_files_and_is_vqacp(vqa2, tmp_path):
    out = tmp_path / "cp"
    printed = _run(vqa2, out)
    saved = json.loads((out / "resplit_shift.json").read_text())
    shift, dist = _shift_from_files(out)
    assert set(shift) == set(TYPES) == set(saved["shift"])
    for t, (fav, test_fav, kl, train_fav) in shift.items():
        s = saved["shift"][t]
        assert s["train_favourite"] == fav
        assert s["test_favourite"] == pytest.approx(test_fav, abs=1e-12)
        assert s["kl"] == pytest.approx(kl, abs=1e-12)
        assert test_fav < train_fav and kl > 0.1  # the prior moved
        row = f"{t[:24]:24s} {s['train']:7d} {s['test']:7d} {fav[:12]:>12s} {test_fav:8.4f} {kl:8.4f}"
        assert row in printed.splitlines()
    pairs = {s: load_split(*dataset_files(out, "vqacp2", s)) for s in ("train", "test")}
    images = {s: {q.image_id for q, _ in p} for s, p in pairs.items()}
    assert not images["train"] & images["test"]  # no image in both
    train_answers = {a for c in dist["train"].values() for a in c}
    assert all(a in train_answers for c in dist["test"].values() for a in c)  # concepts seen
    groups = {s: {(t, a) for t, c in dist[s].items() for a in c} for s in dist}
    for t in TYPES:  # whole groups, except those split to keep their answer seen (step 3)
        both = {a for (u, a) in groups["train"] & groups["test"] if u == t}
        assert len(both) <= saved["shift"][t]["split_groups"]
    sizes = saved["sizes"]
    assert sizes["train"]["questions"] == len(pairs["train"]) and sizes["test"]["questions"] == len(pairs["test"])
    assert (len(pairs["train"]) + len(pairs["test"]) + sizes["dropped_image"] + sizes["dropped_unseen"]
            == sizes["input_questions"])
    coco = {q.coco_split for p in pairs.values() for q, _ in p}
    assert coco == {"train2014", "val2014"}
    assert f"train {len(pairs['train'])} questions" in printed


def test_resplit_is_reproducible(vqa2, tmp_path):
    _run(vqa2, tmp_path / "a", seed=3)
    _run(vqa2, tmp_path / "b", seed=3)
    _run(vqa2, tmp_path / "c", seed=4)
    names = [f"vqacp_v2_{s}_{k}.json" for s in ("train", "test") for k in ("questions", "annotations")]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes() for n in names)


def _edit_annotations(path, edit):
    data = json.loads(path.read_text())
    edit(data["annotations"])
    path.write_text(json.dumps(data))


def _error(vqa2, out, capsys) -> str:
    """The stderr of ``pkd data resplit`` run through the console entry point (exit 2)."""
    args = ["data", "resplit", str(out)]
    for q, a in vqa2:
        args += ["--questions", str(q), "--annotations", str(a)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


@pytest.mark.parametrize(("edit", "message"), [
    (lambda anns: anns[0].pop("answer_type"), r"annotations\[0\]\.answer_type: missing field"),
    (lambda anns: anns.__setitem__(0, {**anns[0], "question_type": "rare type"}),
     r"question type 'rare type' has 1 questions and 1 answer"),
])
def test_bad_input_is_one_line(vqa2, tmp_path, capsys, edit, message):
    _edit_annotations(vqa2[0][1], edit)
    assert re.search(message, _error(vqa2, tmp_path / "cp", capsys))
    assert not (tmp_path / "cp").exists()  # nothing written


def test_duplicate_ids_across_files(vqa2, tmp_path, capsys):
    err = _error([vqa2[0], vqa2[0]], tmp_path / "cp", capsys)
    assert "question_id 10 is also in" in err


def test_answers_unique_to_a_type_are_seen_within_it(tmp_path):
    """Types whose answers no other type shares (as in the synthetic benchmark): a test group's
    answer can only be seen in train within its type, so such groups are split (step 3)."""
    global TYPES
    saved = TYPES
    TYPES = {"what color is the": ["red", "blue", "green", "white"], "how many": ["1", "2", "3", "4"]}
    try:
        rng = random.Random(1)
        files = [_write_vqa2(tmp_path, "train2014", 400, 1, rng)]
    finally:
        TYPES = saved
    out = tmp_path / "cp"
    _run(files, out)
    saved_shift = json.loads((out / "resplit_shift.json").read_text())["shift"]
    shift, dist = _shift_from_files(out)
    for t in ("what color is the", "how many"):
        assert sum(dist["test"][t].values()) > 0
        assert set(dist["test"][t]) <= set(dist["train"][t])  # seen within the type
        assert saved_shift[t]["test_seen_same_type"] == 1.0 and saved_shift[t]["split_groups"] >= 1
        assert shift[t][1] < shift[t][3]  # the train favourite is rarer in test
