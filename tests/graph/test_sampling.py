"""k-hop subgraphs, the node-batch sampler and full-graph batches (jaxfm.graph.sampling)."""

from collections import Counter

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from jaxfm.graph import (
    Budget,
    NodeBatchSampler,
    edge_mask,
    full_graph_batch,
    khop_subgraph,
    make_budgets,
    node_mask,
    validate_graph,
)

NUM_NODES = 150


def _big_graph(seed=0, num_nodes=NUM_NODES, num_edges=450):
    rng = np.random.default_rng(seed)
    senders = rng.integers(0, num_nodes, num_edges).astype(np.int32)
    receivers = rng.integers(0, num_nodes, num_edges).astype(np.int32)
    return jraph.GraphsTuple(
        nodes={
            "values": rng.normal(size=(num_nodes, 4)).astype(np.float32),
            "token_mask": rng.random((num_nodes, 4)) < 0.8,
            "label": rng.integers(0, 3, num_nodes).astype(np.int32),
        },
        edges={"w": rng.random(num_edges).astype(np.float32)},
        globals=None,
        senders=senders,
        receivers=receivers,
        n_node=np.array([num_nodes], np.int32),
        n_edge=np.array([num_edges], np.int32),
    )


def _bfs_in_distance(senders, receivers, num_nodes, seeds):
    """Brute force: hops from each node to the nearest seed along edge direction."""
    dist = np.full(num_nodes, np.inf)
    dist[seeds] = 0
    for _ in range(num_nodes):
        relaxed = dist.copy()
        for u, v in zip(senders, receivers, strict=True):
            relaxed[u] = min(relaxed[u], dist[v] + 1)
        if np.array_equal(relaxed, dist):
            break
        dist = relaxed
    return dist


@pytest.mark.parametrize("num_hops", [0, 1, 2, 3])
def test_khop_matches_bfs(num_hops):
    g = _big_graph()
    seeds = np.array([17, 3, 99])
    sub = khop_subgraph(g.senders, g.receivers, NUM_NODES, seeds, num_hops)
    dist = _bfs_in_distance(g.senders, g.receivers, NUM_NODES, seeds)
    np.testing.assert_array_equal(sub.node_ids[:3], seeds)  # seeds first, in order
    np.testing.assert_array_equal(sub.seed_mask, np.arange(sub.node_ids.size) < 3)
    assert set(sub.node_ids.tolist()) == set(np.flatnonzero(dist <= num_hops).tolist())
    assert np.unique(sub.node_ids).size == sub.node_ids.size
    # Edges: every in-edge of a node at distance < num_hops (multi-edges included), as local ids.
    want = Counter(
        (int(u), int(v)) for u, v in zip(g.senders, g.receivers, strict=True) if dist[v] < num_hops
    )
    got = Counter(
        zip(sub.node_ids[sub.senders].tolist(), sub.node_ids[sub.receivers].tolist(), strict=True)
    )
    assert got == want
    np.testing.assert_array_equal(g.senders[sub.edge_ids], sub.node_ids[sub.senders])
    np.testing.assert_array_equal(g.receivers[sub.edge_ids], sub.node_ids[sub.receivers])
    assert np.all(np.diff(sub.receivers) >= 0)


def test_khop_max_neighbors_and_errors():
    g = _big_graph()
    seeds = np.arange(10)
    full = khop_subgraph(g.senders, g.receivers, NUM_NODES, seeds, 2)
    sub = khop_subgraph(g.senders, g.receivers, NUM_NODES, seeds, 2, max_neighbors=1, rng=3)
    assert np.bincount(sub.receivers).max() <= 1
    assert set(sub.edge_ids.tolist()) <= set(full.edge_ids.tolist())
    again = khop_subgraph(g.senders, g.receivers, NUM_NODES, seeds, 2, max_neighbors=1, rng=3)
    np.testing.assert_array_equal(sub.edge_ids, again.edge_ids)  # reproducible
    with pytest.raises(ValueError, match="unique"):
        khop_subgraph(g.senders, g.receivers, NUM_NODES, np.array([1, 1]), 1)
    with pytest.raises(ValueError, match=r"seeds must lie in \[0, 150\)"):
        khop_subgraph(g.senders, g.receivers, NUM_NODES, np.array([150]), 1)
    with pytest.raises(ValueError, match="senders must lie"):
        khop_subgraph(g.senders, g.receivers, 10, np.array([1]), 1)


def _sampler(**kw):
    g = _big_graph()
    args = dict(
        batch_size=16,
        num_hops=2,
        budgets=make_budgets(160, 512, num=3),
        shuffle=True,
        seed=7,
    )
    args.update(kw)
    return g, NodeBatchSampler(g, np.arange(0, NUM_NODES, 2), **args)


