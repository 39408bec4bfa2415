"""GraphSAINT random-walk subgraphs."""

import numpy as np
import pytest

from jaxfm.data.sbm import SBMParams, sbm_graph
from jaxfm.graph.saint import SaintSampler, csr_adjacency, induced_subgraph, random_walk_nodes


def _graph(n=400, seed=0):
    g = sbm_graph(SBMParams(num_nodes=n, num_classes=3, avg_degree=4), seed=seed)
    return g.senders, g.receivers, g.num_nodes


def test_csr_adjacency_symmetrises_and_dedups():
    indptr, indices = csr_adjacency([0, 0, 1, 2, 2], [1, 1, 0, 2, 3], 4)
    rows = [indices[indptr[i] : indptr[i + 1]].tolist() for i in range(4)]
    assert rows == [[1], [0], [3], [2]]  # duplicate 0-1 merged, self-loop 2-2 dropped


def test_induced_subgraph_matches_brute_force():
    s, r, n = _graph()
    indptr, indices = csr_adjacency(s, r, n)
    nodes = np.sort(np.random.default_rng(0).choice(n, 120, replace=False))
    ls, lr = induced_subgraph(indptr, indices, nodes)
    got = set(zip(nodes[ls].tolist(), nodes[lr].tolist(), strict=True))
    inside = set(nodes.tolist())
    want = {
        (a, b) for a, b in zip(s.tolist(), r.tolist(), strict=True) if a in inside and b in inside
    }
    assert got == want
    assert induced_subgraph(indptr, indices, np.zeros(0, np.int64))[0].size == 0


def test_random_walk_stays_within_walk_length_hops():
    s, r, n = _graph()
    indptr, indices = csr_adjacency(s, r, n)
    roots = np.array([0, 10, 20])
    nodes = random_walk_nodes(indptr, indices, roots, 3, np.random.default_rng(0))
    assert nodes.size <= roots.size * 4
    # Every visited node is within 3 hops of a root.
    reach = set(roots.tolist())
    frontier = set(reach)
    for _ in range(3):
        frontier = {int(v) for u in frontier for v in indices[indptr[u] : indptr[u + 1]]}
        reach |= frontier
    assert set(nodes.tolist()) <= reach
    assert set(roots.tolist()) <= set(nodes.tolist())
    # Walk length 0 gives the roots; an isolated node keeps its walker.
    np.testing.assert_array_equal(
        random_walk_nodes(indptr, indices, roots, 0, np.random.default_rng(0)), roots
    )
    ip, ix = csr_adjacency([0], [1], 3)  # node 2 isolated
    np.testing.assert_array_equal(
        random_walk_nodes(ip, ix, np.array([2]), 5, np.random.default_rng(1)), [2]
    )


def test_sampler_deterministic_bounded_and_covering():
    s, r, n = _graph(1000)
    cand = np.arange(0, n, 2)
    sampler = SaintSampler(s, r, n, num_roots=50, walk_length=2, seed=4, root_candidates=cand)
    a, b = (
        sampler.sample(3, 1),
        SaintSampler(s, r, n, num_roots=50, seed=4, root_candidates=cand).sample(3, 1),
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampler.sample(4, 1))
    assert not np.array_equal(a, sampler.sample(3, 2))
    subs = sampler.epoch_subgraphs(0)
    sizes = [x.size for x in subs]
    assert all(x <= sampler.max_nodes == 150 for x in sizes)
    assert sum(sizes) >= n > sum(sizes[:-1])
    # Roots come from the candidates: with walk length 0 only candidates are sampled.
    only_roots = SaintSampler(s, r, n, num_roots=30, walk_length=0, root_candidates=cand)
    assert np.isin(only_roots.sample(0, 0), cand).all()
    # Local edges of a sample are the induced edges.
    ls, lr = sampler.subgraph_edges(a)
    assert ls.size and (ls < a.size).all() and (lr < a.size).all()


def test_sampler_validation():
    with pytest.raises(ValueError, match="num_roots"):
        SaintSampler([0], [1], 2, num_roots=0)
