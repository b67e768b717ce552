"""``pkd data resplit``: a VQA-CP-style re-split of generated VQA v2-format files.

Defaults changed with images shared by the splits and the shift knob: the main test below used
to assert no image in both splits and whole groups (now ``--disjoint-images`` and ``--shift 1``
tests), and the within-type concept test now runs at ``--shift 1``, where step 4 matters."""

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
from pkd.data.prior import constant_answer_accuracy, dominant_answers, inverted_prior_answers
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
    q = folder / f"v2_OpenEnded_mscoco_{split}_questions.json"
    a = folder / f"v2_mscoco_{split}_annotations.json"
    q.write_text(json.dumps({**head, "task_type": "Open-Ended", "data_type": "mscoco",
                             "questions": questions}))
    a.write_text(json.dumps({**head, "data_type": "mscoco", "annotations": annotations}))
    return q, a


@pytest.fixture
def vqa2(tmp_path):
    rng = random.Random(7)
    return [_write_vqa2(tmp_path, "train2014", 300, 1, rng),
            _write_vqa2(tmp_path, "val2014", 150, 1000, rng)]


def _run(vqa2, out, seed=0, expect=0, extra=()):
    args = ["data", "resplit", str(out), "--seed", str(seed), *extra]
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
        row = (f"{t[:24]:24s} {s['train']:7d} {s['test']:7d} {fav[:12]:>12s} {test_fav:8.4f} "
               f"{kl:8.4f}")
        assert row in printed.splitlines()
    pairs = {s: load_split(*dataset_files(out, "vqacp2", s)) for s in ("train", "test")}
    images = {s: {q.image_id for q, _ in p} for s, p in pairs.items()}
    both = images["train"] & images["test"]  # images shared by default, as in VQA-CP
    assert both and saved["sizes"]["images_in_both"] == len(both)
    train_answers = {a for c in dist["train"].values() for a in c}
    assert all(a in train_answers for c in dist["test"].values() for a in c)  # concepts seen
    sizes = saved["sizes"]
    assert sizes["train"]["questions"] == len(pairs["train"])
    assert sizes["test"]["questions"] == len(pairs["test"])
    assert sizes["dropped_image"] == sizes["dropped_unseen"] == 0
    assert len(pairs["train"]) + len(pairs["test"]) == sizes["input_questions"]
    coco = {q.coco_split for p in pairs.values() for q, _ in p}
    assert coco == {"train2014", "val2014"}
    assert f"train {len(pairs['train'])} questions" in printed
    share = len(pairs["test"]) / (len(pairs["train"]) + len(pairs["test"]))
    assert saved["test_share"] == {"requested": 0.3, "achieved": pytest.approx(share, abs=1e-12)}
    assert f"test share {share:.3f} (requested 0.3)" in printed
    assert abs(share - 0.3) < 0.06 and saved["warnings"] == [] and "warning" not in printed


def test_resplit_is_reproducible(vqa2, tmp_path):
    _run(vqa2, tmp_path / "a", seed=3)
    _run(vqa2, tmp_path / "b", seed=3)
    _run(vqa2, tmp_path / "c", seed=4)
    names = [f"vqacp_v2_{s}_{k}.json" for s in ("train", "test")
             for k in ("questions", "annotations")]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes()
               for n in names)


def _edit_annotations(path, edit):
    data = json.loads(path.read_text())
    edit(data["annotations"])
    path.write_text(json.dumps(data))


def _error(vqa2, out, capsys, extra=()) -> str:
    """The stderr of ``pkd data resplit`` run through the console entry point (exit 2)."""
    args = ["data", "resplit", str(out), *extra]
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
    TYPES = {"what color is the": ["red", "blue", "green", "white"],
             "how many": ["1", "2", "3", "4"]}
    try:
        rng = random.Random(1)
        files = [_write_vqa2(tmp_path, "train2014", 400, 1, rng)]
    finally:
        TYPES = saved
    out = tmp_path / "cp"
    _run(files, out, extra=["--shift", "1"])  # whole groups: step 4 keeps answers seen
    saved_shift = json.loads((out / "resplit_shift.json").read_text())["shift"]
    shift, dist = _shift_from_files(out)
    for t in ("what color is the", "how many"):
        assert sum(dist["test"][t].values()) > 0
        assert set(dist["test"][t]) <= set(dist["train"][t])  # seen within the type
        assert saved_shift[t]["test_seen_same_type"] == 1.0 and saved_shift[t]["split_groups"] >= 1
        assert shift[t][1] < shift[t][3]  # the train favourite is rarer in test


def _files(out) -> dict:
    return {s: load_split(*dataset_files(out, "vqacp2", s)) for s in ("train", "test")}


