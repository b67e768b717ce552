"""DistillVLM from the CLI: teacher-adapt -> extract teacher -> distill (cached and online)."""

from __future__ import annotations

import json

import pytest
import torch
from host_buffer_checks import assert_ring_batches_equal
from safetensors.torch import load_file
from train_fixtures import make_benchmark, make_regions_store, train_overrides

from pkd.cli import main
from pkd.stores import FeatureStore
from pkd.train.checkpoint import resolve_checkpoint
from pkd.train.config_load import load_config

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
    first = [json.loads(x)
             for x in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    a = next(r for r in rows if r["split"] == "train")
    b = next(r for r in first if r["split"] == "train")
    for key in ("vqa_loss", "att_loss", "kd_loss"):  # same losses from cache and online teacher
        assert a[key] == pytest.approx(b[key], rel=2e-2, abs=1e-4), key
    assert main(["evaluate", "--checkpoint", str(tmp_path / "cached"), "--split", "test"]) == 0


def test_ring_of_host_buffers_gives_the_same_teacher_batches(aligned, tmp_path):
    """The GPU feed's pinned ring (here unpinned: no CUDA): teacher regions, cached teacher
    signals cut to the batch's tokens as they are read, the same values as the plain read."""
    _, _, _, _, root = aligned
    args = _student_args(aligned, tmp_path / "ring")
    if not (root / "teacher-cache.zarr").exists():  # the cached-teacher test builds it too
        cfg = tmp_path / "student.yaml"
        cfg.write_text("")
        assert main(["extract", "teacher", str(cfg), *args]) == 0
    got = assert_ring_batches_equal(load_config(None, args), tmp_path / "ring", teacher=True)
    assert {"region_features", "teacher_hidden", "teacher_attentions"} <= got["in_slot"]
    online = _student_args(aligned, tmp_path / "ring-online",
                           **{"method.distill.online_teacher": True})
    got = assert_ring_batches_equal(load_config(None, online), tmp_path / "ring-online",
                                    teacher=True)
    assert {"region_features", "teacher_region_features"} <= got["in_slot"]


def test_unaligned_ablation_from_the_cli(aligned, tmp_path, capsys):
    """The teacher adapted on its own detector's regions, then distilled with tokens paired by
    position (method.distill.alignment=index); the aligned default refuses those regions."""
    data, student, _, _, root = aligned
    own = make_regions_store(data, tmp_path / "own.zarr", seed=2, producer="teacher-det",
                             own_detector=True)
    adapt = tmp_path / "teacher-own"
    args = train_overrides(data, student, adapt, **TEACHER, **{
        "method.name": "teacher-adapt", "data.teacher_regions": own, "run.max_steps": 4})
    assert main(["train", *args]) == 0
    common = {**TEACHER, **STUDENT, "method.name": "distillvlm", "data.teacher_regions": own,
              "method.distill.online_teacher": True, "run.max_steps": 4,
              "method.distill.teacher_checkpoint": adapt / "best"}
    capsys.readouterr()
    refused = train_overrides(data, student, tmp_path / "refused", **common)
    assert main(["train", *refused]) == 2
    assert "do not line up" in capsys.readouterr().err
    unaligned = train_overrides(data, student, tmp_path / "unaligned", **common,
                                **{"method.distill.alignment": "index"})
    assert main(["train", *unaligned]) == 0
    rows = [json.loads(x) for x in (tmp_path / "unaligned" / "metrics.jsonl").read_text()
            .splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows and all(r["att_loss"] > 0 and r["nce_loss"] >= 0 for r in train_rows)
    cached = train_overrides(data, student, tmp_path / "cached", **{
        **common, "method.distill.online_teacher": False, "data.teacher": root / "t.zarr",
        "method.distill.alignment": "index"})
    capsys.readouterr()
    assert main(["train", *cached]) == 2
    assert "set method.distill.online_teacher=true" in capsys.readouterr().err


def test_hf_bert_teacher_adapts_caches_and_distils(aligned, tmp_path):
    """A transformers BertModel as the teacher's encoder (model.encoder: hf:DIR), end to end."""
    from pkd.hf.tiny_models import build_tiny_bert

    data, student, teacher, _, _ = aligned
    bert = build_tiny_bert(tmp_path / "bert", hidden=32, layers=2, heads=4, intermediate=64)
    hf_teacher = {**TEACHER, "method.distill.teacher_model.encoder": f"hf:{bert}"}
    adapt = tmp_path / "adapt"
    assert main(["train", *train_overrides(data, student, adapt, **hf_teacher, **{
        "method.name": "teacher-adapt", "data.teacher_regions": teacher,
        "run.max_steps": 4})]) == 0
    best = load_file(str(resolve_checkpoint(adapt / "best") / "model.safetensors"))
    assert any(k.startswith("hf_encoder.model.encoder.layer.1.") for k in best)
    args = train_overrides(data, student, tmp_path / "student", **hf_teacher, **STUDENT, **{
        "method.name": "distillvlm", "data.teacher_regions": teacher,
        "data.teacher": tmp_path / "cache.zarr",
        "method.distill.teacher_checkpoint": adapt / "best",
        "run.max_steps": 2})
    cfg = tmp_path / "student.yaml"
    cfg.write_text("")
    assert main(["extract", "teacher", str(cfg), *args]) == 0
    cache = FeatureStore.open(tmp_path / "cache.zarr", kind="teacher")
    assert cache.spec.dims["attention_layers"] == [1]
    assert main(["train", *args]) == 0
    rows = [json.loads(x)
            for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["att_loss"] > 0 and r["nce_loss"] > 0 for r in rows if r["split"] == "train")
