"""PKD tasks: stage 1 and stage 2 run forward + backward for each ablation, return every term,
keep the foundation head frozen, fill the memory, and the trained model runs alone at test time."""

from __future__ import annotations

import itertools

import pytest
import torch

from pkd.errors import PkdError
from pkd.train.checkpoint import save_checkpoint
from pkd.train.config import MethodConfig, ModelConfig, PKDConfig, TrainConfig
from pkd.train.foundation_head import FoundationHead
from pkd.train.models import build_model
from pkd.train.tasks import PKDPredictorTask, PKDSetup, PKDTask, build_task
from pkd.train.tasks.pkd import Predicted, attach_pkd_fusion, pooled_features

torch.set_num_threads(1)

B, L, N, WORDS, ANSWERS, D_R, P, LT, LB = 4, 5, 4, 30, 7, 12, 65, 12, 6  # LB: batch text length
UPDN = ModelConfig(arch="updn", hidden_size=16, word_dim=8, dropout=0.0, classifier_dropout=0.0)
FUSION = ModelConfig(arch="fusion", hidden_size=16, num_layers=1, num_heads=2,
                     intermediate_size=32, max_positions=16, dropout=0.0, classifier_dropout=0.0)
SMALL = {"predictor_hidden": 16, "predictor_heads": 2, "predictor_layers": 1, "memory_size": 16}
STAGE1_TERMS = {"loss", "itm_loss", "div_loss"}
STAGE2_ALL = {"loss", "vqa_loss", "mkd_loss", "logits"}
# distinct loss weights (none 1 = the fixed weight of L_vqa), so each term's weight is checked
LAMBDAS = {"lambda_mkd": 0.25, "lambda_itm": 0.5, "lambda_div": 3.0}
WEIGHTS = {"vqa_loss": 1.0, "mkd_loss": 0.25, "itm_loss": 0.5, "div_loss": 3.0,
           "entropy_loss": 0.36}


@pytest.fixture(scope="module", params=["clip", "blip"])
def head(request) -> FoundationHead:
    return FoundationHead.from_pretrained(request.getfixturevalue(f"tiny_{request.param}_dir"))


@pytest.fixture(scope="module")
def clip_head(tiny_clip_dir) -> FoundationHead:
    return FoundationHead.from_pretrained(tiny_clip_dir)


def setup_for(head: FoundationHead | None) -> PKDSetup:
    return PKDSetup(head, num_words=WORDS, max_words=L, region_dim=D_R, vision_tokens=P,
                    text_tokens=LT)


def make_batch(seed: int = 0) -> dict:
    """Items 0 and 1 show the same image (same cached vision features)."""
    g = torch.Generator().manual_seed(seed)
    qmask = torch.arange(L)[None] < torch.tensor([5, 3, 1, 4])[:, None]
    rmask = torch.arange(N)[None] < torch.tensor([4, 2, 3, 4])[:, None]
    tmask = torch.arange(LB)[None] < torch.tensor([6, 4, 3, 5])[:, None]
    vision, image_embeds = torch.randn(B, P, 64, generator=g), torch.randn(B, 64, generator=g)
    vision[1], image_embeds[1] = vision[0], image_embeds[0]
    ids = torch.randint(5, 60, (B, LB), generator=g) * tmask
    ids[:, 0] = 2  # [CLS]
    return {"question_tokens": torch.randint(1, WORDS, (B, L), generator=g) * qmask,
            "question_mask": qmask, "targets": torch.rand(B, ANSWERS, generator=g),
            "region_features": torch.randn(B, N, D_R, generator=g),
            "region_geometry": torch.rand(B, N, 6, generator=g), "region_mask": rmask,
            "vision_tokens": vision, "image_embeds": image_embeds,
            "text_tokens": torch.randn(B, LB, 64, generator=g) * tmask[..., None],
            "text_mask": tmask, "text_embeds": torch.randn(B, 64, generator=g), "input_ids": ids}


def config(name: str, model: ModelConfig = UPDN, **pkd) -> TrainConfig:
    return TrainConfig(model=model, method=MethodConfig(
        name=name, pkd=PKDConfig(**{**SMALL, **LAMBDAS, **pkd})))


