"""``pkd evaluate`` in-process: exit codes, the metrics file, the table and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pkd.cli import main


def _answers(words: list[str]) -> list[dict]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1}
            for i, w in enumerate(words)]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    questions = {"questions": [{"image_id": 1, "question": "Is it?", "question_id": 10},
                               {"image_id": 2, "question": "How many?", "question_id": 20},
                               {"image_id": 3, "question": "What color?", "question_id": 30}]}
    anns = {"annotations": [
        {"question_id": 10, "image_id": 1, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": _answers(["yes"] * 10)},
        {"question_id": 20, "image_id": 2, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "3", "answers": _answers(["2"] * 3 + ["3"] * 7)},
        {"question_id": 30, "image_id": 3, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": _answers(["red"] * 10)},
    ]}
    results = [{"question_id": 10, "answer": "yes"}, {"question_id": 20, "answer": "two"}]
    paths = {name: tmp_path / f"{name}.json" for name in ("q", "a", "r")}
    for name, data in zip(paths, (questions, anns, results), strict=True):
        paths[name].write_text(json.dumps(data))
    paths["out"] = tmp_path / "out" / "metrics.json"
    return paths


def _args(files) -> list[str]:
    return ["evaluate", "--questions", str(files["q"]), "--annotations", str(files["a"]),
            "--results", str(files["r"]), "--out", str(files["out"])]


def test_scores_writes_and_prints(files, capsys):
    assert main(_args(files)) == 0
    metrics = json.loads(files["out"].read_text())
    # q10: 1.0; q20: "two" -> "2", 3 matches -> 0.9; q30 missing -> 0; 100 * 1.9 / 3 = 63.33
    assert metrics["overall"] == 63.33
    assert metrics["perAnswerType"] == {"number": 90.0, "other": 0.0, "yes/no": 100.0}
    assert metrics["perQuestionType"] == {"how many": 90.0, "is it": 100.0, "what color": 0.0}
    assert metrics["missing"] == 1
    out = capsys.readouterr().out
    assert "overall" in out and "63.33" in out and "how many" in out
    assert "1 questions had no prediction" in out


def test_missing_options(files, capsys):
    assert main(["evaluate", "--questions", str(files["q"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--annotations, --results" in err
    assert err.count("\n") == 1


def test_checkpoint_mode_needs_a_run_folder(files, capsys):
    assert main(["evaluate", "--checkpoint", "run", "--split", "test"]) == 2
    assert capsys.readouterr().err == "error: run: not a pkd run folder (no config.yaml)\n"
    assert main(["evaluate", "--checkpoint", "run"]) == 2  # the default split needs the run too
    assert capsys.readouterr().err == "error: run: not a pkd run folder (no config.yaml)\n"
    assert main(["evaluate", "--checkpoint", "run", "--which", "first"]) == 2
    assert "expected best or last" in capsys.readouterr().err
    assert main(["evaluate", "--split", "test"]) == 2
    assert "--split: only valid with --checkpoint" in capsys.readouterr().err


def test_bad_results_file(files, capsys):
    files["r"].write_text(json.dumps([{"question_id": 99, "answer": "yes"}]))
    assert main(_args(files)) == 2
    err = capsys.readouterr().err
    assert err == f"error: {files['r']}: question_id 99 is not in the annotations\n"
    assert not files["out"].exists()
    files["r"].write_text("not json")
    assert main(_args(files)) == 2
    assert f"error: {files['r']}: not valid JSON" in capsys.readouterr().err
