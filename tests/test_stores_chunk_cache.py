"""Decoded-chunk cache: LRU eviction by bytes, and cached store reads equal uncached ones."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from test_stores_roundtrip import make_spec, write_all

from pkd.stores import FeatureStore
from pkd.stores.chunk_cache import ChunkCache


def block(n_bytes: int, fill: int = 0) -> np.ndarray:
    return np.full(n_bytes, fill, dtype=np.uint8)


def test_lru_evicts_least_recently_used_first_and_stays_under_budget():
    cache = ChunkCache(max_bytes=30)
    for key in "abc":
        cache.put(key, block(10, ord(key)))
    assert cache.get("a") is not None  # "a" is now the most recent: "b" goes first
    cache.put("d", block(10))
    assert cache.get("b") is None and cache.get("c") is not None
    assert cache.nbytes == 30 and len(cache) == 3
    cache.put("e", block(25))  # evicts until it fits: everything else
    assert list(cache._items) == ["e"] and cache.nbytes == 25


def test_value_larger_than_budget_is_not_kept_and_replacing_a_key_counts_once():
    cache = ChunkCache(max_bytes=16)
    cache.put("big", block(17))
    assert cache.get("big") is None and cache.nbytes == 0
    cache.put("k", block(8))
    cache.put("k", block(6))
    assert cache.nbytes == 6 and len(cache) == 1


def test_cached_values_are_read_only_and_counts_hits():
    cache = ChunkCache(max_bytes=100)
    cache.put("k", block(4))
    got = cache.get("k")
    with pytest.raises(ValueError):
        got[0] = 1
    cache.get("missing")
    assert (cache.hits, cache.misses) == (1, 1)
    with pytest.raises(ValueError):
        ChunkCache(-1)


@pytest.fixture
def stores(tmp_path):
    ids = np.arange(1, 38)  # 37 items, chunks of 4: the last chunk is short
    spec = make_spec()
    write_all(tmp_path / "s.zarr", spec, ids, compression="lz4")  # the cache serves Zarr reads
    plain = FeatureStore.open(tmp_path / "s.zarr")
    cached = FeatureStore.open(tmp_path / "s.zarr", cache_bytes=1 << 20)
    return plain, cached


def test_cached_reads_equal_uncached_reads_in_any_order(stores):
    plain, cached = stores
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = rng.integers(0, 37, size=rng.integers(0, 12))  # duplicates, unsorted, empty
        want, got = plain.read(rows), cached.read(rows)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
    assert cached._cache.hits > 0


def test_second_read_decodes_nothing_and_results_are_writable_copies(stores):
    _, cached = stores
    rows = np.array([36, 0, 5, 17, 5])
    first = cached.read(rows, ["region_features", "num_regions"])
    misses = cached._cache.misses
    second = cached.read(rows[::-1], ["region_features", "num_regions"])
    assert cached._cache.misses == misses  # every chunk came from the cache
    np.testing.assert_array_equal(second["num_regions"], first["num_regions"][::-1])
    second["region_features"][:] = 0  # a batch is the caller's own array...
    again = cached.read(rows, ["region_features"])["region_features"]
    np.testing.assert_array_equal(again, first["region_features"])  # ...the cache is untouched


def test_small_cache_stays_bounded_and_correct(tmp_path, stores):
    plain, _ = stores
    tiny = FeatureStore.open(plain.path, cache_bytes=200)
    for start in range(0, 37, 3):
        rows = np.arange(start, min(start + 9, 37))
        np.testing.assert_array_equal(tiny.read(rows)["region_features"],
                                      plain.read(rows)["region_features"])
        assert tiny._cache.nbytes <= 200


def test_pickled_store_keeps_the_budget_but_not_the_chunks(stores):
    _, cached = stores
    cached.read([0, 1, 2])
    clone = pickle.loads(pickle.dumps(cached))
    assert clone.cache_bytes == cached.cache_bytes and len(clone._cache) == 0
    np.testing.assert_array_equal(clone.read([2, 0])["num_regions"],
                                  cached.read([2, 0])["num_regions"])