def assert_weighted_sum(out: dict, terms: set[str]) -> None:
    """``loss`` is the sum of exactly ``terms``, each times its own weight (:data:`WEIGHTS`), and
    the check can tell: dropping any term or swapping any two weights moves the total by more
    than 10x the tolerance of ``assert_close`` (float32: 1e-5 + 1.3e-6 |loss|)."""
    torch.testing.assert_close(out["loss"], sum(WEIGHTS[k] * out[k] for k in terms))
    value = {k: out[k].item() for k in terms}
    margin = 10 * (1e-5 + 1.3e-6 * abs(out["loss"].item()))
    assert all(abs(WEIGHTS[k] * value[k]) > margin for k in terms), value
    for a, b in itertools.combinations(sorted(terms), 2):
        assert abs((WEIGHTS[a] - WEIGHTS[b]) * (value[a] - value[b])) > margin, (a, b, value)


def vqa_model(cfg: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg.model, WORDS, ANSWERS, D_R)


def stage1(head: FoundationHead, tmp_path) -> tuple[PKDPredictorTask, str]:
    """A stage-1 task after one optimizer step, saved as a run folder's checkpoint root."""
    cfg = config("pkd-predictors")
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(head))
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    task(make_batch())["loss"].backward()
    opt.step()
    root = tmp_path / "stage1" / "ckpt"
    save_checkpoint(root, task.state_dict(), {"step": 1})
    return task, str(root.parent)


@pytest.fixture(scope="module")
def stage1_dir(head, tmp_path_factory) -> str:
    return stage1(head, tmp_path_factory.mktemp("pkd"))[1]


@pytest.mark.parametrize("div", ["kl", "cosine", "mse", "mmd"])
def test_stage1_forward_backward(head, div):
    cfg = config("pkd-predictors", divergence=div)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(head))
    assert isinstance(task, PKDPredictorTask)
    out = task(make_batch())
    assert set(out) == STAGE1_TERMS and all(torch.isfinite(v) for v in out.values())
    assert_weighted_sum(out, {"itm_loss", "div_loss"})
    out["loss"].backward()
    grads = [p.grad for p in task.parameters()]
    assert grads and all(g is not None for g in grads)  # every predictor weight learns
    assert all(p.grad is None for p in head.parameters())
    assert not any(k.startswith("head") for k in task.state_dict())  # head never saved


def test_stage1_pooled_mode(clip_head):
    cfg = config("pkd-predictors", predictor_tokens=3)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    out = task(make_batch())
    assert torch.isfinite(out["loss"]) and task.predictors.vision.queries.shape[0] == 3


def test_divergence_on_embeddings_compares_what_the_head_reads(head):
    """``divergence_on=embeddings``: ``L_div = D(e_v, e_I) + D(e_t, e_Q)`` with the head's
    embeddings of ṽ, t̃ against the cached ones; the cached tokens no longer enter it."""
    from pkd.train.tasks.pkd import predicted_view

    cfg = config("pkd-predictors", predictor_tokens=3, divergence="cosine",
                 divergence_on="embeddings")
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(head)).eval()
    batch = make_batch()
    with torch.no_grad():
        pred = predicted_view(task.predictors(batch), batch, tokenwise=False)
        e_v, e_t = head.embed_image(pred.vision), head.embed_text(pred.text, pred.text_mask)
        cos = torch.nn.functional.cosine_similarity
        by_hand = ((1 - cos(e_v, batch["image_embeds"], dim=-1)).mean()
                   + (1 - cos(e_t, batch["text_embeds"], dim=-1)).mean())
        out = task(batch)
        torch.testing.assert_close(out["div_loss"], by_hand)
        moved = task({**batch, "vision_tokens": batch["vision_tokens"] + 1})  # L_itm reads them
        torch.testing.assert_close(moved["div_loss"], out["div_loss"])
        other = task({**batch, "image_embeds": -batch["image_embeds"]})
        assert not torch.allclose(other["div_loss"], out["div_loss"])
    out = task(batch)
    out["loss"].backward()
    assert all(p.grad is not None for p in task.predictors.parameters())


def test_stage1_blip_needs_input_ids(tiny_blip_dir):
    head = FoundationHead.from_pretrained(tiny_blip_dir)
    cfg = config("pkd-predictors")
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(head))
    batch = make_batch()
    del batch["input_ids"]
    with pytest.raises(PkdError, match="no 'input_ids'"):
        task(batch)


