"""Teacher store: cached values equal an online teacher forward; cached losses equal online ones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from train_fixtures import sharpen

from pkd.errors import PkdError, StoreMismatch
from pkd.stores.reader import FeatureStore
from pkd.train.config import DistillConfig, MethodConfig, ModelConfig, TrainConfig
from pkd.train.models import build_model
from pkd.train.question_store import batches_by_id
from pkd.train.tasks import build_task
from pkd.train.tasks.distillvlm import teacher_signals, teacher_view
from pkd.train.teacher_cache import cached_layers, read_teacher, trim_teacher
from pkd.train.teacher_extract import cache_teacher

torch.set_num_threads(1)

WORDS, ANSWERS, S_DIM, T_DIM = 30, 7, 12, 20
MAXQ, MAXR = 5, 6  # data.max_question_length, regions store max_regions
T = 2 + MAXQ + MAXR
QIDS = np.array([907, 12, 55, 301, 4, 78, 230, 19, 66, 5])  # not sorted: the store sorts


def fusion(hidden: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(arch="fusion", hidden_size=hidden, num_layers=layers, num_heads=heads,
                       intermediate_size=2 * hidden, max_positions=16, dropout=0.0,
                       classifier_dropout=0.0)


STUDENT, TEACHER = fusion(16, 2, 2), fusion(24, 3, 4)


class FakeData:
    """Per-question features; ``batch(ids)`` pads like the trainer (regions to the batch max)."""

    def __init__(self, seed: int = 0):
        g = np.random.default_rng(seed)
        n = len(QIDS)
        self.pos = {int(q): i for i, q in enumerate(QIDS)}
        self.lengths = g.integers(1, MAXQ + 1, n)
        self.counts = g.integers(1, MAXR + 1, n)
        self.tokens = g.integers(2, WORDS, (n, MAXQ)) * (np.arange(MAXQ) < self.lengths[:, None])
        self.student = g.standard_normal((n, MAXR, S_DIM)).astype(np.float16)
        self.teacher = g.standard_normal((n, MAXR, T_DIM)).astype(np.float16)
        self.geometry = g.random((n, MAXR, 6)).astype(np.float32)
        self.targets = g.random((n, ANSWERS)).astype(np.float32)

    def batch(self, ids) -> dict:
        i = np.array([self.pos[int(q)] for q in ids])
        nb = int(self.counts[i].max())
        rmask = np.arange(nb)[None] < self.counts[i][:, None]
        out = {"question_id": np.asarray(ids, dtype=np.int64), "question_tokens": self.tokens[i],
               "question_mask": self.tokens[i] > 0, "targets": self.targets[i],
               "region_features": self.student[i, :nb].astype(np.float32),
               "region_geometry": self.geometry[i, :nb], "region_mask": rmask,
               "teacher_region_features": self.teacher[i, :nb].astype(np.float32),
               "teacher_region_geometry": self.geometry[i, :nb],
               "teacher_region_mask": rmask}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}

    def teacher_batch(self, ids) -> dict:
        """What ``cache_teacher`` reads: the teacher's view (region_* = teacher regions)."""
        return teacher_view(self.batch(ids))


def make_teacher():
    torch.manual_seed(1)
    return sharpen(build_model(TEACHER, WORDS, ANSWERS, T_DIM), 5)


def write(tmp_path, teacher, data, layers, name="teacher.zarr", **kw):
    return cache_teacher(teacher, data.teacher_batch, QIDS, tmp_path / name, layers=layers,
                         max_question_length=MAXQ, max_regions=MAXR, batch_size=3,
                         items_per_chunk=2, items_per_shard=4, producer={"model": "tiny"}, **kw)


def widened(arrays: dict) -> dict:
    return {k: torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v)
            for k, v in arrays.items()}


def store_batch(store: FeatureStore, data: FakeData, ids) -> dict:
    """A student batch plus its cached teacher keys, as the trainer would assemble it."""
    batch = data.batch(ids)
    t_b = 2 + batch["question_tokens"].shape[1] + batch["region_mask"].shape[1]
    return {**batch, **widened(read_teacher(store, store.rows_of(ids), t_b))}


@pytest.mark.parametrize("layers", [[2], [0, 2]])
def test_cached_values_equal_an_online_forward(tmp_path, layers):
    teacher, data = make_teacher(), FakeData()
    store = FeatureStore.open(write(tmp_path, teacher, data, layers), kind="teacher")
    assert store.complete and store.ok.all() and cached_layers(store) == layers
    assert store.spec.dims["num_tokens"] == T and store.spec.producer["model"] == "tiny"
    att_shape = (4, T, T) if len(layers) == 1 else (len(layers), 4, T, T)
    assert store.spec.array("teacher_attentions").item_shape == att_shape
    ids = [55, 4, 230]
    batch = store_batch(store, data, ids)
    online = teacher_signals(teacher, teacher_view(data.batch(ids)), layers)
    mask = online["teacher_token_mask"]  # (B, T_b)
    assert torch.equal(batch["teacher_token_mask"], mask)
    assert torch.allclose(batch["teacher_logits"], online["teacher_logits"], atol=2e-3)
    hidden = batch["teacher_hidden"]
    assert torch.allclose(hidden[mask], online["teacher_hidden"][mask], atol=5e-3)
    assert (hidden[~mask] == 0).all()  # padding stored as zeros
    att = batch["teacher_attentions"].reshape(online["teacher_attentions"].shape)
    pair = mask[:, None, None, :, None] & mask[:, None, None, None, :]
    pair = pair.expand_as(att)
    assert torch.allclose(att[pair], online["teacher_attentions"][pair], atol=1e-3)
    assert (att[~pair] == 0).all()
    counts = store.read(store.rows_of(ids), ["num_tokens"])["num_tokens"]
    assert counts.tolist() == mask.sum(dim=1).tolist()


