"""Budgets, padding, batching, masks, self-loops and validation (jaxfm.graph.batching)."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from jaxfm.graph import (
    Budget,
    add_self_loops,
    batch_graphs,
    choose_budget,
    edge_mask,
    graph_mask,
    make_budgets,
    node_mask,
    pad_to_budget,
    remove_self_loops,
    to_undirected,
    validate_graph,
)


def _graph(num_nodes, senders, receivers, *, seed=0, length=3):
    """One tokenized graph in the binding data model."""
    rng = np.random.default_rng(seed)
    senders = np.asarray(senders, np.int32)
    return jraph.GraphsTuple(
        nodes={
            "gene_ids": rng.integers(1, 100, (num_nodes, length)).astype(np.int32),
            "values": rng.normal(size=(num_nodes, length)).astype(np.float32),
            "token_mask": np.ones((num_nodes, length), bool),
            "label": rng.integers(0, 4, num_nodes).astype(np.int32),
        },
        edges={"weight": rng.random(senders.size).astype(np.float32)},
        globals={"y": np.array([[1.0, 2.0]], np.float32)},
        senders=senders,
        receivers=np.asarray(receivers, np.int32),
        n_node=np.array([num_nodes], np.int32),
        n_edge=np.array([senders.size], np.int32),
    )


G1 = lambda: _graph(3, [0, 1, 2], [1, 2, 0], seed=1)
G2 = lambda: _graph(2, [1], [0], seed=2)


# ------------------------------------------------------------------ budgets


def test_budget_validation_and_fits():
    b = Budget(n_node=5, n_edge=4, n_graph=3)
    assert b.fits(4, 4, 2) and not b.fits(5, 4, 2) and not b.fits(4, 5, 2) and not b.fits(4, 4, 3)
    with pytest.raises(ValueError, match="n_node"):
        Budget(n_node=1, n_edge=0)
    with pytest.raises(ValueError, match="n_graph"):
        Budget(n_node=4, n_edge=0, n_graph=1)


def test_make_budgets_ladder():
    budgets = make_budgets(1000, 5000, max_graphs=4, num=3)
    assert [b.n_node for b in budgets] == [256, 504, 1000]
    assert [b.n_edge for b in budgets] == [1256, 2504, 5000]
    assert all(b.n_graph == 4 for b in budgets)
    assert len(make_budgets(8, 8, num=4)) == 1  # duplicates collapse


def test_choose_budget_smallest_fitting_and_error():
    budgets = make_budgets(64, 64, num=3)  # 16, 32, 64
    g = batch_graphs([G1(), G2()])  # 5 nodes, 4 edges, 2 graphs
    with pytest.raises(ValueError, match=r"5 nodes, 4 edges and 2 graphs"):
        choose_budget(g, budgets)  # n_graph=2 cannot hold 2 graphs + padding
    budgets = make_budgets(64, 64, max_graphs=3, num=3)
    assert choose_budget(g, budgets).n_node == 16
    big = _graph(20, [0], [1])
    assert choose_budget(big, budgets).n_node == 32
    assert choose_budget(_graph(31, [0], [1]), budgets).n_node == 32
    assert choose_budget(_graph(32, [0], [1]), budgets).n_node == 64  # needs the padding node


# ------------------------------------------------------------------ batching and padding


def test_batch_graphs_offsets():
    g = batch_graphs([G1(), G2()])
    np.testing.assert_array_equal(g.senders, [0, 1, 2, 4])
    np.testing.assert_array_equal(g.receivers, [1, 2, 0, 3])
    np.testing.assert_array_equal(g.n_node, [3, 2])
    np.testing.assert_array_equal(g.n_edge, [3, 1])
    assert g.nodes["values"].shape == (5, 3) and g.globals["y"].shape == (2, 2)
    np.testing.assert_array_equal(g.nodes["label"][3:], G2().nodes["label"])
    validate_graph(g)


def test_pad_preserves_content_and_layout():
    g = batch_graphs([G1(), G2()])
    budget = Budget(n_node=8, n_edge=6, n_graph=4)
    p = pad_to_budget(g, budget)
    validate_graph(p, name="padded", padded=True)
    np.testing.assert_array_equal(p.n_node, [3, 2, 3, 0])
    np.testing.assert_array_equal(p.n_edge, [3, 1, 2, 0])
    np.testing.assert_array_equal(p.senders, [0, 1, 2, 4, 5, 5])  # padding edges -> node 5
    np.testing.assert_array_equal(p.receivers, [1, 2, 0, 3, 5, 5])
    for key, leaf in g.nodes.items():
        assert p.nodes[key].dtype == leaf.dtype and p.nodes[key].shape[0] == 8
        np.testing.assert_array_equal(p.nodes[key][:5], leaf)
        assert not p.nodes[key][5:].any()
    np.testing.assert_array_equal(p.edges["weight"][:4], g.edges["weight"])
    np.testing.assert_array_equal(p.globals["y"][:2], g.globals["y"])
    assert p.senders.dtype == np.int32 and p.n_node.dtype == np.int32
    with pytest.raises(ValueError, match="does not fit"):
        pad_to_budget(g, Budget(n_node=5, n_edge=6, n_graph=4))


@pytest.mark.parametrize("use_jit", [False, True])
def test_masks(use_jit):
    g = batch_graphs([G1(), G2()])
    p = pad_to_budget(g, Budget(n_node=8, n_edge=6, n_graph=4))
    fn = lambda x: (node_mask(x), edge_mask(x), graph_mask(x))
    nm, em, gm = (jax.jit(fn) if use_jit else fn)(p)
    assert nm.dtype == jnp.bool_ and em.dtype == jnp.bool_ and gm.dtype == jnp.bool_
    np.testing.assert_array_equal(nm, [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(em, [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(gm, [1, 1, 0, 0])


def test_masks_agree_with_jraph_padding():
    g = batch_graphs([G1(), G2()])
    p = jraph.pad_with_graphs(g, n_node=9, n_edge=7, n_graph=5)
    np.testing.assert_array_equal(node_mask(p), jraph.get_node_padding_mask(p))
    np.testing.assert_array_equal(edge_mask(p), jraph.get_edge_padding_mask(p))
    np.testing.assert_array_equal(graph_mask(p), jraph.get_graph_padding_mask(p))


def test_masked_aggregation_under_jit_ignores_padding():
    g = batch_graphs([G1(), G2()])
    p = pad_to_budget(g, Budget(n_node=8, n_edge=8, n_graph=3))

    @jax.jit
    def masked_mean_value(x):
        m = node_mask(x)
        v = x.nodes["values"].mean(-1)
        return jnp.sum(jnp.where(m, v, 0.0)) / jnp.sum(m)

    np.testing.assert_allclose(masked_mean_value(p), g.nodes["values"].mean(), rtol=1e-6)


# ------------------------------------------------------------------ self loops


def test_add_self_loops_no_duplicates_and_padding_untouched():
    # Nodes 0-2 real, 3-4 padding; (1, 1) is an existing loop, (4, 4) a padding edge.
    senders = np.array([0, 1, 2, 4])
    receivers = np.array([1, 1, 0, 4])
    mask = np.array([True, True, True, False, False])
    s, r = add_self_loops(senders, receivers, 5, node_mask=mask)
    np.testing.assert_array_equal(s[:4], senders)  # existing edges keep their positions
    np.testing.assert_array_equal(r[:4], receivers)
    np.testing.assert_array_equal(s[4:], [0, 2])
    np.testing.assert_array_equal(r[4:], [0, 2])
    loops = s[s == r]
    assert np.unique(loops).size == loops.size  # no duplicates
    assert 3 not in loops  # padding node 3 gets no loop
    assert s.dtype == np.int32
    s2, _r2 = add_self_loops(s, r, 5, node_mask=mask)  # idempotent
    np.testing.assert_array_equal(s2, s)
    s3, _r3 = add_self_loops(np.zeros(0, np.int32), np.zeros(0, np.int32), 3)  # no edges
    np.testing.assert_array_equal(s3, [0, 1, 2])


def test_remove_self_loops_and_to_undirected():
    s, r = remove_self_loops([0, 1, 2, 2], [1, 1, 0, 2])
    np.testing.assert_array_equal(s, [0, 2])
    np.testing.assert_array_equal(r, [1, 0])
    s, r = to_undirected([0, 1, 2, 1], [1, 0, 0, 1])
    assert set(zip(s.tolist(), r.tolist(), strict=True)) == {
        (0, 1),
        (1, 0),
        (2, 0),
        (0, 2),
        (1, 1),
    }
    assert len(s) == 5 and np.all(np.diff(r) >= 0)


# ------------------------------------------------------------------ validation


def test_validate_graph_errors():
    validate_graph(G1())
    g = G1()
    with pytest.raises(ValueError, match=r"batch\.senders: expected indices in \[0, 3\)"):
        validate_graph(g._replace(senders=np.array([0, 1, 3], np.int32)), name="batch")
    values = g.nodes["values"].copy()
    values[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"graph\.nodes\['values'\]: expected finite"):
        validate_graph(g._replace(nodes={**g.nodes, "values": values}))
    with pytest.raises(ValueError, match="graph 1 is empty"):
        validate_graph(batch_graphs([G1(), _graph(0, [], []), G2()]))
    with pytest.raises(ValueError, match="integer dtype"):
        validate_graph(g._replace(senders=g.senders.astype(np.float32)))
    with pytest.raises(ValueError, match="equal lengths"):
        validate_graph(g._replace(receivers=g.receivers[:2]))
    with pytest.raises(ValueError, match=r"nodes\['label'\]: expected leading dim N"):
        validate_graph(g._replace(nodes={**g.nodes, "label": g.nodes["label"][:2]}))
    with pytest.raises(ValueError, match="n_edge: expected to sum"):
        validate_graph(g._replace(n_edge=np.array([2], np.int32)))
    cross = batch_graphs([G1(), G2()])
    with pytest.raises(ValueError, match="belongs to graph"):
        validate_graph(cross._replace(senders=np.array([0, 1, 2, 0], np.int32)))
    padded = pad_to_budget(G1(), Budget(n_node=6, n_edge=4, n_graph=4))
    with pytest.raises(ValueError, match="padded=True"):
        validate_graph(padded)
    validate_graph(padded, padded=True)
