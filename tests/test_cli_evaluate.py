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


def test_bootstrap_ci_over_questions(files, capsys):
    """Scores 100, 90, 0 (q30 missing). Each answer type has one question: its CI is the point.
    Overall: a resample is all-q30 (mean 0) or all-q10 (mean 100) with probability 1/27 each
    (3.7% > 2.5%), so the 95% percentile interval is [0, 100]."""
    assert main([*_args(files), "--bootstrap", "2000"]) == 0
    boot = json.loads(files["out"].read_text())["bootstrap"]
    assert boot["resamples"] == 2000 and boot["seed"] == 0 and boot["level"] == 0.95
    assert boot["overall"] == [0.0, 100.0]
    assert boot["perAnswerType"] == {"number": [90.0, 90.0], "other": [0.0, 0.0],
                                     "yes/no": [100.0, 100.0]}
    out = capsys.readouterr().out
    assert "95% CI" in out and "[0.00, 100.00]" in out and "[90.00, 90.00]" in out
    assert "2000 resamples (seed 0)" in out
    assert main([*_args(files), "--bootstrap", "2000"]) == 0  # seeded: the same again
    assert json.loads(files["out"].read_text())["bootstrap"] == boot


def test_bootstrap_is_off_by_default_and_refuses_negative(files, capsys):
    assert main(_args(files)) == 0
    assert "bootstrap" not in json.loads(files["out"].read_text())
    assert "95% CI" not in capsys.readouterr().out
    assert main([*_args(files), "--bootstrap", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --bootstrap -1: expected 0 (off) or a number of resamples\n"


def test_bootstrap_interval_on_many_questions(tmp_path, capsys):
    """200 yes/no questions, 140 answered right: the CI brackets 70% with the binomial width
    (1.96 * sqrt(0.7 * 0.3 / 200) = 6.35 points) and is what pkd.stats gives for the scores."""
    from pkd.stats import bootstrap_ci

    n = 200
    questions = {"questions": [{"image_id": i, "question": "Is it?", "question_id": i}
                               for i in range(n)]}
    anns = {"annotations": [{"question_id": i, "image_id": i, "question_type": "is it",
                             "answer_type": "yes/no", "multiple_choice_answer": "yes",
                             "answers": _answers(["yes"] * 10)} for i in range(n)]}
    results = [{"question_id": i, "answer": "yes" if i < 140 else "no"} for i in range(n)]
    paths = [tmp_path / f"{k}.json" for k in "qar"]
    for path, data in zip(paths, (questions, anns, results), strict=True):
        path.write_text(json.dumps(data))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--questions", str(paths[0]), "--annotations", str(paths[1]),
                 "--results", str(paths[2]), "--out", str(out), "--bootstrap", "1000"]) == 0
    low, high = json.loads(out.read_text())["bootstrap"]["overall"]
    assert low == pytest.approx(70 - 6.35, abs=1.0) and high == pytest.approx(70 + 6.35, abs=1.0)
    e = bootstrap_ci([100.0] * 140 + [0.0] * 60, n=1000, seed=0)
    assert [low, high] == [round(e.low, 2), round(e.high, 2)]


def test_checkpoint_mode_bootstrap(tmp_path, capsys):
    """``--checkpoint RUN --bootstrap N``: the CIs land in ``RUN/metrics_test.json`` and bracket
    the official numbers of the same predictions."""
    import torch
    from train_fixtures import make_benchmark, make_regions_store, train_overrides

    torch.set_num_threads(1)
    data = make_benchmark(tmp_path / "data")
    regions = make_regions_store(data, tmp_path / "regions.zarr")
    run = tmp_path / "run"
    assert main(["train", *train_overrides(data, regions, run)]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--bootstrap", "300"]) == 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    boot = metrics["bootstrap"]
    assert boot["resamples"] == 300
    assert boot["overall"][0] <= metrics["overall"] <= boot["overall"][1]
    assert set(boot["perAnswerType"]) == set(metrics["perAnswerType"])
    for t, (low, high) in boot["perAnswerType"].items():
        assert low <= metrics["perAnswerType"][t] <= high
    assert "95% CI" in capsys.readouterr().out
