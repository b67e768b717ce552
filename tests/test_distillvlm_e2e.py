"""DistillVLM from the CLI: teacher-adapt -> extract teacher -> distill (cached and online)."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import make_benchmark, make_regions_store, train_overrides

from pkd.cli import main
from pkd.stores import FeatureStore

TEACHER = {"method.distill.teacher_model.arch": "fusion",
           "method.distill.teacher_model.hidden_size": 32,
           "method.distill.teacher_model.num_layers": 2,
           "method.distill.teacher_model.num_heads": 4,
           "method.distill.teacher_model.intermediate_size": 64,
           "method.distill.teacher_model.dropout": 0.0}
STUDENT = {"model.arch": "fusion", "model.hidden_size": 16, "model.num_layers": 1,
           "model.num_heads": 2, "model.intermediate_size": 32, "method.distill.queue_size": 64}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    data = make_benchmark(root / "data")
    student = make_regions_store(data, root / "student.zarr", seed=0, producer="student-det")
    teacher = make_regions_store(data, root / "teacher.zarr", seed=1, producer="teacher-backbone")
    adapt = root / "teacher-run"
    args = train_overrides(data, student, adapt, **TEACHER, **{
        "method.name": "teacher-adapt", "data.teacher_regions": teacher, "run.max_steps": 6})
    assert main(["train", *args]) == 0
    return data, student, teacher, adapt, root


def _student_args(aligned, out, **extra):
    data, student, teacher, adapt, root = aligned
    return train_overrides(data, student, out, **TEACHER, **STUDENT, **{
        "method.name": "distillvlm", "data.teacher_regions": teacher,
        "data.teacher": root / "teacher-cache.zarr",
        "method.distill.teacher_checkpoint": adapt / "best", "run.max_steps": 4, **extra})


def test_teacher_adapt_trains_the_teacher_on_aligned_regions(aligned):
    _, _, teacher, adapt, _ = aligned
    stores = json.loads((adapt / "stores.json").read_text())
    assert stores["regions"]["producer"]["model"] == "teacher-backbone"
    assert main(["evaluate", "--checkpoint", str(adapt), "--split", "val"]) == 0


def test_cached_and_online_teacher_runs(aligned, tmp_path):
    data, _, _, adapt, root = aligned
    cfg = tmp_path / "student.yaml"
    cfg.write_text("")
    args = _student_args(aligned, tmp_path / "cached")
    assert main(["extract", "teacher", str(cfg), *args]) == 0
    store = FeatureStore.open(root / "teacher-cache.zarr", kind="teacher")
    assert store.complete and store.spec.dims["attention_layers"] == [1]  # last teacher layer
    assert main(["train", *args]) == 0
    rows = [json.loads(x) for x in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all(k in train_rows[0] for k in ("vqa_loss", "att_loss", "nce_loss", "kd_loss"))
    # the student shares the teacher's vocabularies
    for name in ("answers.json", "words.json"):
        assert (tmp_path / "cached" / name).read_text() == (adapt / name).read_text()
    online = _student_args(aligned, tmp_path / "online", **{"method.distill.online_teacher": True})
    assert main(["train", *online]) == 0
    first = [json.loads(x) for x in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    a = next(r for r in rows if r["split"] == "train")
    b = next(r for r in first if r["split"] == "train")
    for key in ("vqa_loss", "att_loss", "kd_loss"):  # same losses from cache and online teacher
        assert a[key] == pytest.approx(b[key], rel=2e-2, abs=1e-4), key
    assert main(["evaluate", "--checkpoint", str(tmp_path / "cached"), "--split", "test"]) == 0