ABLATIONS = {  # overrides -> loss terms
    "full": ({}, STAGE2_ALL),
    "finetune": ({"finetune_predictors": True}, STAGE2_ALL | {"itm_loss", "div_loss"}),
    "no_memory": ({"use_memory": False}, STAGE2_ALL),
    "no_model_kd": ({"use_model_kd": False}, STAGE2_ALL - {"mkd_loss"}),
    "no_predictors": ({"use_predictors": False, "learnable_slots": 3}, STAGE2_ALL - {"mkd_loss"}),
}


@pytest.mark.parametrize("arch", [UPDN, FUSION], ids=["updn", "fusion"])
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_stage2_ablations_forward_backward(head, stage1_dir, arch, ablation):
    overrides, terms = ABLATIONS[ablation]
    cfg = config("pkd", arch, predictors=stage1_dir, **overrides)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(head))
    assert isinstance(task, PKDTask)
    out = task(make_batch())
    assert set(out) == terms and all(torch.isfinite(v).all() for v in out.values())
    assert_weighted_sum(out, terms - {"loss", "logits"})
    out["loss"].backward()
    assert all(p.grad is None for p in head.parameters())
    if task.predictors is not None:
        learned = [p.grad is not None for p in task.predictors.parameters()]
        assert all(learned) if task.finetune else not any(learned)
    if task.itm_head is not None:  # L_mkd trains D's ITM head and the projector
        assert task.itm_head.net[0].weight.grad.abs().sum() > 0
        assert task.projector.vision.weight.grad.abs().sum() > 0


def test_stage2_loads_stage1_predictors(clip_head, tmp_path):
    trained, stage1_dir = stage1(clip_head, tmp_path)
    cfg = config("pkd", predictors=stage1_dir)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    for name, value in trained.predictors.state_dict().items():
        torch.testing.assert_close(task.predictors.state_dict()[name], value)
    task.train()
    assert not task.predictors.training and task.model.training


def test_memory_fills_in_training_only_and_model_runs_alone(clip_head, tmp_path):
    _, stage1_dir = stage1(clip_head, tmp_path)
    cfg = config("pkd", predictors=stage1_dir)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    queue = task.fusion.memory.queue
    task.train()
    task(make_batch(0))
    assert int(queue.count) == 2 * B  # ṽ and t̃ embeddings of every valid item
    torch.testing.assert_close(queue.vectors[:B].norm(dim=-1), torch.ones(B))  # unit norm
    task(make_batch(1))
    assert int(queue.count) == 16 and int(queue.ptr) == 0  # K = 16: full, wrapped
    task.eval()
    task(make_batch(2))
    assert int(queue.count) == 16 and int(queue.ptr) == 0
    # test time: a fresh model + hook loads the state; no head, no predictors, no tokens
    state = task.model.state_dict()
    assert "feature_fusion.memory.queue.vectors" in state
    fresh = vqa_model(cfg)
    attach_pkd_fusion(fresh, cfg.method.pkd, {"embed_dim": 64})
    fresh.load_state_dict(state)
    plain = {k: v for k, v in make_batch(3).items()
             if k not in ("vision_tokens", "text_tokens", "text_mask", "input_ids")}
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(plain)["logits"], task.model(plain)["logits"])


def test_memory_at_test_false_reads_the_memory_in_training_only(clip_head, tmp_path):
    """memory_at_test=false: the same filled memory changes D's logits in training mode only;
    in eval D equals the same weights with the memory emptied."""
    _, stage1_dir = stage1(clip_head, tmp_path)
    outs = {}
    for at_test in (True, False):
        cfg = config("pkd", predictors=stage1_dir, memory_at_test=at_test)
        task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
        task.train()
        task(make_batch(0))  # fills the memory
        plain = {k: v for k, v in make_batch(3).items()
                 if k not in ("vision_tokens", "text_tokens", "text_mask", "input_ids")}
        with torch.no_grad():
            trained = task.model(plain)["logits"]
            task.model.eval()
            with_memory = task.model(plain)["logits"]
            task.fusion.memory.queue.count.zero_()  # empty memory: the fusion is the identity
            empty = task.model(plain)["logits"]
        outs[at_test] = (trained, with_memory, empty)
    t_on, eval_on, empty_on = outs[True]
    t_off, eval_off, empty_off = outs[False]
    torch.testing.assert_close(t_on, t_off)  # training: both read the memory
    assert (eval_on - empty_on).abs().max() > 1e-4  # default: the memory moves test answers
    torch.testing.assert_close(eval_off, empty_off)  # training only: it does not
    assert (t_off - eval_off).abs().max() > 1e-4