def test_disjoint_images_option(vqa2, tmp_path):
    out = tmp_path / "cp"
    printed = _run(vqa2, out, extra=["--disjoint-images"])
    pairs, saved = _files(out), json.loads((out / "resplit_shift.json").read_text())
    images = {s: {q.image_id for q, _ in p} for s, p in pairs.items()}
    assert not images["train"] & images["test"] and saved["sizes"]["images_in_both"] == 0
    sizes = saved["sizes"]
    assert sizes["dropped_image"] > 0
    assert (len(pairs["train"]) + len(pairs["test"]) + sizes["dropped_image"]
            + sizes["dropped_unseen"] == sizes["input_questions"])
    share = saved["test_share"]["achieved"]
    assert share == pytest.approx(len(pairs["test"]) / (len(pairs["train"]) + len(pairs["test"])))
    assert f"test share {share:.3f}" in printed and saved["config"]["disjoint_images"] is True


def _test_dist(out) -> dict[str, dict[str, Counter]]:
    return _shift_from_files(out)[1]


def _yes_no_inverted(out) -> float:
    """Official accuracy of the inverted prior (from train) on the yes/no test questions."""
    pairs = _files(out)
    train = [a for _, a in pairs["train"]]
    test = [a for _, a in pairs["test"] if a.answer_type == "yes/no"]
    return constant_answer_accuracy(inverted_prior_answers(train), test)["accuracy"]


def test_shift_knob(vqa2, tmp_path):
    """0: each type's answer distribution is the same in train and test; 1: whole groups (the
    favourite absent from test; the inverted prior scores 100 on yes/no); the default keeps both
    answers of a yes/no type on both sides with clearly different priors."""
    runs = {s: tmp_path / f"s{s}" for s in ("0", "0.3", "1")}
    for s, out in runs.items():
        _run(vqa2, out, extra=["--shift", s])
    dist = {s: _test_dist(out) for s, out in runs.items()}
    for t in TYPES:  # shift 0: total variation between train and test below 0.05 per type
        p, q = dist["0"]["train"][t], dist["0"]["test"][t]
        tv = sum(abs(p[a] / p.total() - q[a] / q.total()) for a in set(p) | set(q)) / 2
        assert tv < 0.05, (t, tv)
    saved = json.loads((runs["1"] / "resplit_shift.json").read_text())
    for t in TYPES:  # shift 1: the favourite is absent from test, whole groups (but step 4)
        assert saved["shift"][t]["test_favourite"] == 0.0
        both = set(dist["1"]["train"][t]) & set(dist["1"]["test"][t])
        assert len(both) <= saved["shift"][t]["split_groups"]
    assert _yes_no_inverted(runs["1"]) == 100.0
    p, q = dist["0.3"]["train"]["is the"], dist["0.3"]["test"]["is the"]
    assert set(p) == set(q) == {"yes", "no"}  # both answers on both sides
    assert p["yes"] / p.total() - q["yes"] / q.total() > 0.15  # the prior moved
    inverted = _yes_no_inverted(runs["0.3"])
    assert inverted < 75
    default = json.loads((runs["0.3"] / "resplit_shift.json").read_text())
    per_type = default["blind_rules"]["per_answer_type"]
    assert per_type["least frequent"]["yes/no"] == pytest.approx(inverted, abs=0.01)


def test_default_shift_is_0_3(vqa2, tmp_path):
    _run(vqa2, tmp_path / "cp")
    saved = json.loads((tmp_path / "cp" / "resplit_shift.json").read_text())
    assert saved["config"]["shift"] == 0.3


def test_blind_rule_table_printed_and_saved(vqa2, tmp_path):
    out = tmp_path / "cp"
    printed = _run(vqa2, out)
    blind = json.loads((out / "resplit_shift.json").read_text())["blind_rules"]
    table, pairs = blind["table"], _files(out)
    train, test = ([a for _, a in pairs[s]] for s in ("train", "test"))
    favourite = {t: a for t, (a, _) in dominant_answers(train).items()}
    assert table["favourite"] == pytest.approx(
        constant_answer_accuracy(favourite, test)["accuracy"], abs=0.01)
    assert blind["test_questions"] == len(test) and blind["val"] == "train"
    assert table["best blind"] == max(v for r, v in table.items()
                                      if r not in ("best blind", "oracle constant"))
    assert blind["best"]["test"] == table["best blind"]
    lines = printed.splitlines()
    for rule in ("favourite", "least frequent", "second most frequent", "best blind",
                 "oracle constant"):
        assert f"{rule:40s} {table[rule]:7.2f}" in lines
    best = blind["best"]["rule"]
    by = ", ".join(f"{t} {v:.2f}" for t, v in blind["per_answer_type"][best].items())
    assert f"best blind rule {best!r} on test per answer type: {by}" in lines
    assert set(blind["per_answer_type"][best]) == {"yes/no", "other"}


