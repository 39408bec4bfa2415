"""GraphWorld-style SBM generator and homophily statistics."""

import numpy as np
import pytest

from jaxfm.data.sbm import (
    PARAM_RANGES,
    SBMParams,
    expected_edge_homophily,
    homophily,
    sample_sbm_params,
    sbm_corpus,
    sbm_graph,
)


def test_homophily_exact_small_graph():
    # Undirected triangle 0-1-2 plus edge 2-3; labels 0, 0, 1, 1.
    und = [(0, 1), (1, 2), (0, 2), (2, 3)]
    s = np.array([a for a, b in und] + [b for a, b in und])
    r = np.array([b for a, b in und] + [a for a, b in und])
    y = np.array([0, 0, 1, 1])
    h = homophily(s, r, y)
    assert h.edge == pytest.approx(2 * 2 / 8)  # edges 0-1 and 2-3 (both directions) are same-class
    # node 0: {1, 2} -> 1/2; node 1: {0, 2} -> 1/2; node 2: {1, 0, 3} -> 1/3; node 3: {2} -> 1
    assert h.node == pytest.approx((0.5 + 0.5 + 1 / 3 + 1) / 4)
    # Unlabelled endpoints are ignored.
    h2 = homophily(s, r, np.array([0, 0, -1, 1]))
    assert h2.edge == pytest.approx(1.0)


@pytest.mark.parametrize("ratio", [0.1, 1.0, 10.0])
def test_sbm_degree_and_homophily_track_parameters(ratio):
    p = SBMParams(
        num_nodes=4000,
        num_classes=4,
        edge_ratio=ratio,
        avg_degree=8.0,
        cluster_size_slope=0.3,
        power_exponent=0.7,
    )
    g = sbm_graph(p, seed=1)
    # Exactly round(avg_degree * N / 2) undirected edges, both directions stored.
    assert g.num_edges == 2 * round(8.0 * 4000 / 2)
    assert g.num_edges / g.num_nodes == pytest.approx(8.0)
    h = homophily(g.senders, g.receivers, g.y)
    assert h.edge == pytest.approx(expected_edge_homophily(p), abs=0.03)
    # Node homophily follows the same trend (looser: it weights low-degree nodes more).
    assert h.node == pytest.approx(expected_edge_homophily(p), abs=0.08)


def test_sbm_graph_structure_and_clusters():
    p = SBMParams(num_nodes=3000, num_classes=5, avg_degree=10, cluster_size_slope=0.5)
    g = sbm_graph(p, seed=0)
    s, r = g.senders.astype(np.int64), g.receivers.astype(np.int64)
    assert (s != r).all()
    keys = s * g.num_nodes + r
    assert np.unique(keys).size == keys.size  # no duplicates
    assert set(keys.tolist()) == set((r * g.num_nodes + s).tolist())  # symmetric
    sizes = np.bincount(g.y)
    # Shares proportional to 1 + slope * c: largest / smallest = 1 + 0.5 * 4 = 3.
    assert sizes.max() / sizes.min() == pytest.approx(3.0, rel=0.01)
    deg = np.bincount(r, minlength=g.num_nodes)
    assert deg.max() > 4 * deg.mean()  # heavy-tailed (power-law propensities)
    split = g.splits[0]
    assert not (split.train & split.val).any() and not (split.train & split.test).any()
    assert split.train.sum() == pytest.approx(0.6 * g.num_nodes, abs=5)


def test_sbm_feature_center_spread():
    def between_class_var(spread):
        p = SBMParams(num_nodes=3000, num_classes=6, feature_center_spread=spread, feature_dim=32)
        g = sbm_graph(p, seed=2)
        means = np.stack([g.x[g.y == c].mean(0) for c in range(6)])
        return means.var(axis=0, ddof=1).mean()

    assert between_class_var(0.0) < 0.05
    assert between_class_var(4.0) == pytest.approx(4.0, rel=0.5)


def test_sbm_is_deterministic_by_seed():
    p = SBMParams(num_nodes=500, num_classes=3, avg_degree=5)
    a, b, c = sbm_graph(p, seed=7), sbm_graph(p, seed=7), sbm_graph(p, seed=8)
    for field in ("senders", "receivers", "x", "y"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.senders, c.senders)


def test_sampled_params_in_paper_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = sample_sbm_params(rng)
        for name, (lo, hi) in PARAM_RANGES.items():
            assert lo <= getattr(p, name) <= hi, name


def test_sbm_corpus():
    graphs = sbm_corpus(5, seed=3, node_range=(50, 300))
    assert [g.name for g in graphs] == [f"sbm_{i:03d}" for i in range(5)]
    assert all(50 <= g.num_nodes <= 300 for g in graphs)
    # Graph i does not depend on how many graphs are asked for.
    again = sbm_corpus(2, seed=3, node_range=(50, 300))
    np.testing.assert_array_equal(again[1].senders, graphs[1].senders)


def test_sbm_params_validation():
    with pytest.raises(ValueError, match="avg_degree"):
        SBMParams(num_nodes=10, avg_degree=20)
    with pytest.raises(ValueError, match="num_classes"):
        SBMParams(num_nodes=3, num_classes=5)
