"""PackedPipeline: epochs, budgets, resumable state, process sharding."""

import json

import numpy as np
import pytest

from jaxfm.data.corpus import build_corpus
from jaxfm.data.packing import PackingBudget
from jaxfm.data.pipeline import PackedPipeline, PipelineStateError
from jaxfm.data.sbm import sbm_corpus
from jaxfm.graph.packed import check_packed_batch

BUDGET = PackingBudget(nodes=512, graphs=8, targets=32, neighbors=4)


@pytest.fixture(scope="module")
def corpus():
    graphs = sbm_corpus(10, seed=0, node_range=(40, 700))
    return build_corpus(graphs, feature_dim=8, pe_dim=4, node_budget=512, seed=0)


def _equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        for name in vars(x):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


def test_an_epoch_packs_every_unit_once_within_budget(corpus):
    pipe = PackedPipeline(corpus, budget=BUDGET, num_buckets=4, seed=1)
    assert corpus.samplers  # some graphs are above max_unit_nodes = 256
    steps = pipe.steps_per_epoch(0)
    rows = 0
    for _ in range(steps):
        batches = next(pipe)
        assert len(batches) == 4
        for b in batches:
            check_packed_batch(b, num_datasets=corpus.num_datasets)
            rows += int(b.group_sizes.sum())
            assert b.target_mask.any() or not b.graph_mask.any()
    assert rows == sum(u.size for u in corpus.units(0))
    assert pipe.get_state()["epoch"] == 0 and pipe.get_state()["step"] == steps
    next(pipe)
    assert pipe.get_state()["epoch"] == 1 and pipe.get_state()["step"] == 1


def test_resume_reproduces_the_exact_continuation(corpus):
    pipe = PackedPipeline(corpus, budget=BUDGET, num_buckets=2, seed=3)
    for _ in range(5):
        next(pipe)
    state = json.loads(json.dumps(pipe.get_state()))  # JSON round trip
    expected = [next(pipe) for _ in range(7)]  # crosses an epoch boundary
    resumed = PackedPipeline(corpus, budget=BUDGET, num_buckets=2, seed=3)
    resumed.set_state(state)
    for want in expected:
        _equal(next(resumed), want)
    # Rewinding the same pipeline works too.
    pipe.set_state(state)
    _equal(next(pipe), expected[0])


def test_state_from_other_settings_is_rejected(corpus):
    state = PackedPipeline(corpus, budget=BUDGET, num_buckets=2, seed=3).get_state()
    other = PackedPipeline(corpus, budget=BUDGET, num_buckets=4, seed=3)
    with pytest.raises(PipelineStateError, match="num_buckets"):
        other.set_state(state)
    with pytest.raises(PipelineStateError, match="malformed"):
        other.set_state({"epoch": "x"})


def test_processes_shard_the_buckets(corpus):
    full = PackedPipeline(corpus, budget=BUDGET, num_buckets=4, seed=2)
    parts = [
        PackedPipeline(
            corpus, budget=BUDGET, num_buckets=4, seed=2, process_index=p, process_count=2
        )
        for p in range(2)
    ]
    for _ in range(3):
        want = next(full)
        got = next(parts[0]) + next(parts[1])
        _equal(got, want)
    with pytest.raises(ValueError, match="divisible"):
        PackedPipeline(corpus, budget=BUDGET, num_buckets=3, process_count=2)


def test_peek_and_stack(corpus):
    pipe = PackedPipeline(corpus, budget=BUDGET, num_buckets=2, seed=0, stack=True)
    before = pipe.get_state()
    peeked = pipe.peek()
    assert pipe.get_state() == before
    assert peeked.features.shape == (2, 512, 8) and peeked.neighbor_index.shape == (2, 32, 4)
    got = next(pipe)
    assert got is peeked
    assert pipe.get_state()["step"] == before["step"] + 1
