"""DistillVLM task: online teacher == cached signals, frozen teacher, queue hygiene, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from train_fixtures import sharpen

from pkd.errors import PkdError
from pkd.train.checkpoint import save_checkpoint
from pkd.train.config import DistillConfig, MethodConfig, ModelConfig, TrainConfig
from pkd.train.losses.vqa import VQALoss
from pkd.train.models import build_model
from pkd.train.tasks import DistillVLMTask, TeacherAdaptTask, build_task
from pkd.train.tasks.distillvlm import load_teacher, teacher_signals, teacher_view

torch.set_num_threads(1)

WORDS, ANSWERS, S_DIM, T_DIM = 30, 7, 12, 20  # student / teacher region feature sizes differ
B, L, N = 3, 5, 4


def fusion(hidden: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(arch="fusion", hidden_size=hidden, num_layers=layers, num_heads=heads,
                       intermediate_size=2 * hidden, max_positions=16, dropout=0.0,
                       classifier_dropout=0.0)


STUDENT, TEACHER = fusion(16, 2, 2), fusion(24, 3, 4)  # head counts differ: averaged maps


def config(online: bool, mapping: str = "last", queue_size: int = 32, **weights) -> TrainConfig:
    distill = DistillConfig(teacher_model=TEACHER, queue_size=queue_size, nce_dim=8, tau=0.1,
                            attention_layers=mapping, online_teacher=online, **weights)
    return TrainConfig(model=STUDENT, method=MethodConfig(name="distillvlm", distill=distill))


def make_batch(seed: int, lengths=(5, 3, 1), counts=(4, 2, 3)) -> dict:
    g = torch.Generator().manual_seed(seed)
    qmask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]  # (B, L)
    rmask = torch.arange(N)[None] < torch.tensor(counts)[:, None]  # (B, N)
    geometry = torch.rand(B, N, 6, generator=g)  # same boxes for teacher and student
    return {
        "question_id": torch.arange(B) + 100 * seed,
        "question_tokens": torch.randint(2, WORDS, (B, L), generator=g) * qmask,
        "question_mask": qmask,
        "targets": torch.rand(B, ANSWERS, generator=g),
        "region_features": torch.randn(B, N, S_DIM, generator=g),
        "region_geometry": geometry,
        "region_mask": rmask,
        "teacher_region_features": torch.randn(B, N, T_DIM, generator=g),
        "teacher_region_geometry": geometry.clone(),
        "teacher_region_mask": rmask.clone(),
    }


def make_teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return sharpen(build_model(TEACHER, WORDS, ANSWERS, T_DIM), 5)


def online_task(mapping: str = "last", **kw) -> DistillVLMTask:
    torch.manual_seed(0)
    student = sharpen(build_model(STUDENT, WORDS, ANSWERS, S_DIM), 6)
    return build_task(config(True, mapping, **kw), student, teacher=make_teacher())


def cached_twin(task: DistillVLMTask, mapping: str = "last") -> DistillVLMTask:
    """A cached-teacher task with the same student, heads and queue as ``task``."""
    twin = build_task(config(False, mapping), copy.deepcopy(task.model),
                      cached_layers=task.cached_layers)
    twin.load_state_dict(task.state_dict())
    return twin


def with_cache(batch: dict, task: DistillVLMTask) -> dict:
    return {**batch, **teacher_signals(task.teacher, teacher_view(batch), task.cached_layers)}


LOSSES = ("loss", "vqa_loss", "att_loss", "nce_loss", "kd_loss")


@pytest.mark.parametrize("mapping", ["last", "uniform"])
def test_online_and_cached_teacher_give_the_same_losses(mapping):
    online = online_task(mapping)
    cached = cached_twin(online, mapping)
    assert online.cached_layers == ([2] if mapping == "last" else [1, 2])
    for seed in (1, 2):  # step 2 uses the queue filled by step 1
        batch = make_batch(seed)
        a, b = online(batch), cached(with_cache(batch, online))
        for key in LOSSES:
            assert torch.allclose(a[key], b[key], atol=1e-6), key
        assert torch.equal(online.queue.vectors, cached.queue.vectors)
    a["loss"].backward()
    b["loss"].backward()
    for (name, p), q in zip(online.named_parameters(), cached.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_cached_single_layer_may_come_without_the_layer_axis():
    online = online_task()
    cached = cached_twin(online)
    batch = with_cache(make_batch(1), online)
    batch["teacher_attentions"] = batch["teacher_attentions"][:, 0]  # (B, H, T, T) as stored
    assert torch.allclose(online(make_batch(1))["att_loss"], cached(batch)["att_loss"])


def test_total_is_the_weighted_sum():
    task = online_task(alpha=0.5, beta=2.0, gamma=0.25)
    task(make_batch(1))  # fill the queue so L_nce is not 0
    out = task(make_batch(2))
    assert out["nce_loss"].item() > 0.1 and out["att_loss"].item() > 0.01
    total = out["vqa_loss"] + 0.5 * out["att_loss"] + 2.0 * out["nce_loss"] + 0.25 * out["kd_loss"]
    assert torch.allclose(out["loss"], total)
    assert torch.allclose(out["vqa_loss"], VQALoss()(out["logits"], make_batch(2)["targets"]))


def test_teacher_is_frozen_and_outside_parameters_and_state_dict():
    task = online_task()
    teacher = task.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = task.model.region_proj.weight.clone()
    assert not any(p is q for p in task.parameters() for q in teacher.parameters())
    assert not any(k.startswith("teacher") for k in task.state_dict())
    opt = torch.optim.AdamW(task.parameters(), lr=1e-2)
    task.train()
    assert not teacher.training
    for seed in (1, 2, 3):
        opt.zero_grad()
        task(make_batch(seed))["loss"].backward()
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(student_before, task.model.region_proj.weight)
    assert task.nce.teacher_proj.weight.grad.abs().sum() > 0  # W_t is trained (CRD practice)
    task.to(torch.float64)  # .to() reaches the unregistered teacher too
    assert next(teacher.parameters()).dtype == torch.float64


def test_only_valid_teacher_tokens_are_enqueued_and_negatives_precede_the_enqueue():
    task = online_task(queue_size=64)  # 2 batches of 24 valid tokens fit
    task(make_batch(1))
    batch = make_batch(2)
    before = task.queue.negatives()
    signals = teacher_signals(task.teacher, teacher_view(batch), task.cached_layers)
    mask = signals["teacher_token_mask"]
    out = task(batch)
    student = task.model(batch, output_hidden_states=True)["hidden_states"][-1]
    expected = task.nce(student, signals["teacher_hidden"], mask, before)
    assert torch.allclose(out["nce_loss"], expected)
    valid = signals["teacher_hidden"][mask]  # (V, d_t)
    n_first = int(before.shape[0])
    assert n_first == len(valid) == 24  # 5+3+1 words + 4+2+3 regions + 3 x ([CLS], [SEP])
    assert int(task.queue.count) == 2 * 24
    assert torch.equal(task.queue.vectors[n_first:n_first + len(valid)], valid)
    task.eval()
    count = int(task.queue.count)
    task(make_batch(3))
    assert int(task.queue.count) == count  # evaluation does not enqueue


def test_misaligned_teacher_tokens_raise():
    task = online_task()
    batch = make_batch(1)
    batch["teacher_region_mask"] = batch["teacher_region_mask"].clone()
    batch["teacher_region_mask"][0, 3] = False  # the teacher lost a box of question 0
    with pytest.raises(PkdError, match="differ for 1 of 3 questions"):
        task(batch)
    cached = cached_twin(task)
    short = with_cache(make_batch(1), task)
    short["teacher_token_mask"] = short["teacher_token_mask"][:, :-1]
    with pytest.raises(PkdError, match="do not line up"):
        cached(short)


def test_missing_teacher_inputs_and_layers_raise():
    student = build_model(STUDENT, WORDS, ANSWERS, S_DIM)
    cached = build_task(config(False), student)
    with pytest.raises(PkdError, match="data.teacher"):
        cached(make_batch(1))
    with pytest.raises(PkdError, match="needs \\[2\\]"):
        build_task(config(False), student, cached_layers=[0])
    with pytest.raises(PkdError, match="teacher_checkpoint"):
        build_task(config(True), student)
    online = online_task()
    batch = make_batch(1)
    del batch["teacher_region_features"]
    with pytest.raises(PkdError, match="teacher_region_features"):
        online(batch)


def test_build_task_refuses_non_fusion_and_foundation_tokens():
    cfg = config(False)
    student = build_model(STUDENT, WORDS, ANSWERS, S_DIM)
    cfg.model = ModelConfig(arch="updn", hidden_size=16, word_dim=8)
    with pytest.raises(PkdError, match="fusion"):
        build_task(cfg, student)
    cfg.model = fusion(16, 2, 2)
    cfg.model.use_foundation_features = True
    with pytest.raises(PkdError, match="use_foundation_features"):
        build_task(cfg, student)


def test_teacher_adapt_is_the_vqa_loss_on_the_teacher():
    teacher = make_teacher()
    cfg = TrainConfig(method=MethodConfig(name="teacher-adapt"))
    task = build_task(cfg, teacher)
    assert isinstance(task, TeacherAdaptTask)
    batch = teacher_view(make_batch(1))
    out = task(batch)
    assert torch.allclose(out["loss"], VQALoss()(teacher(batch)["logits"], batch["targets"]))


def test_load_teacher_from_model_and_task_checkpoints(tmp_path):
    teacher = make_teacher()
    save_checkpoint(tmp_path / "best", teacher.state_dict(), {"step": 1})
    task_weights = {f"model.{k}": v for k, v in teacher.state_dict().items()}
    save_checkpoint(tmp_path / "ckpt", task_weights, {"step": 2})
    for root in ("best", "ckpt"):
        cfg = DistillConfig(teacher_model=TEACHER, teacher_checkpoint=str(tmp_path / root))
        loaded = load_teacher(cfg, WORDS, ANSWERS, T_DIM)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        for k, v in teacher.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    cfg = DistillConfig(teacher_model=TEACHER, teacher_checkpoint=str(tmp_path / "best"))
    with pytest.raises(PkdError, match="do not fit"):
        load_teacher(cfg, WORDS, ANSWERS, T_DIM + 1)
    with pytest.raises(PkdError, match="not set"):
        load_teacher(DistillConfig(teacher_model=TEACHER), WORDS, ANSWERS, T_DIM)


def own_detector_batch(seed: int, extra: int = 2) -> dict:
    """``make_batch`` with the teacher on its own detector: ``N + extra`` other boxes."""
    g = torch.Generator().manual_seed(100 + seed)
    batch = make_batch(seed)
    n = N + extra
    batch["teacher_region_features"] = torch.randn(B, n, T_DIM, generator=g)
    batch["teacher_region_geometry"] = torch.rand(B, n, 6, generator=g)
    batch["teacher_region_mask"] = torch.arange(n)[None] < torch.tensor([6, 1, 5])[:, None]
    return batch


def test_match_tokens_cuts_to_the_common_length_and_intersects_the_masks():
    from pkd.train.tasks.distillvlm import match_tokens

    g = torch.Generator().manual_seed(0)
    s_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)  # T_s = 4
    t_mask = torch.tensor([[1, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)  # T_t = 6
    student = {"attentions": [torch.rand(2, 2, 4, 4, generator=g)],
               "hidden": torch.rand(2, 4, 3, generator=g), "mask": s_mask}
    teacher = {"teacher_attentions": torch.rand(2, 1, 3, 6, 6, generator=g),
               "teacher_hidden": torch.rand(2, 6, 5, generator=g), "teacher_token_mask": t_mask,
               "teacher_logits": torch.zeros(2, 7)}
    s, t, mask = match_tokens(student, teacher, "index")
    assert mask.tolist() == [[True, False, True, False], [True, True, False, False]]
    assert torch.equal(t["teacher_attentions"], teacher["teacher_attentions"][..., :4, :4])
    assert torch.equal(t["teacher_hidden"], teacher["teacher_hidden"][:, :4])
    assert torch.equal(s["attentions"][0], student["attentions"][0])  # already T = 4
    assert t["teacher_logits"] is teacher["teacher_logits"]
    with pytest.raises(PkdError, match="do not line up"):
        match_tokens(student, teacher, "aligned")


def test_unaligned_ablation_runs_on_the_teachers_own_boxes_and_equals_aligned_on_shared_ones():
    aligned, index = online_task(), online_task(alignment="index")
    batch = make_batch(1)  # shared boxes: same tokens, so the same losses
    a, b = aligned(batch), index(batch)
    for key in LOSSES:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    own = own_detector_batch(2)
    with pytest.raises(PkdError, match="do not line up"):
        aligned(own)
    out = index(own)  # tokens paired by position, the teacher's two extra boxes cut
    assert torch.isfinite(out["loss"]) and out["att_loss"] > 0
    out["loss"].backward()
    assert all(p.grad is not None for p in index.model.parameters() if p.requires_grad)
