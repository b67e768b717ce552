"""`pkd demo` on a tiny benchmark: the whole chain runs and writes the results contract."""

from __future__ import annotations

import json

import pytest
import torch

from pkd.data.synth import SynthConfig
from pkd.demo import SPLITS, DemoConfig, run_demo, summarize
from pkd.demo.prepare import OWN_REGIONS

pytest.register_assert_rewrite("demo_tables")
from demo_tables import assert_markdown_matches  # noqa: E402


def test_demo_chain_writes_results_json(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    synth = SynthConfig(train_images=60, val_images=16, test_images=20, test_iid_images=20,
                        test_comp_images=20, detection_train_images=10, detection_val_images=5,
                        caption_images=40, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", seeds=1, methods=("baseline",), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, train_epochs=1,
                     student_epochs=1, teacher_epochs=1)
    results = run_demo(cfg)
    saved = json.loads((cfg.out / "results.json").read_text())
    assert saved == results and isinstance(saved["elapsed_s"], float)
    assert {(r["method"], r["seed"], r["split"]) for r in saved["rows"]} == {
        ("baseline", 0, "test"), ("baseline", 0, "test_comp"), ("baseline", 0, "test_iid")}
    for row in saved["rows"]:
        assert 0.0 <= row["overall"] <= 100.0
        assert set(row["perAnswerType"]) <= {"yes/no", "number", "other"}
        assert row["ms_per_question"] > 0 and 0 <= row["prior"] <= 100
        assert row["perQuestionType"] and all(0 <= v <= 100
                                              for v in row["perQuestionType"].values())
    assert (cfg.out / "results.png").stat().st_size > 0
    assert "### test_comp" in (cfg.out / "results_families.md").read_text()
    assert_markdown_matches(cfg.out, seeds=1)
    assert saved["models"]["baseline"] > 0
    stages = saved["stage_seconds"]
    assert set(stages) == {"prepare (data, pre-training, extraction)", "baseline-seed0",
                           "evaluation"}
    assert sum(stages.values()) <= saved["elapsed_s"] + 0.5
    assert set(saved["draws"]) == {"0"}
    blind = saved["draws"]["0"]["blind_rules"]
    assert blind["best blind"]["test"] >= blind["favourite"]["test"]
    assert "blind rules" in (cfg.out / "results.md").read_text()
    probes = saved["draws"]["0"]["region_probes"]
    assert set(probes) == {"regions", "teacher_regions"}
    assert all(0 <= probes[s][a]["accuracy"] <= 100 for s in probes for a in ("shape", "color"))
    assert [s["n"] for s in summarize(saved["rows"])] == [1, 1, 1]
    again = run_demo(cfg)  # resumable: finished stages are skipped, same numbers
    def scores(rows):
        return [{k: v for k, v in r.items() if k != "ms_per_question"} for r in rows]

    gold = {r["split"]: r["prior_gold"] for r in saved["rows"]}
    assert gold["test"] < gold["test_iid"]  # the favourites are rare in the shifted split

    assert scores(again["rows"]) == scores(results["rows"])
    assert again["rows"] == results["rows"]  # the finished run's rows were reused, not re-scored
    assert (cfg.out / "draw0" / "runs" / "baseline-seed0" / "demo_rows.json").is_file()


def test_demo_pkd_row_trains_stage_2_from_the_cached_predictions(tmp_path, monkeypatch):
    """The pkd row: stage-1 predictors, their outputs cached once per seed (``predicted``
    store), stage 2 reading the cache on every step."""
    from pkd.stores import FeatureStore
    from pkd.train.tasks.pkd import PKDTask

    torch.set_num_threads(1)
    synth = SynthConfig(train_images=40, val_images=12, test_images=12, test_iid_images=12,
                        test_comp_images=12, detection_train_images=8, detection_val_images=4,
                        caption_images=24, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", methods=("pkd", "pkd-item"), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, train_epochs=1,
                     student_epochs=1, teacher_epochs=1)
    read = []
    predict = PKDTask.predict
    monkeypatch.setattr(PKDTask, "predict", lambda self, batch: read.append(
        "predicted_vision" in batch) or predict(self, batch))
    results = run_demo(cfg)
    assert {r["method"] for r in results["rows"]} == {"pkd", "pkd-item"}
    store = FeatureStore.open(cfg.out / "draw0" / "stores" / "predicted-seed0.zarr",
                              kind="predicted")
    assert store.complete and store.spec.dims["vision_tokens"] == 8
    assert read and all(read)
    # the item reading: the same frozen predictors predicted every split D is validated and
    # scored on, and its rows were scored on them
    for split in ("val", *SPLITS):
        made = FeatureStore.open(cfg.out / "draw0" / "stores" / f"predicted-seed0-{split}.zarr",
                                 kind="predicted")
        assert made.complete and made.spec.producer["split"] == split
        assert made.spec.producer["predictors_digest"] == store.spec.producer["predictors_digest"]
    assert {r["split"] for r in results["rows"] if r["method"] == "pkd-item"} == set(SPLITS)


def test_demo_alignment_ablation_rows_run_on_the_teachers_own_boxes(tmp_path):
    """teacher-own / distillvlm-unaligned: a teacher regions store from the teacher's simulated
    detector, the teacher adapted on it, the student distilled from it online."""
    from pkd.stores import FeatureStore

    torch.set_num_threads(1)
    synth = SynthConfig(train_images=40, val_images=12, test_images=12, test_iid_images=12,
                        test_comp_images=12, detection_train_images=8, detection_val_images=4,
                        caption_images=24, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", methods=("distillvlm-unaligned",), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, train_epochs=1,
                     student_epochs=1, teacher_epochs=1)
    results = run_demo(cfg)
    assert {r["method"] for r in results["rows"]} == {"distillvlm-unaligned"}
    store = FeatureStore.open(cfg.out / "draw0" / "stores" / OWN_REGIONS, kind="regions")
    assert store.complete and store.spec.producer["detector"].startswith("simulated:teacher:")
    adapted = json.loads((cfg.out / "draw0" / "runs" / "teacher-own-seed0"
                          / "stores.json").read_text())
    assert adapted["regions"]["producer"]["simulated"] is True  # adapted on its own boxes
    assert not (cfg.out / "draw0" / "stores" / "teacher-seed0.zarr").exists()  # online: no cache


def test_demo_rows_in_pkds_setting(tmp_path):
    """F0 (tiny LXMERT) pre-trained on the captions' regions; zero-shot, finetune, wise-ft and
    lwf-oracle rows with D's forgetting measured on F0's held-out captions."""
    from pkd.demo.vlm import forgetting_table

    torch.set_num_threads(1)
    synth = SynthConfig(train_images=60, val_images=16, test_images=20, test_iid_images=20,
                        test_comp_images=20, detection_train_images=10, detection_val_images=5,
                        caption_images=40, pilot_scenes=400)
    cfg = DemoConfig(out=tmp_path / "demo", methods=("zero-shot", "finetune", "wise-ft",
                                                     "lwf-oracle"), synth=synth,
                     pretrain_epochs=1, pretrain_tag_epochs=1, vlm_epochs=1,
                     vlm_pretrain_epochs=1)
    results = run_demo(cfg)
    draw = cfg.out / "draw0"
    assert (draw / "foundation-lxmert" / "pretrain_metrics.json").is_file()
    rows = {(r["method"], r["split"]): r for r in results["rows"]}
    assert {m for m, _ in rows} == {"zero-shot", "finetune", "wise-ft", "lwf-oracle"}
    zero = rows[("zero-shot", "test")]["forgetting"]
    assert 0 <= zero["itm_accuracy"] <= 100 and "mlm_shape_accuracy" in zero
    assert (draw / "runs" / "wise-ft-seed0" / "best" / "latest.json").is_file()
    title, header, table, _ = forgetting_table(results)
    assert [r[0] for r in table] == ["zero-shot", "finetune", "wise-ft", "lwf-oracle"]
    (s,) = [s for s in summarize(results["rows"]) if s["method"] == "lwf-oracle"
            and s["split"] == "test"]
    assert s["reference"] == "finetune"
