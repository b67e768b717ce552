"""Cross-modal predictors: shapes, padding invariance, gradients through the frozen head."""

from __future__ import annotations

import pytest
import torch

from pkd.train.foundation_head import FoundationHead
from pkd.train.models.predictors import PREDICTED_TEXT, PREDICTED_VISION, CrossModalPredictors

torch.set_num_threads(1)

B, L, N, WORDS, D_R = 3, 5, 4, 30, 12


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    qmask = torch.arange(L)[None] < torch.tensor([5, 3, 1])[:, None]
    rmask = torch.arange(N)[None] < torch.tensor([4, 2, 3])[:, None]
    return {"question_tokens": torch.randint(1, WORDS, (B, L), generator=g) * qmask,
            "question_mask": qmask, "region_features": torch.randn(B, N, D_R, generator=g),
            "region_geometry": torch.rand(B, N, 6, generator=g), "region_mask": rmask}


def predictors(**kw) -> CrossModalPredictors:
    torch.manual_seed(0)
    args = {"vision_tokens": 7, "vision_dim": 64, "text_tokens": 9, "text_dim": 64}
    return CrossModalPredictors(WORDS, L, D_R, hidden=16, heads=2, layers=2, **{**args, **kw})


def test_shapes():
    out = predictors(vision_dim=10, text_dim=11)(make_batch())
    assert out[PREDICTED_VISION].shape == (B, 7, 10)
    assert out[PREDICTED_TEXT].shape == (B, 9, 11)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_padding_never_changes_the_output():
    p = predictors().eval()
    batch = make_batch()
    noisy = dict(batch)
    noisy["question_tokens"] = batch["question_tokens"] + (~batch["question_mask"]) * 7
    noisy["region_features"] = batch["region_features"] + (~batch["region_mask"])[..., None] * 5.0
    a, b = p(batch), p(noisy)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_each_predictor_reads_both_modalities():
    p = predictors().eval()
    batch = make_batch()
    other_q = dict(batch, question_tokens=torch.roll(batch["question_tokens"], 1, 0),
                   question_mask=torch.roll(batch["question_mask"], 1, 0))
    other_r = dict(batch, region_features=batch["region_features"] * -1)
    base = p(batch)
    for changed in (p(other_q), p(other_r)):
        for key in base:
            assert not torch.allclose(base[key], changed[key])


def test_cross_inputs_predict_each_side_from_the_other_modality_only():
    """``inputs="cross"``: ṽ = P_v(q) ignores the regions, t̃ = P_t(r) ignores the question."""
    p = predictors(inputs="cross").eval()
    batch = make_batch()
    other_q = dict(batch, question_tokens=torch.roll(batch["question_tokens"], 1, 0),
                   question_mask=torch.roll(batch["question_mask"], 1, 0))
    other_r = dict(batch, region_features=batch["region_features"] * -1)
    base, q, r = p(batch), p(other_q), p(other_r)
    torch.testing.assert_close(base[PREDICTED_VISION], r[PREDICTED_VISION])  # no regions
    torch.testing.assert_close(base[PREDICTED_TEXT], q[PREDICTED_TEXT])  # no words
    assert not torch.allclose(base[PREDICTED_VISION], q[PREDICTED_VISION])
    assert not torch.allclose(base[PREDICTED_TEXT], r[PREDICTED_TEXT])
    with pytest.raises(ValueError, match="'both' or 'cross'"):
        predictors(inputs="image")


def test_too_many_words():
    batch = make_batch()
    batch["question_tokens"] = torch.cat([batch["question_tokens"]] * 2, 1)
    with pytest.raises(ValueError, match="exceed the predictors' 5 positions"):
        predictors()(batch)


@pytest.mark.parametrize("family", ["clip", "blip"])
def test_gradients_flow_through_the_frozen_head_into_the_predictors(family, request):
    head = FoundationHead.from_pretrained(request.getfixturevalue(f"tiny_{family}_dir"))
    p = predictors()
    out = p(make_batch())
    mask = torch.ones(B, 9, dtype=torch.bool)
    score = head(out[PREDICTED_VISION], out[PREDICTED_TEXT], mask)  # M(ṽ, t̃)
    score.sum().backward()
    assert p.vision.proj.weight.grad.abs().sum() > 0 and p.text.proj.weight.grad.abs().sum() > 0
    assert p.word_embedding.weight.grad.abs().sum() > 0
    assert all(w.grad is None for w in head.parameters())


def test_a_null_key_lets_p_v_tell_one_region_from_two_copies_of_it():
    """Softmax cross-attention averages the regions: the same region twice gives the same ṽ as
    once (it cannot count). With ``null_key`` the weight left on the learned null token falls
    as copies are added, so ṽ changes."""
    batch = make_batch()
    one = {**batch, "region_mask": torch.zeros(B, N, dtype=torch.bool)}
    one["region_mask"][:, 0] = True
    two = {**one, "region_mask": one["region_mask"].clone()}
    two["region_mask"][:, 1] = True
    for key in ("region_features", "region_geometry"):
        two[key] = batch[key].clone()
        two[key][:, 1] = two[key][:, 0]  # region 1 is a copy of region 0
    plain, counting = predictors().eval(), predictors(null_key=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(one)[PREDICTED_VISION], plain(two)[PREDICTED_VISION])
        assert not torch.allclose(counting(one)[PREDICTED_VISION],
                                  counting(two)[PREDICTED_VISION], atol=1e-4)
    assert sum(p.numel() for p in counting.parameters()) \
        == sum(p.numel() for p in plain.parameters()) + 2 * 2 * 16  # one c_0 per block