def _write_spec(folder, spec: dict[str, dict[str, int]], per_image: int = 1,
                name: str = "train2014"):
    """VQA v2 files with ``spec = {type: {answer: n}}`` questions, ``per_image`` to an image."""
    questions, annotations, qid = [], [], 0
    for t, counts in spec.items():
        for answer, n in counts.items():
            for _ in range(n):
                qid += 1
                image = 1 + (qid - 1) // per_image
                questions.append({"image_id": image, "question": f"{t} x?", "question_id": qid})
                annotations.append({"question_id": qid, "image_id": image, "question_type": t,
                                    "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                                    "multiple_choice_answer": answer,
                                    "answers": [{"answer": answer, "answer_confidence": "yes",
                                                 "answer_id": j + 1} for j in range(10)]})
    q, a = folder / f"q_{name}.json", folder / f"a_{name}.json"
    q.write_text(json.dumps({"data_subtype": name, "questions": questions}))
    a.write_text(json.dumps({"data_subtype": name, "annotations": annotations}))
    return [(q, a)]


SKEWED = {"is the": {"yes": 95, "no": 5}, "what color is the": {"red": 95, "blue": 3, "green": 2}}


def test_low_test_share_refused_and_warned(tmp_path, capsys):
    files = _write_spec(tmp_path, SKEWED)
    # test only the 5% non-favourites
    err = _error(files, tmp_path / "cp", capsys, ["--shift", "1"])
    assert re.search(r"achieved test share 0\.0\d+ is below half the requested 0\.3 \(", err)
    assert not (tmp_path / "cp").exists()  # nothing written
    printed = _run(files, tmp_path / "ok", extra=["--shift", "1", "--test-share", "0.06"])
    assert re.search(r"^warning: achieved test share 0\.035 differs from the requested 0\.06 by "
                     r"42%", printed, re.M)
    assert json.loads((tmp_path / "ok" / "resplit_shift.json").read_text())["warnings"]


def test_shift_out_of_range(vqa2, tmp_path, capsys):
    err = _error(vqa2, tmp_path / "cp", capsys, ["--shift", "1.5"])
    assert "--shift must be in [0, 1], got 1.5" in err


@pytest.mark.parametrize(("content", "message"), [
    ("", r"q_train2014\.json: empty file \(expected VQA v2-format questions\)"),
    ('{"questions": []}', r"q_train2014\.json: no questions \(the file holds an empty list\)"),
    ('{"1": {"imageId": "n1", "question": "x?", "answer": "yes"}}',
     r"q_train2014\.json: a GQA-format file \(a dict keyed by question id\); expected VQA "
     r"v2-format questions \(a JSON object with a 'questions' list, or a VQA-CP list\)"),
    ('{"1": {"image": 1, "question": "x?"}}',
     r"q_train2014\.json: no 'questions' list \(keys: 1\)"),
])
def test_unusable_questions_file_is_one_line(tmp_path, capsys, content, message):
    files = _write_spec(tmp_path, SKEWED)
    files[0][0].write_text(content)
    assert re.search(message, _error(files, tmp_path / "cp", capsys))
    assert not (tmp_path / "cp").exists()


def test_gqa_annotations_file_is_one_line(tmp_path, capsys):
    files = _write_spec(tmp_path, SKEWED)
    files[0][1].write_text('{"1": {"imageId": "n1", "question": "x?", "answer": "yes"}}')
    assert "a_train2014.json: a GQA-format file" in _error(files, tmp_path / "cp", capsys)


def test_every_test_question_dropped_is_refused(tmp_path, capsys):
    """All questions on one image: with --disjoint-images the image goes to train and every
    test question is dropped."""
    files = _write_spec(tmp_path, {"is the": {"yes": 30, "no": 20}}, per_image=1000)
    err = _error(files, tmp_path / "cp", capsys, ["--disjoint-images", "--min-per-type", "2"])
    assert re.search(r"q_train2014\.json: the test split is empty \(\d+ train, 0 test questions "
                     r"kept; \d+ dropped \(image in both\)", err)
    assert not (tmp_path / "cp").exists()


def test_unwritable_output_is_one_line(vqa2, tmp_path, capsys):
    (tmp_path / "cp").write_text("a file")
    assert "cp: output folder is a file" in _error(vqa2, tmp_path / "cp", capsys)


def test_same_seed_same_summary(vqa2, tmp_path):
    """Determinism beyond the split files: the saved shift, sizes and blind rules."""
    for name in ("a", "b"):
        _run(vqa2, tmp_path / name, seed=5, extra=["--shift", "0.6"])
    a, b = (json.loads((tmp_path / n / "resplit_shift.json").read_text()) for n in ("a", "b"))
    for key in ("sizes", "test_share", "shift", "blind_rules"):
        assert a[key] == b[key]


def test_blind_rule_warnings(vqa2, tmp_path):
    """Whole groups flip yes/no (the inverted prior solves it); a weak shift of a skewed type
    leaves the training favourite the best blind rule: both are warned about."""
    printed = _run(vqa2, tmp_path / "s1", extra=["--shift", "1"])
    assert "warning: the inverted prior scores 100.00% on the yes/no test questions" in printed
    printed = _run(_write_spec(tmp_path, SKEWED), tmp_path / "skewed")
    assert re.search(r"^warning: the training favourite is the best blind rule on test "
                     r"\(\d+\.\d\d%\)", printed, re.M)
