"""Stores: chunk-shuffled sampling, padding masks, the batch dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkd.stores import (
    ArraySpec,
    ChunkShuffleSampler,
    FeatureStore,
    StoreBatchDataset,
    StoreSpec,
    StoreWriter,
    pad_batch,
)

torch.set_num_threads(1)


def positions(sampler) -> list[int]:
    return [p for batch in sampler for p in batch]


def test_every_position_once_and_few_chunks_per_batch():
    rows = np.arange(4000)
    sampler = ChunkShuffleSampler(rows, batch_size=64, items_per_chunk=16, window_chunks=4, seed=3)
    got = positions(sampler)
    assert sorted(got) == list(range(4000))
    # a window holds 4 chunks = 64 positions, so a batch of 64 spans <= 2 windows = 8 chunks
    per_batch = [len(np.unique(rows[b] // 16)) for b in sampler]
    assert max(per_batch) <= 8
    shuffled = np.random.default_rng(0).permutation(4000)[:64]
    assert len(np.unique(shuffled // 16)) > 40  # item-level shuffling would touch ~60 chunks
    assert got[:64] != list(range(64))  # and it is shuffled


def test_positions_index_rows_with_duplicates_and_gaps():
    rows = np.repeat(np.arange(0, 800, 2), 3)  # 3 questions per image, every other store row
    sampler = ChunkShuffleSampler(rows, batch_size=32, items_per_chunk=16, window_chunks=2, seed=0)
    assert sorted(positions(sampler)) == list(range(1200))
    # a chunk holds 8 images = 24 positions, a window 48: a batch of 32 spans <= 2 windows, 4 chunks
    assert max(len(np.unique(rows[b] // 16)) for b in sampler) <= 4


def test_deterministic_per_seed_and_epoch():
    rows = np.arange(500)

    def order(seed, epoch):
        s = ChunkShuffleSampler(rows, batch_size=50, items_per_chunk=10, seed=seed)
        s.set_epoch(epoch)
        return positions(s)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_no_shuffle_is_sequential_and_drop_last():
    s = ChunkShuffleSampler(np.arange(10), batch_size=4, items_per_chunk=2, shuffle=False)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(s) == 3
    s = ChunkShuffleSampler(np.arange(10), batch_size=4, items_per_chunk=2, shuffle=False,
                            drop_last=True)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(s) == 2


def test_ddp_shares_disjoint_equal_and_padded():
    rows = np.arange(1000)
    shares = []
    for rank in range(3):
        s = ChunkShuffleSampler(rows, batch_size=64, items_per_chunk=16, seed=5, rank=rank,
                                world_size=3)
        s.set_epoch(2)
        shares.append(positions(s))
        assert len(list(s)) == len(s) == 6  # 334 per rank -> 6 batches
    assert [len(x) for x in shares] == [334, 334, 334]  # 1000 padded to 1002
    everything = shares[0] + shares[1] + shares[2]
    assert set(everything) == set(range(1000))
    assert len(everything) - len(set(everything)) == 2  # only the 2 padding repeats
    even = [positions(ChunkShuffleSampler(np.arange(999), 64, 16, rank=r, world_size=3))
            for r in range(3)]
    assert not set(even[0]) & set(even[1]) and not set(even[1]) & set(even[2])


def test_pad_batch_trims_and_masks():
    feats = np.arange(3 * 4 * 2).reshape(3, 4, 2)
    out = pad_batch({"region_features": feats, "region_geometry": feats * 2,
                     "num_regions": np.array([2, 0, 1])},
                    "num_regions", ["region_features", "region_geometry"])
    assert out["region_features"].shape == (3, 2, 2) and out["region_geometry"].shape == (3, 2, 2)
    np.testing.assert_array_equal(out["region_features"], feats[:, :2])
    np.testing.assert_array_equal(out["region_mask"], [[True, True], [False, False], [True, False]])
    assert list(out["num_regions"]) == [2, 0, 1]
    empty = pad_batch({"text_tokens": feats, "num_tokens": np.zeros(3, int)}, "num_tokens",
                      ["text_tokens"])
    assert empty["text_tokens"].shape == (3, 1, 2) and not empty["text_mask"].any()


@pytest.fixture
def store(tmp_path):
    spec = StoreSpec("regions", "image_id",
                     (ArraySpec("region_features", (5, 3), "float16"),
                      ArraySpec("num_regions", (), "int32")),
                     {"model": "m"}, {"feature_dim": 3, "max_regions": 5}, items_per_chunk=4,
                     items_per_shard=8)
    ids = np.arange(100, 140)
    with StoreWriter(tmp_path / "r.zarr", spec, ids) as writer:
        for k in writer.pending():
            i = writer.shard_ids(k)
            feats = np.broadcast_to(i[:, None, None], (len(i), 5, 3)).astype(np.float16)
            writer.write_shard(k, {"region_features": feats,
                                   "num_regions": (i % 4).astype(np.int32)})
    return FeatureStore.open(tmp_path / "r.zarr")


def test_store_batch_dataset_with_dataloader(store):
    rows = store.rows_of([139, 101, 101, 120, 107])
    ds = StoreBatchDataset(store, rows=rows, pad={"num_regions": ["region_features"]})
    sampler = ChunkShuffleSampler(ds.rows, batch_size=2, items_per_chunk=4, seed=0)
    loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=1)
    seen = []
    for batch in loader:
        assert batch["region_features"].dtype == torch.float32
        n = int(batch["num_regions"].max().clamp(min=1))
        assert batch["region_features"].shape[1:] == (n, 3) and batch["region_mask"].shape[1] == n
        assert (batch["region_features"][:, 0, 0] == batch["image_id"].float()).all()
        assert (batch["region_mask"].sum(1) == batch["num_regions"]).all()
        seen += batch["image_id"].tolist()
    assert sorted(seen) == [101, 101, 107, 120, 139]


def test_store_pickles_without_open_arrays(store):
    import pickle

    store.read([0], ["num_regions"])  # opens an array handle
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read([3, 0, 3])["num_regions"],
                                  store.read([3, 0, 3])["num_regions"])


def test_split_smaller_than_a_batch_gives_one_smaller_batch():
    """drop_last never drops the only batch: 143 questions, batch 256 -> one batch of 143."""
    s = ChunkShuffleSampler(np.arange(143), batch_size=256, items_per_chunk=16, drop_last=True)
    assert len(s) == 1 and [sorted(b) for b in s] == [list(range(143))]
    # with a full batch available the short rest is still dropped
    s = ChunkShuffleSampler(np.arange(300), batch_size=256, items_per_chunk=16, drop_last=True)
    assert len(s) == len(list(s)) == 1 and len(next(iter(s))) == 256
    assert len(ChunkShuffleSampler(np.arange(0), 4, 2, drop_last=True)) == 0


@pytest.mark.parametrize(("m", "world"), [(143, 2), (143, 4), (5, 4), (1, 2), (511, 2)])
def test_small_split_ddp_ranks_take_the_same_steps(m, world):
    """Under DDP (global batch 256 x world) every rank gets the same number of equal batches,
    together covering every position."""
    shares = []
    for rank in range(world):
        s = ChunkShuffleSampler(np.arange(m), 256, 16, seed=1, drop_last=True, rank=rank,
                                world_size=world)
        batches = list(s)
        assert len(batches) == len(s) == 1
        shares.append(batches[0])
    assert len({len(b) for b in shares}) == 1 and len(shares[0]) == -(-m // world)
    assert set().union(*map(set, shares)) == set(range(m))
