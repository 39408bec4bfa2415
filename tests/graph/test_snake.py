"""snake_partition (paper Algorithm 1) and the DistributedSSSampler built on it."""

import itertools

import numpy as np
import pytest

from jaxfm.graph.snake import (
    DistributedSSSampler,
    bucket_loads,
    random_partition,
    snake_partition,
)


def test_snake_partition_exact_small_example():
    # Sorted descending: 10, 9, 8 dealt right-to-left, then 7, 6, 5 left-to-right.
    assert snake_partition([10, 9, 8, 7, 6, 5], 3) == [[2, 3], [1, 4], [0, 5]]
    # Unsorted input, three passes (R->L, L->R, R->L) with a partial last pass.
    inf = float("inf")
    assert snake_partition([1, 5, 3, 9, 7], 2, budget=inf) == [[4, 1], [3, 2, 0]]
    # Default budget (mean load 12.5): the last item fits nowhere -> emptiest bucket, ties in
    # snake order (bucket 1 comes first on the right-to-left pass).
    assert snake_partition([1, 5, 3, 9, 7], 2) == [[4, 1], [3, 2, 0]]
    assert snake_partition([9, 7, 5, 3, 1.5], 2) == [[1, 2], [0, 3, 4]]


def test_budget_skips_full_buckets_and_balances_heavy_tails():
    # Budget-free snake leaves the big item's bucket heavy; the budget walks past it.
    sizes = [100, 60, 50, 40, 30, 20, 10, 10, 10, 10, 10, 10]
    free = bucket_loads(sizes, snake_partition(sizes, 2, budget=float("inf")))
    tight = bucket_loads(sizes, snake_partition(sizes, 2))
    assert tight.max() / tight.mean() < free.max() / free.mean()
    assert tight.max() / tight.mean() <= 1.0 + 10 / tight.mean()
    with pytest.raises(ValueError, match="budget"):
        snake_partition([1, 2], 2, budget=0)
    # Ties keep index order; more buckets than items leaves the left buckets empty.
    assert snake_partition([4, 4, 4], 5) == [[], [], [2], [1], [0]]
    assert snake_partition([], 3) == [[], [], []]


@pytest.mark.parametrize("num_buckets", [1, 3, 8, 64])
def test_snake_partition_is_a_partition(num_buckets):
    sizes = np.random.default_rng(num_buckets).integers(1, 1000, size=301)
    buckets = snake_partition(sizes, num_buckets)
    assert len(buckets) == num_buckets
    flat = sorted(i for b in buckets for i in b)
    assert flat == list(range(sizes.size))
    # Inside a bucket, items are listed in dealing order (non-increasing size).
    for b in buckets:
        assert all(sizes[x] >= sizes[y] for x, y in itertools.pairwise(b))


def test_snake_balances_a_skewed_distribution_better_than_random():
    sizes = np.random.default_rng(0).lognormal(mean=6, sigma=1.5, size=2000).astype(int) + 1
    loads = bucket_loads(sizes, snake_partition(sizes, 8))
    snake_ratio = loads.max() / loads.mean()
    random_ratios = [
        (lambda ld: ld.max() / ld.mean())(bucket_loads(sizes, random_partition(sizes, 8, seed=s)))
        for s in range(20)
    ]
    # Snake's spread is bounded by the largest item; random assignment's is not.
    assert loads.max() - loads.min() <= sizes.max()
    assert snake_ratio < 1.06
    assert snake_ratio < min(random_ratios)
    # With many items of similar size the deal is nearly perfect.
    flat = np.random.default_rng(1).integers(100, 200, size=2000)
    flat_loads = bucket_loads(flat, snake_partition(flat, 8))
    assert flat_loads.max() / flat_loads.mean() < 1.002


def test_snake_partition_rejects_bad_input():
    with pytest.raises(ValueError, match="num_buckets"):
        snake_partition([1, 2], 0)
    with pytest.raises(ValueError, match="non-negative"):
        snake_partition([1, -2], 2)


def _sizes():
    return np.random.default_rng(1).lognormal(mean=4, sigma=1.2, size=400).clip(1, 900).astype(int)


def test_sampler_uses_every_unit_once_per_epoch_within_budgets():
    sizes = _sizes()
    sampler = DistributedSSSampler(sizes, num_buckets=8, node_budget=1024, max_units=12, seed=3)
    for epoch in range(3):
        plan = sampler.epoch_plan(epoch)
        flat = sorted(i for step in plan for b in step for i in b)
        assert flat == list(range(sizes.size))
        for step in plan:
            assert len(step) == 8
            assert bucket_loads(sizes, step).max() <= 1024
            assert max(len(b) for b in step) <= 12
    # Full steps are well balanced: the sampler fills to the budget and snake-deals.
    ratios = np.concatenate([sampler.load_ratios(e) for e in range(3)])
    assert ratios.mean() < 1.1


def test_sampler_is_deterministic_per_seed_and_epoch():
    sizes = _sizes()
    a = DistributedSSSampler(sizes, num_buckets=4, node_budget=2048, seed=5)
    b = DistributedSSSampler(sizes, num_buckets=4, node_budget=2048, seed=5)
    assert a.epoch_plan(2) == b.epoch_plan(2)
    assert a.epoch_plan(2) != a.epoch_plan(3)
    c = DistributedSSSampler(sizes, num_buckets=4, node_budget=2048, seed=6)
    assert a.epoch_plan(2) != c.epoch_plan(2)
    fixed = DistributedSSSampler(sizes, num_buckets=4, node_budget=2048, shuffle=False)
    assert fixed.epoch_plan(0) == fixed.epoch_plan(1)


def test_sampler_beats_random_assignment():
    sizes = _sizes()
    kw = dict(num_buckets=8, node_budget=2048, seed=0)
    snake = DistributedSSSampler(sizes, **kw)
    rand = DistributedSSSampler(sizes, assignment="random", **kw)
    s = np.concatenate([snake.load_ratios(e) for e in range(5)]).mean()
    r = np.concatenate([rand.load_ratios(e) for e in range(5)]).mean()
    assert s < 1.1 < r


def test_sampler_rejects_unit_above_budget():
    with pytest.raises(ValueError, match="GraphSAINT"):
        DistributedSSSampler([10, 5000], num_buckets=2, node_budget=4096)
    with pytest.raises(ValueError, match="assignment"):
        DistributedSSSampler([10], num_buckets=2, node_budget=16, assignment="greedy")