def test_sampler_covers_seeds_once_and_slices_nodes():
    g, sampler = _sampler()
    assert len(sampler) == 5  # 75 seeds / 16
    seen = []
    for batch in sampler:
        validate_graph(batch, padded=True)
        nm = np.asarray(node_mask(batch))
        idx = batch.nodes["node_index"]
        assert np.all(idx[~nm] == -1) and np.all(idx[nm] >= 0)
        assert not batch.nodes["target_mask"][~nm].any()
        for key in ("values", "token_mask", "label"):
            np.testing.assert_array_equal(batch.nodes[key][nm], g.nodes[key][idx[nm]])
        em = np.asarray(edge_mask(batch))
        big_edges = set(
            zip(g.senders.tolist(), g.receivers.tolist(), g.edges["w"].tolist(), strict=True)
        )
        sub_edges = zip(
            idx[batch.senders[em]].tolist(),
            idx[batch.receivers[em]].tolist(),
            batch.edges["w"][em].tolist(),
            strict=True,
        )
        assert set(sub_edges) <= big_edges  # real edges (and their features) come from the graph
        seen.extend(idx[batch.nodes["target_mask"]].tolist())
    assert sorted(seen) == list(range(0, NUM_NODES, 2))


def test_sampler_deterministic_per_epoch_and_resumable():
    _, a = _sampler()
    _, b = _sampler()
    order = lambda s, e: [x.nodes["node_index"][x.nodes["target_mask"]] for x in s.iter_epoch(e)]
    first, second = order(a, 0), order(b, 0)
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    b.set_epoch(1)
    epoch1 = [x.nodes["node_index"][x.nodes["target_mask"]] for x in b]
    assert not np.array_equal(np.concatenate(first), np.concatenate(epoch1))
    resumed = [x.nodes["node_index"][x.nodes["target_mask"]] for x in b.iter_epoch(1, start=3)]
    assert all(np.array_equal(x, y) for x, y in zip(epoch1[3:], resumed, strict=True))
    _, c = _sampler(shuffle=False, drop_last=True)
    assert len(c) == 4
    np.testing.assert_array_equal(next(iter(c)).nodes["node_index"][:16], np.arange(0, 32, 2))


def _two_layer_gnn(graph):
    """A tiny 2-layer masked-mean message-passing net (2 hops, like the sampler)."""
    h = jnp.asarray(graph.nodes["values"])
    s, r = jnp.asarray(graph.senders), jnp.asarray(graph.receivers)
    w = edge_mask(graph).astype(h.dtype)  # [E]
    n = h.shape[0]
    for _ in range(2):
        msg = jax.ops.segment_sum(h[s] * w[:, None], r, n)
        deg = jax.ops.segment_sum(w, r, n)
        h = jnp.tanh(h + msg / jnp.maximum(deg, 1.0)[:, None])
    return h


def test_sampled_subgraph_reproduces_full_graph_outputs():
    g, sampler = _sampler()
    # Masks assume a padded batch, so the reference runs on the padded full graph.
    full = np.asarray(_two_layer_gnn(full_graph_batch(g, Budget(n_node=151, n_edge=450))))
    for batch in sampler:
        out = np.asarray(jax.jit(_two_layer_gnn)(batch))
        tm = batch.nodes["target_mask"]
        np.testing.assert_allclose(out[tm], full[batch.nodes["node_index"][tm]], atol=1e-5)


def test_recompilation_guard():
    budgets = make_budgets(160, 512, num=8, growth=1.15)  # a fine ladder: several get used
    _, sampler = _sampler(max_neighbors=3, batch_size=11, budgets=budgets)
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch.n_node.shape)  # Python side effect: runs once per compilation
        h = _two_layer_gnn(batch)
        return jnp.sum(jnp.where(batch.nodes["target_mask"][:, None], h, 0.0))

    real_sizes, shapes = set(), set()
    for epoch in range(2):
        for batch in sampler.iter_epoch(epoch):
            real_sizes.add(int(np.asarray(node_mask(batch)).sum()))
            shapes.add((batch.senders.shape[0], batch.nodes["values"].shape[0]))
            step(batch).block_until_ready()
    assert len(real_sizes) > 3 and len(shapes) >= 2  # real sizes vary a lot ...
    assert len(traces) == len(shapes) <= len(budgets)  # ... compilations only per budget
    assert step._cache_size() == len(traces)


def test_full_graph_batch():
    g = _big_graph()
    batch = full_graph_batch(g, make_budgets(256, 512, num=2))
    validate_graph(batch, padded=True)
    assert batch.nodes["values"].shape[0] == 256 and batch.senders.shape[0] == 512
    np.testing.assert_array_equal(batch.nodes["node_index"][:NUM_NODES], np.arange(NUM_NODES))
    assert np.all(batch.nodes["node_index"][NUM_NODES:] == -1)
    assert batch.nodes["target_mask"].sum() == NUM_NODES
    seeded = full_graph_batch(g, Budget(n_node=151, n_edge=450), seeds=np.array([4, 9]))
    assert np.flatnonzero(seeded.nodes["target_mask"]).tolist() == [4, 9]
    with pytest.raises(ValueError, match="no budget fits"):
        full_graph_batch(g, Budget(n_node=150, n_edge=450))
    with pytest.raises(ValueError, match="one unpadded graph"):
        full_graph_batch(batch, Budget(n_node=512, n_edge=512))