@pytest.mark.parametrize("mapping, layers", [("last", [2]), ("uniform", [1, 2])])
def test_cached_store_gives_the_online_losses(tmp_path, mapping, layers):
    teacher, data = make_teacher(), FakeData()
    store = FeatureStore.open(write(tmp_path, teacher, data, layers), kind="teacher")
    distill = DistillConfig(teacher_model=TEACHER, queue_size=64, nce_dim=8, tau=0.1,
                            attention_layers=mapping, online_teacher=True)
    cfg = TrainConfig(model=STUDENT, method=MethodConfig(name="distillvlm", distill=distill))
    torch.manual_seed(0)
    student = sharpen(build_model(STUDENT, WORDS, ANSWERS, S_DIM), 6)
    online = build_task(cfg, student, teacher=teacher)
    cfg.method.distill.online_teacher = False
    cached = build_task(cfg, copy.deepcopy(online.model), cached_layers=cached_layers(store))
    cached.load_state_dict(online.state_dict())
    for ids in ([55, 4, 230], [907, 12, 5, 66]):  # the second step uses the queue
        a, b = online(data.batch(ids)), cached(store_batch(store, data, ids))
        for key in ("loss", "vqa_loss", "att_loss", "nce_loss", "kd_loss"):
            assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-6), key
    assert b["nce_loss"].item() > 0.1 and b["att_loss"].item() > 0.01


def test_resume_skips_finished_shards_and_refuses_another_producer(tmp_path):
    teacher, data = make_teacher(), FakeData()
    path = write(tmp_path, teacher, data, [2])
    before = FeatureStore.open(path).read_range(0, len(QIDS))

    def unused(ids):
        raise AssertionError("a finished shard was recomputed")

    cache_teacher(teacher, unused, QIDS, path, layers=[2], max_question_length=MAXQ,
                  max_regions=MAXR, items_per_chunk=2, items_per_shard=4,
                  producer={"model": "tiny"})
    (path / "_pkd" / "done" / "shard-000001.json").unlink()
    calls = []
    cache_teacher(teacher, lambda ids: calls.append(list(ids)) or data.teacher_batch(ids), QIDS,
                  path, layers=[2], max_question_length=MAXQ, max_regions=MAXR,
                  items_per_chunk=2, items_per_shard=4, producer={"model": "tiny"})
    assert sorted(q for c in calls for q in c) == sorted(QIDS)[4:8]  # shard 1 only
    after = FeatureStore.open(path).read_range(0, len(QIDS))
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(StoreMismatch, match="producer.model"):
        cache_teacher(teacher, data.teacher_batch, QIDS, path, layers=[2],
                      max_question_length=MAXQ, max_regions=MAXR, items_per_chunk=2,
                      items_per_shard=4, producer={"model": "other"})


def test_bad_layers_question_length_and_trim_raise(tmp_path):
    teacher, data = make_teacher(), FakeData()
    with pytest.raises(PkdError, match="attention layers"):
        write(tmp_path, teacher, data, [3])
    with pytest.raises(PkdError, match="max_question_length=4"):
        cache_teacher(teacher, data.teacher_batch, QIDS, tmp_path / "q.zarr", layers=[2],
                      max_question_length=MAXQ - 1, max_regions=MAXR)
    arrays = {"teacher_logits": np.zeros((1, 2)), "teacher_attentions": np.zeros((1, 1, 5, 5)),
              "teacher_hidden": np.zeros((1, 5, 3)),
              "teacher_token_mask": np.array([[1, 1, 0, 1, 0]], dtype=np.uint8)}
    assert trim_teacher(arrays, 4)["teacher_attentions"].shape == (1, 1, 4, 4)
    with pytest.raises(PkdError, match="beyond"):
        trim_teacher(arrays, 3)
    with pytest.raises(PkdError, match="only 5"):
        trim_teacher(arrays, 6)


def test_batches_by_id_maps_question_ids_to_positions():
    class Split:
        name, question_ids = "train", np.array([30, 10, 20])

    class Batches:
        split = Split()

        def __getitem__(self, positions):
            return {"question_id": self.split.question_ids[positions]}

    get = batches_by_id(Batches())
    assert get(np.array([10, 20, 30]))["question_id"].tolist() == [10, 20, 30]
    with pytest.raises(PkdError, match="question 99 is not in split 'train'"):
        get(np.array([10, 99]))


def test_non_finite_teacher_outputs_are_recorded_and_reported(tmp_path, capsys):
    """A teacher whose outputs overflow float16 (or are NaN) must not write a 'complete' store
    of inf: the questions are recorded as failed and the count is said once."""
    teacher, data = make_teacher(), FakeData()
    with torch.no_grad():
        teacher.head[-1].bias.fill_(1e6)  # logits beyond float16's ±65504
    path = write(tmp_path, teacher, data, [2])
    store = FeatureStore.open(path)
    assert not store.ok.any()
    assert f"{len(QIDS)} questions with non-finite teacher outputs" in capsys.readouterr().err