def test_pooled_features_by_hand():
    vision = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2): d_v = 2
    text = torch.tensor([[[1.0, 1.0, 1.0], [3.0, 5.0, 7.0], [9.0, 9.0, 9.0]]])  # d_t = 3
    mask = torch.tensor([[True, True, False]])  # the third text token is padding
    rows = pooled_features(Predicted(vision, text, mask), 3)
    torch.testing.assert_close(rows, torch.tensor([[2.0, 3.0, 0.0], [2.0, 3.0, 4.0]]))


def test_memory_holding_the_predicted_features_themselves(clip_head, tmp_path):
    """memory_holds=features: the rows are the token means of ṽ and t̃ (width max(d_v, d_t)),
    not unit-norm embeddings, and a fresh model sized from the store dims loads the state."""
    _, stage1_dir = stage1(clip_head, tmp_path)
    cfg = config("pkd", predictors=stage1_dir, memory_holds="features")
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    width = max(clip_head.vision_dim, clip_head.text_dim)
    queue = task.fusion.memory.queue
    assert queue.vectors.shape[1] == width
    task.train()
    batch = make_batch(0)
    pred, _ = task.predict(batch)
    task(batch)
    torch.testing.assert_close(queue.vectors[:2 * B], pooled_features(pred, width))
    fresh = vqa_model(cfg)
    dims = {"embed_dim": 64, "vision_dim": clip_head.vision_dim, "text_dim": clip_head.text_dim}
    attach_pkd_fusion(fresh, cfg.method.pkd, dims)
    fresh.load_state_dict(task.model.state_dict())
    with pytest.raises(PkdError, match="vision_dim and text_dim"):
        attach_pkd_fusion(vqa_model(cfg), cfg.method.pkd, {"embed_dim": 64})


def test_padded_items_are_not_remembered(clip_head, tmp_path):
    _, stage1_dir = stage1(clip_head, tmp_path)
    cfg = config("pkd", predictors=stage1_dir)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    batch = make_batch()
    batch["region_mask"][2] = False  # item 2 is padding
    task(batch)
    assert int(task.fusion.memory.queue.count) == 2 * (B - 1)


def test_configuration_errors(clip_head, tmp_path):
    cfg = config("pkd")
    with pytest.raises(PkdError, match="method.pkd.predictors: not set"):
        build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    cfg = config("pkd", use_predictors=False)
    with pytest.raises(PkdError, match="learnable_slots > 0"):
        build_task(cfg, vqa_model(cfg), pkd=setup_for(None))
    _, stage1_dir = stage1(clip_head, tmp_path)
    cfg = config("pkd", predictors=stage1_dir, predictor_hidden=32)
    with pytest.raises(PkdError, match="predictor weights do not fit"):
        build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    with pytest.raises(ValueError, match="needs a PKDSetup"):
        build_task(cfg, vqa_model(cfg))


def test_finetune_from_scratch_without_checkpoint(clip_head):
    cfg = config("pkd", finetune_predictors=True)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head))
    out = task(make_batch())
    assert_weighted_sum(out, {"vqa_loss", "mkd_loss", "itm_loss", "div_loss"})


