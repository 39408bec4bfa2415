"""build_corpus: feature reduction, PEs, splits, units, graph-classification sets, bad input."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from jaxfm.data.corpus import build_corpus, reduce_features
from jaxfm.data.graph_dataset import GraphClassificationDataset, SmallGraph
from jaxfm.data.sbm import SBMParams, sbm_graph
from jaxfm.graph.laplacian import LaplacianPECache, laplacian_pe
from jaxfm.graph.saint import induced_subgraph


def _low_rank(n=200, f=60, rank=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, f))


def test_reduce_features_preserves_geometry_of_low_rank_data():
    x = _low_rank()
    z = reduce_features(x, 8, seed=0)
    assert z.shape == (200, 8) and z.dtype == np.float32
    # Rank 5 <= 8: the projection onto the top right-singular vectors keeps all inner products.
    np.testing.assert_allclose(z.astype(np.float64) @ z.T, x @ x.T, rtol=1e-4, atol=1e-3)
    # Sparse input gives the same result as dense input; the same seed the same result.
    xs = sp.csr_matrix(np.where(np.abs(x) > 1.0, x, 0.0))
    np.testing.assert_allclose(
        reduce_features(xs, 8, seed=1), reduce_features(xs.toarray(), 8, seed=1), atol=1e-4
    )
    np.testing.assert_array_equal(reduce_features(x, 8, seed=3), reduce_features(x, 8, seed=3))


def test_reduce_features_captures_the_top_singular_values():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(300, 40)))
    v, _ = np.linalg.qr(rng.normal(size=(100, 40)))
    s = 2.0 ** -np.arange(40)
    x = (u * s) @ v.T
    z = reduce_features(x, 4, seed=0)
    np.testing.assert_allclose(np.linalg.norm(z, axis=0), s[:4], rtol=1e-6)


def test_reduce_features_narrow_and_rank_deficient():
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(reduce_features(x, 5), x.astype(np.float32))
    wide = np.random.default_rng(0).normal(size=(3, 50))  # N = 3 < dim
    z = reduce_features(wide, 8)
    assert z.shape == (3, 8)
    np.testing.assert_allclose(z[:, 3:], 0.0, atol=1e-12)


def _datasets():
    a = sbm_graph(SBMParams(num_nodes=300, num_classes=3, feature_dim=40), seed=0, name="a")
    b = sbm_graph(SBMParams(num_nodes=2500, num_classes=4, feature_dim=8), seed=1, name="b")
    c = sbm_graph(SBMParams(num_nodes=150, num_classes=2, feature_dim=12), seed=2, name="c")
    y = np.random.default_rng(0).normal(size=c.num_nodes).astype(np.float32)
    c = dataclasses.replace(c, y=y, task="regression", num_classes=0, splits=())
    return [a, b, c]


def test_build_corpus_tables_features_and_pes(tmp_path):
    ds = _datasets()
    cache = LaplacianPECache(tmp_path)
    corpus = build_corpus(ds, feature_dim=16, pe_dim=4, node_budget=2048, seed=0, pe_cache=cache)
    table = [(d.name, d.num_features, d.num_classes, d.task) for d in corpus.datasets]
    assert table == [
        ("a", 16, 3, "classification"),
        ("b", 8, 4, "classification"),
        ("c", 12, 0, "regression"),
    ]
    for d, g in zip(ds, corpus.graphs, strict=True):
        np.testing.assert_array_equal(g.pe, laplacian_pe(d.senders, d.receivers, d.num_nodes, 4))
    np.testing.assert_array_equal(corpus.graphs[1].features, ds[1].x)  # narrow: unchanged
    assert cache.misses == 3
    # Building again hits the cache.
    build_corpus(ds, feature_dim=16, pe_dim=4, node_budget=2048, seed=0, pe_cache=cache)
    assert cache.misses == 3 and cache.hits == 3
    # Dataset c had no split: seeded 60/20/20 over all nodes (regression).
    split = corpus.graphs[2].split
    assert (split.train.sum(), split.val.sum(), split.test.sum()) == (90, 30, 30)
    np.testing.assert_array_equal(
        corpus.train_nodes_per_dataset(),
        [ds[0].splits[0].train.sum(), ds[1].splits[0].train.sum(), 90],
    )


def test_units_whole_graphs_and_saint_subgraphs():
    ds = _datasets()
    corpus = build_corpus(ds, feature_dim=16, pe_dim=4, node_budget=2048, seed=0)
    assert corpus.max_unit_nodes == 1024 and set(corpus.samplers) == {1}
    units = corpus.units(0)
    whole = [u for u in units if u.nodes is None]
    subs = [u for u in units if u.nodes is not None]
    assert [u.graph for u in whole] == [0, 2]
    assert all(u.graph == 1 and u.size <= 1024 for u in subs)
    assert sum(u.size for u in subs) >= 2500
    # Deterministic per (seed, epoch).
    again = [u for u in corpus.units(0) if u.nodes is not None]
    assert all(np.array_equal(x.nodes, y.nodes) for x, y in zip(subs, again, strict=True))
    assert not np.array_equal(subs[0].nodes, corpus.units(1)[1].nodes)
    # A subgraph's rows are the full graph's rows; its adjacency is the induced one.
    sub = subs[0]
    pu = corpus.materialize(sub)
    g = corpus.graphs[1]
    np.testing.assert_array_equal(pu.pe, g.pe[sub.nodes])
    np.testing.assert_array_equal(pu.features, g.features[sub.nodes])
    np.testing.assert_array_equal(pu.labels, g.labels[sub.nodes])
    s, r = induced_subgraph(g.indptr, g.indices, sub.nodes)
    got = {
        (i, int(j)) for i in range(sub.size) for j in pu.indices[pu.indptr[i] : pu.indptr[i + 1]]
    }
    assert got == set(zip(s.tolist(), r.tolist(), strict=True))
    # Roots are training nodes, so every subgraph has targets.
    assert pu.candidates().size > 0


def test_graph_classification_set():
    rng = np.random.default_rng(0)
    graphs = tuple(
        SmallGraph(
            senders=np.arange(n - 1),
            receivers=np.arange(1, n),
            num_nodes=n,
            x=rng.normal(size=(n, 5)),
        )
        for n in (4, 6, 5)
    )
    gset = GraphClassificationDataset(
        name="tu", graphs=graphs, y=np.array([0, 1, 1]), num_classes=2
    )
    corpus = build_corpus([gset], feature_dim=3, pe_dim=2, node_budget=64, seed=0)
    assert corpus.datasets[0].task == "graph_classification"
    assert [g.num_nodes for g in corpus.graphs] == [4, 6, 5]
    assert [g.graph_label for g in corpus.graphs] == [0, 1, 1]
    assert corpus.train_nodes_per_dataset().tolist() == [0]
    assert all(g.features.shape[1] == 3 for g in corpus.graphs)


def test_bad_input_is_named():
    a, _b, _ = _datasets()
    kw = dict(feature_dim=8, pe_dim=2, node_budget=512)
    x = a.x.copy()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"a .*NaN"):
        build_corpus([dataclasses.replace(a, x=x)], **kw)
    y = a.y.copy()
    y[0] = 7
    with pytest.raises(ValueError, match=r"a .*labels outside"):
        build_corpus([dataclasses.replace(a, y=y)], **kw)
    with pytest.raises(ValueError, match="duplicate"):
        build_corpus([a, a], **kw)
    s = a.senders.copy()
    s[0] = a.num_nodes
    with pytest.raises(ValueError, match="edge index"):
        build_corpus([dataclasses.replace(a, senders=s)], **kw)
    with pytest.raises(ValueError, match="max_unit_nodes"):
        build_corpus([a], max_unit_nodes=1000, **kw)
