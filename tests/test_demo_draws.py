"""`pkd demo --data-seeds`: each draw its own benchmark, foundation and runs; rows stamped with
their draw; the post-hoc controls scored on the baseline run; tables rebuilt from the file."""

from __future__ import annotations

import json

import pytest
import torch

from pkd.cli import main
from pkd.data.synth import SynthConfig
from pkd.demo import DemoConfig, results_markdown, run_demo, summarize

TINY_SYNTH = {"train_images": 60, "val_images": 16, "test_images": 20, "test_iid_images": 20,
              "test_comp_images": 20, "detection_train_images": 10, "detection_val_images": 5,
              "caption_images": 40, "pilot_scenes": 400}


def test_two_draws_with_posthoc_controls(tmp_path):
    torch.set_num_threads(1)
    cfg = DemoConfig(out=tmp_path / "demo", seeds=1, data_seeds=(0, 1),
                     methods=("baseline", "baseline-masked", "baseline-prior-corrected"),
                     synth=SynthConfig(**TINY_SYNTH), pretrain_epochs=1, pretrain_tag_epochs=1,
                     train_epochs=1, student_epochs=1, teacher_epochs=1)
    results = run_demo(cfg)
    metas = [json.loads((cfg.out / f"draw{d}" / "data" / "synth_meta.json").read_text())
             for d in (0, 1)]
    assert [m["seed"] for m in metas] == [0, 1]  # one benchmark per draw
    assert metas[0]["answer_priors"] != metas[1]["answer_priors"]
    assert all((cfg.out / f"draw{d}" / "foundation" / "pretrain_metrics.json").is_file()
               for d in (0, 1))
    keys = {(r["method"], r["data_seed"], r["split"]) for r in results["rows"]}
    assert len(keys) == 3 * 2 * 3 == len(results["rows"])
    masked = [r for r in results["rows"] if r["method"] == "baseline-masked"]
    assert all(r["prior"] == 0.0 for r in masked)  # the training favourite never answered
    summary = {(s["method"], s["split"]): s for s in summarize(results["rows"])}
    s = summary[("baseline-masked", "test")]
    assert (s["n"], s["data_seeds"], s["reference"]) == (2, [0, 1], "baseline")
    assert set(results["draws"]) == {"0", "1"}
    text = (cfg.out / "results.md").read_text()
    assert text == results_markdown(results) and "blind rules" in text
    assert "target: every blind rule on test" in text
    (cfg.out / "results.md").unlink()
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- results:begin -->\nOLD-TABLE\n<!-- results:end -->\nend\n")
    assert main(["results", str(cfg.out), "--readme", str(readme)]) == 0
    assert (cfg.out / "results.md").read_text() == text  # rebuilt from results.json alone
    assert text.split("\n### ")[0] in readme.read_text() and "OLD-TABLE" not in readme.read_text()
    assert "[demo/results.md](demo/results.md)" in readme.read_text()


def test_bad_data_seeds_are_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--data-seeds", "1,x"]) == 2
    assert "--data-seeds '1,x': expected comma-separated integers >= 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_pkd_results_add_merges_draws_run_in_separate_folders(tmp_path, capsys):
    """Draws 10 and 11 run in two folders (two machines): `pkd results A --add B` puts B's rows
    and invocations into A/results.json, then every table covers both draws."""
    from pkd.demo import save_results

    def rows(draw: int, shift: float) -> list[dict]:
        return [{"method": m, "seed": s, "split": "test", "overall": base + shift + s,
                 "perAnswerType": {}, "perQuestionType": {}, "ms_per_question": 0.0,
                 "prior": 0.0, "prior_gold": 0.0, "data_seed": draw}
                for m, base in (("baseline", 50.0), ("lmh", 53.0)) for s in range(2)]

    def inv(r):
        return {"elapsed_s": 1.0, "rows": r, "models": {}, "preset": "full",
                "machine": {"cpu": "x", "cores": 2}, "draws": {str(r[0]["data_seed"]): {}}}

    a, b = tmp_path / "d10", tmp_path / "d11"
    save_results(inv(rows(10, 0.0)), a)
    save_results(inv(rows(11, 2.0)), b)
    save_results(inv(rows(11, 2.0)), b)  # a second invocation in b: both are kept
    assert main(["results", str(a), "--add", str(b)]) == 0
    merged = json.loads((a / "results.json").read_text())
    assert {r["data_seed"] for r in merged["rows"]} == {10, 11} and len(merged["rows"]) == 8
    assert len(merged["invocations"]) == 3 and set(merged["draws"]) == {"10", "11"}
    lmh = next(s for s in summarize(merged["rows"])
               if s["method"] == "lmh" and s["split"] == "test")
    assert (lmh["n"], lmh["data_seeds"], lmh["diff_mean"]) == (2, [10, 11], pytest.approx(3.0))
    assert main(["results", str(a), "--add", str(b)]) == 0  # again: the same rows, replaced
    assert len(json.loads((a / "results.json").read_text())["rows"]) == 8
    capsys.readouterr()
    assert main(["results", str(a), "--add", str(a)]) == 2
    assert "cannot be added to itself" in capsys.readouterr().err
    assert main(["results", str(a), "--add", str(tmp_path / "none")]) == 2
