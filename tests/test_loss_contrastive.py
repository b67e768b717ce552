"""Token queue semantics (by hand) and the token-wise NCE on hand-computable cases."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.train.losses.contrastive import TokenNCE
from pkd.train.losses.queue import TokenQueue

torch.set_num_threads(1)


def rows(*values: float) -> torch.Tensor:
    """Vectors (n, 2) whose first coordinate is each value (second = -value)."""
    v = torch.tensor(values, dtype=torch.float32)
    return torch.stack([v, -v], dim=1)


def firsts(t: torch.Tensor) -> list[float]:
    return t[:, 0].tolist()


def test_queue_fills_then_wraps_around():
    q = TokenQueue(4, 2)
    assert q.negatives().shape == (0, 2) and int(q.count) == 0
    q.enqueue(rows(1, 2, 3))
    assert firsts(q.negatives()) == [1, 2, 3] and int(q.ptr) == 3 and int(q.count) == 3
    q.enqueue(rows(4, 5))  # row 3 <- 4, then wraps: row 0 <- 5 (the oldest)
    assert firsts(q.vectors) == [5, 2, 3, 4] and int(q.ptr) == 1 and int(q.count) == 4
    assert torch.equal(q.vectors[:, 1], -q.vectors[:, 0])  # whole rows were written


def test_more_rows_than_the_queue_keep_the_last_ones():
    q = TokenQueue(4, 2)
    q.enqueue(rows(1))
    q.enqueue(rows(6, 7, 8, 9, 10, 11))  # written one by one from ptr 1: 6,7,8,9,10,11
    assert firsts(q.vectors) == [9, 10, 11, 8] and int(q.ptr) == 3 and int(q.count) == 4


def test_queue_matches_one_by_one_reference():
    g = torch.Generator().manual_seed(0)
    q, ref, ptr = TokenQueue(5, 3), torch.zeros(5, 3), 0
    for n in (2, 0, 7, 3, 5, 1, 12):
        x = torch.randn(n, 3, generator=g)
        q.enqueue(x)
        for v in x:
            ref[ptr], ptr = v, (ptr + 1) % 5
        assert torch.equal(q.vectors, ref) and int(q.ptr) == ptr


def test_negatives_are_a_snapshot():
    q = TokenQueue(3, 2)
    q.enqueue(rows(1, 2))
    before = q.negatives()
    q.enqueue(rows(3, 4))
    assert firsts(before) == [1, 2] and firsts(q.vectors) == [4, 2, 3]


def test_queue_is_saved_in_the_state_dict():
    q = TokenQueue(3, 2)
    q.enqueue(rows(1, 2))
    state = q.state_dict()
    assert set(state) == {"vectors", "ptr", "count"}
    fresh = TokenQueue(3, 2)
    fresh.load_state_dict(state)
    fresh.enqueue(rows(3))
    assert firsts(fresh.vectors) == [1, 2, 3] and int(fresh.count) == 3


def test_enqueue_checks_width():
    with pytest.raises(ValueError, match="expects"):
        TokenQueue(3, 2).enqueue(torch.zeros(2, 5))


def identity_nce(tau: float = 1.0) -> TokenNCE:
    nce = TokenNCE(2, 2, nce_dim=2, tau=tau)
    with torch.no_grad():
        for proj in (nce.student_proj, nce.teacher_proj):
            proj.weight.copy_(torch.eye(2))
            proj.bias.zero_()
    return nce


def test_one_token_two_negatives_by_hand():
    hs = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2): z_s = (1, 0)
    ht = torch.tensor([[[3.0, 4.0]]])  # z_t = (0.6, 0.8): positive 0.6
    negatives = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # q = (1, 0), (0, 1): 1 and 0
    mask = torch.ones(1, 1, dtype=torch.bool)
    for tau in (1.0, 0.5):
        p, n1, n2 = 0.6 / tau, 1.0 / tau, 0.0
        expected = -math.log(math.exp(p) / (math.exp(p) + math.exp(n1) + math.exp(n2)))
        loss = identity_nce(tau)(hs, ht, mask, negatives)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_empty_queue_gives_zero():
    loss = identity_nce()(torch.randn(2, 3, 2), torch.randn(2, 3, 2),
                          torch.ones(2, 3, dtype=torch.bool), torch.zeros(0, 2))
    assert loss.item() == 0.0


def test_mean_over_valid_tokens_ignores_padding():
    nce = identity_nce()
    negatives = torch.tensor([[1.0, 1.0], [-1.0, 0.5]])
    a = (torch.tensor([[[1.0, 0.2]]]), torch.tensor([[[0.3, 1.0]]]))
    b = (torch.tensor([[[-0.4, 1.0]]]), torch.tensor([[[1.0, 1.0]]]))
    one = torch.ones(1, 1, dtype=torch.bool)
    la, lb = nce(*a, one, negatives), nce(*b, one, negatives)
    # batch of 2 questions x 2 tokens: a valid, junk padding, b valid, junk padding
    junk = torch.tensor([[50.0, -3.0]])
    hs = torch.stack([torch.cat([a[0][0], junk]), torch.cat([b[0][0], junk])])  # (2, 2, 2)
    ht = torch.stack([torch.cat([a[1][0], -junk]), torch.cat([b[1][0], junk])])
    mask = torch.tensor([[True, False], [True, False]])
    assert nce(hs, ht, mask, negatives).item() == pytest.approx((la.item() + lb.item()) / 2)


def test_different_widths_train_both_heads():
    torch.manual_seed(0)
    nce = TokenNCE(student_dim=3, teacher_dim=5, nce_dim=4, tau=0.07)
    hs = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    loss = nce(hs, torch.randn(2, 4, 5), mask, torch.randn(6, 5))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert nce.student_proj.weight.grad.abs().sum() > 0
    assert nce.teacher_proj.weight.grad.abs().sum() > 0
    assert (hs.grad[~mask] == 0).all()


def test_misaligned_tokens_raise():
    with pytest.raises(ValueError, match="line up"):
        identity_nce()(torch.randn(1, 3, 2), torch.randn(1, 4, 2),
                       torch.ones(1, 3, dtype=torch.bool), torch.zeros(0, 2))


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        q = TokenQueue(5, 2)
        q.enqueue(rows(*([1, 2, 3] if rank == 0 else [4])))  # ranks enqueue different counts
        q.enqueue(rows(*([5] if rank == 0 else [6, 7])))
        torch.save({"vectors": q.vectors, "ptr": q.ptr}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_enqueue_gathers_all_ranks_in_rank_order(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # step 1 gathers [1, 2, 3 | 4], step 2 gathers [5 | 6, 7]: sequence 1..7 into 5 rows
    for result in results:
        assert firsts(result["vectors"]) == [6, 7, 3, 4, 5] and int(result["ptr"]) == 2
