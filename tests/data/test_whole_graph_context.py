"""Finetuning batches of one graph: the whole graph, or the random-walk subgraph of the targets
(``WholeGraphBatcher.batch_around``, issue 14: finetuning on subgraphs the way pretraining does)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path

from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.data.whole_graph import WholeGraphBatcher


def _graph(n=300, f=6, seed=0) -> NodeDataset:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n, 3 * n).astype(np.int32)
    r = rng.integers(0, n, 3 * n).astype(np.int32)
    keep = s != r
    x = np.arange(n * f, dtype=np.float32).reshape(n, f)  # row i identifies node i
    y = rng.integers(0, 4, n).astype(np.int32)
    train = np.zeros(n, bool)
    train[: n // 2] = True
    return NodeDataset(
        name="g", senders=s[keep], receivers=r[keep], num_nodes=n, x=x, y=y, num_classes=4,
        splits=(Split(train, ~train, ~train),),
    )  # fmt: skip


def _batcher(ds, context=64, targets=16, walk=2):
    return WholeGraphBatcher(
        ds, feature_dim=8, pe_dim=4, num_neighbors=3, num_targets=targets, seed=0,
        context_nodes=context, walk_length=walk,
    )  # fmt: skip


def _hops(ds) -> np.ndarray:
    n = ds.num_nodes
    a = sp.coo_matrix((np.ones(ds.senders.size), (ds.senders, ds.receivers)), shape=(n, n))
    return shortest_path(a, unweighted=True, directed=False)


def test_targets_are_decoded_at_their_own_rows_inside_a_bounded_context():
    ds = _graph()
    b = _batcher(ds)
    targets = np.array([3, 17, 40, 41, 99, 120, 250])
    batch, ids = b.batch_around(targets, [0, 1])
    assert sorted(ids.tolist()) == targets.tolist()
    feats = np.asarray(batch.features)
    rows = np.asarray(batch.target_index)[np.asarray(batch.target_mask)]
    # the feature row decoded for each target is that node's own row (x[i] = 6i .. 6i+5)
    np.testing.assert_array_equal(feats[rows, :6], ds.x[ids])
    assert feats.shape[0] == 256  # ceil(min(N, context_nodes) / 256) * 256 rows, not N's 512


def test_context_is_at_most_context_nodes_and_within_walk_length_hops():
    ds = _graph()
    b = _batcher(ds, context=200, targets=16, walk=2)
    targets = np.arange(0, 160, 10)
    batch, _ = b.batch_around(targets, 7)
    n_ctx = int((np.asarray(batch.segment_ids) > 0).sum())
    assert 16 < n_ctx <= 200
    # recover the context's node ids from the identifying feature rows
    feats = np.asarray(batch.features)[:n_ctx, :6]
    ctx = (feats[:, 0] / 6).astype(int)
    np.testing.assert_array_equal(feats, ds.x[ctx])
    assert set(targets) <= set(ctx)
    hops = _hops(ds)[np.ix_(targets, ctx)].min(axis=0)
    assert hops.max() <= 2  # every context node is a walk of <= 2 steps from some target


def test_context_over_budget_keeps_every_target():
    ds = _graph()
    b = _batcher(ds, context=20, targets=16, walk=3)  # walks reach far more than 20 nodes
    targets = np.arange(16) * 7
    batch, ids = b.batch_around(targets, 0)
    assert int((np.asarray(batch.segment_ids) > 0).sum()) == 20
    assert sorted(ids.tolist()) == sorted(targets.tolist())


def test_decoder_neighbours_are_graph_neighbours_inside_the_context():
    ds = _graph()
    b = _batcher(ds, context=128, targets=8)
    batch, _ = b.batch_around(np.array([5, 6, 7, 8, 9, 10, 11, 12]), 3)
    n_ctx = int((np.asarray(batch.segment_ids) > 0).sum())
    ctx = (np.asarray(batch.features)[:n_ctx, 0] / 6).astype(int)
    adj = set(zip(ds.senders.tolist(), ds.receivers.tolist(), strict=True))
    adj |= {(v, u) for u, v in adj}
    tm = np.asarray(batch.target_mask)
    for row, nbrs, mask in zip(
        np.asarray(batch.target_index)[tm], np.asarray(batch.neighbor_index)[tm],
        np.asarray(batch.neighbor_mask)[tm], strict=True,
    ):  # fmt: skip
        for j in nbrs[mask]:
            assert (ctx[row], ctx[j]) in adj


def test_walks_are_a_pure_function_of_the_seed():
    ds = _graph()
    b = _batcher(ds, context=64, targets=16)
    t = np.arange(16) * 3
    f = lambda seed: np.asarray(b.batch_around(t, seed)[0].features)
    np.testing.assert_array_equal(f([1, 2]), f([1, 2]))
    assert not np.array_equal(f([1, 2]), f([1, 3]))


def test_bad_settings_are_refused_with_the_argument_named():
    ds = _graph()
    with pytest.raises(ValueError, match="context_nodes=8 must be >= the target budget 16"):
        _batcher(ds, context=8, targets=16)
    whole = WholeGraphBatcher(ds, feature_dim=8, pe_dim=4, num_neighbors=3, num_targets=16, seed=0)
    with pytest.raises(ValueError, match="batch_around needs a WholeGraphBatcher built with"):
        whole.batch_around(np.arange(4), 0)
    with pytest.raises(ValueError, match="17 targets exceed the target budget 16"):
        _batcher(ds).batch_around(np.arange(17), 0)


def test_a_graph_within_the_context_budget_is_its_own_context():
    ds = _graph(n=300)
    b = _batcher(ds, context=300, targets=16)  # as pretraining keeps graphs <= max_unit_nodes whole
    t = np.arange(16) * 5
    around, ids_a = b.batch_around(t, [4, 2])
    whole, ids_w = b.batch(t, [4, 2])
    for f in dataclasses.fields(whole):
        np.testing.assert_array_equal(
            np.asarray(getattr(around, f.name)), np.asarray(getattr(whole, f.name)), f.name
        )
    np.testing.assert_array_equal(ids_a, ids_w)