def test_mkd_fraction_reads_the_first_items_pairs_only(clip_head, stage1_dir):
    """``mkd_fraction=0.5`` (B=4 -> m=2): L_mkd is BinaryKL over the 2 positives (ṽ_i, t̃_i) and
    2 negatives (ṽ_i, t̃_π(i)) of items 0, 1, with π drawn from the whole batch, and D's ITM
    pass reads 2m = 4 pairs instead of 2B = 8."""
    from pkd.train.losses.itm import negative_partners
    from pkd.train.tasks.pkd import mkd_items, predicted_view

    assert [mkd_items(4, f) for f in (0.01, 0.25, 0.5, 0.51, 1.0)] == [1, 1, 2, 3, 4]
    cfg = config("pkd", predictors=stage1_dir, mkd_fraction=0.5)
    task = build_task(cfg, vqa_model(cfg), pkd=setup_for(clip_head)).eval()
    batch = make_batch(4)
    seen = []
    itm = task.model_itm
    task.model_itm = lambda v, t, m, e: seen.append(len(v)) or itm(v, t, m, e)
    pred = predicted_view(task.predictors(batch), batch, True)
    _, embeds = task.predict(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        got = task.model_kd(pred, batch, embeds)
    torch.manual_seed(7)
    pi, valid = negative_partners(batch["image_embeds"], batch["text_embeds"])
    pi, valid = pi[:2], valid[:2]
    v, t, mask = pred.vision[:2].repeat(2, 1, 1), pred.text, pred.text_mask
    t2, m2 = torch.cat([t[:2], t[pi]]), torch.cat([mask[:2], mask[pi]])
    with torch.no_grad():
        pair_embeds = {"image_embeds": task.head.embed_image(v),
                       "text_embeds": task.head.embed_text(t2, m2)}
        want = task.mkd(itm(v, t2, m2, pair_embeds), task.head(v, t2, m2),
                        torch.cat([torch.ones_like(valid), valid]))
    assert seen == [4]
    torch.testing.assert_close(got, want)


def test_lmh_base_with_a_flat_prior_is_bce_plus_the_entropy_of_a_zero_bias(head, stage1_dir):
    """vqa_loss=lmh: p = 1/2 everywhere gives b = log(1/2 + t) - log(1/2 + t) = 0, so L_lm is
    the plain BCE of D's logits and H = H(σ(0)) = log 2; an informative prior moves L_lm."""
    import math

    from pkd.train.tasks.pkd import pkd_stage2_task

    cfg = config("pkd", predictors=stage1_dir, vqa_loss="lmh")
    batch = {**make_batch(), "question_type": torch.tensor([0, 1, 0, 1])}
    flat = torch.full((3, ANSWERS), 0.5)
    task = pkd_stage2_task(cfg, vqa_model(cfg), setup_for(head), prior=flat)
    out = task(batch)
    assert set(out) == STAGE2_ALL | {"entropy_loss"}
    bce = task.vqa(out["logits"], batch["targets"])
    torch.testing.assert_close(out["vqa_loss"], bce)
    torch.testing.assert_close(out["entropy_loss"], torch.tensor(math.log(2)))
    assert_weighted_sum(out, {"vqa_loss", "mkd_loss", "entropy_loss"})
    peaked = torch.full((3, ANSWERS), 0.01)
    peaked[:, 0] = 0.97
    mixin = pkd_stage2_task(cfg, vqa_model(cfg), setup_for(head), prior=peaked)
    biased = mixin(batch)
    assert abs(biased["vqa_loss"].item() - bce.item()) > 1e-3
    biased["loss"].backward()  # the gate learns: L_lm reaches it through g · b
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixin.lmh.parameters())
    assert not any(k.startswith("lmh.") for k in mixin.model.state_dict())  # not in best/
    with pytest.raises(ValueError, match="needs the training prior"):
        pkd_stage2_task(cfg, vqa_model(cfg), setup_for(head))
    with pytest.raises(ValueError, match="needs the training prior"):
        pkd_stage2_task(config("pkd", predictors=stage1_dir), vqa_model(cfg), setup_for(head),
                        prior=flat)


def test_model_kd_feeds_d_the_pairs_embeddings_under_its_own_input_names(clip_head, stage1_dir):
    """With ``model.foundation_inputs=predicted`` (the item reading) plus ``L_mkd``, D's pass over
    the predicted pairs reads the pairs' embeddings under the predicted names too."""
    from dataclasses import replace

    for inputs in ("real", "predicted"):
        model_cfg = replace(UPDN, use_foundation_features=True, foundation_inputs=inputs)
        cfg = config("pkd", model=model_cfg, predictors=stage1_dir)
        torch.manual_seed(0)
        model = build_model(model_cfg, WORDS, ANSWERS, D_R, 64)
        task = build_task(cfg, model, pkd=setup_for(clip_head))
        batch = make_batch()
        batch.update(predicted_image_embed=batch["image_embeds"],
                     predicted_text_embed=batch["text_embeds"])
        out = task(batch)
        assert torch.isfinite(out["mkd_loss"]) and out["mkd_loss"] > 0
        out["loss"].backward()
