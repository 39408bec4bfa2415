"""Laplacian eigenvector PE: exact small graphs, dense == sparse, disconnected graphs, cache."""

import numpy as np
import pytest

from jaxfm.data.sbm import SBMParams, sbm_graph
from jaxfm.graph.laplacian import (
    LaplacianPECache,
    graph_fingerprint,
    laplacian_pe,
    normalized_laplacian,
)


def _path(n, offset=0):
    s = np.arange(n - 1) + offset
    return s, s + 1


def _cycle(n, offset=0):
    s = np.arange(n) + offset
    return s, (np.arange(n) + 1) % n + offset


def _projector(v):
    return v @ v.T


def test_path_graph_matches_closed_form():
    # Normalized Laplacian of the path P_n: lambda_j = 1 - cos(pi j / (n - 1)),
    # eigenvector_j(i) ∝ sqrt(d_i) cos(pi j i / (n - 1)).
    n, k = 10, 4
    pe, vals = laplacian_pe(*_path(n), n, k, return_eigenvalues=True)
    j = np.arange(1, k + 1)
    np.testing.assert_allclose(vals, 1 - np.cos(np.pi * j / (n - 1)), atol=1e-10)
    deg = np.full(n, 2.0)
    deg[[0, -1]] = 1.0
    i = np.arange(n)[:, None]
    ref = np.sqrt(deg)[:, None] * np.cos(np.pi * j[None] * i / (n - 1))
    ref /= np.linalg.norm(ref, axis=0)
    np.testing.assert_allclose(np.abs(np.sum(pe * ref, axis=0)), 1.0, atol=1e-6)  # up to sign
    # Sign convention: the first largest-magnitude entry of each column is positive.
    first = np.argmax(np.abs(pe) >= np.abs(pe).max(0) - 1e-6, axis=0)
    assert (pe[first, np.arange(k)] > 0).all()


def test_cycle_graph_degenerate_eigenspaces():
    # C_n: lambda_j = 1 - cos(2 pi j / n), each non-trivial one twice (cos and sin modes).
    n, k = 8, 4
    pe, vals = laplacian_pe(*_cycle(n), n, k, return_eigenvalues=True)
    np.testing.assert_allclose(vals, 1 - np.cos(2 * np.pi * np.array([1, 1, 2, 2]) / n), atol=1e-10)
    t = 2 * np.pi * np.arange(n)[:, None] / n
    for cols, jj in (([0, 1], 1), ([2, 3], 2)):
        ref = np.concatenate([np.cos(jj * t), np.sin(jj * t)], axis=1)
        ref /= np.linalg.norm(ref, axis=0)
        np.testing.assert_allclose(_projector(pe[:, cols]), _projector(ref), atol=1e-6)


def _group_projectors_close(a, b, vals, tol):
    """Compares the eigenspaces of equal eigenvalues (rotation inside them is arbitrary)."""
    groups = np.split(np.arange(vals.size), np.flatnonzero(np.diff(vals) > 1e-6) + 1)
    for g in groups[:-1]:  # the last group may be cut by k
        np.testing.assert_allclose(_projector(a[:, g]), _projector(b[:, g]), atol=tol)


def test_dense_and_eigsh_agree_on_medium_graph():
    g = sbm_graph(SBMParams(num_nodes=800, num_classes=3, edge_ratio=4, avg_degree=8), seed=0)
    k = 8
    dense, v_dense = laplacian_pe(
        g.senders, g.receivers, g.num_nodes, k, method="dense", return_eigenvalues=True
    )
    sparse, v_sparse = laplacian_pe(
        g.senders, g.receivers, g.num_nodes, k, method="eigsh", return_eigenvalues=True
    )
    np.testing.assert_allclose(v_dense, v_sparse, atol=1e-7)
    _group_projectors_close(dense.astype(np.float64), sparse.astype(np.float64), v_dense, 1e-4)
    # Generic random graph: eigenvalues are simple, so columns agree up to sign.
    np.testing.assert_allclose(np.abs(np.sum(dense * sparse, axis=0)), 1.0, atol=1e-4)
    # And "auto" with a small threshold takes the sparse path.
    auto = laplacian_pe(g.senders, g.receivers, g.num_nodes, k, dense_threshold=100)
    np.testing.assert_allclose(np.abs(np.sum(dense * auto, axis=0)), 1.0, atol=1e-4)


def test_disconnected_graph_and_isolated_nodes():
    # Path on nodes 0..4, cycle on 5..10, isolated nodes 11 and 12.
    ps, pr = _path(5)
    cs, cr = _cycle(6, offset=5)
    s, r = np.concatenate([ps, cs]), np.concatenate([pr, cr])
    n, k = 13, 6
    pe, vals = laplacian_pe(s, r, n, k, return_eigenvalues=True)
    path_vals = 1 - np.cos(np.pi * np.arange(1, 5) / 4)
    cycle_vals = 1 - np.cos(2 * np.pi * np.array([1, 1, 2, 2, 3]) / 6)
    np.testing.assert_allclose(
        vals, np.sort(np.concatenate([path_vals, cycle_vals]))[:k], atol=1e-9
    )
    assert (vals > 1e-9).all()  # no trivial (zero-eigenvalue) vector
    np.testing.assert_array_equal(pe[11:], 0.0)  # isolated nodes
    lap = normalized_laplacian(s, r, n).toarray()
    pe64 = pe.astype(np.float64)
    np.testing.assert_allclose(lap @ pe64, pe64 * vals, atol=1e-6)
    np.testing.assert_allclose(pe64.T @ pe64, np.eye(k), atol=1e-6)
    # Each column lives on one component.
    on_path = np.abs(pe[:5]).sum(0) > 0
    on_cycle = np.abs(pe[5:11]).sum(0) > 0
    assert not (on_path & on_cycle).any()


def test_small_graphs_are_zero_padded():
    pe, vals = laplacian_pe([0, 1, 2], [1, 2, 0], 3, 5, return_eigenvalues=True)  # triangle
    assert pe.shape == (3, 5)
    np.testing.assert_allclose(vals[:2], [1.5, 1.5], atol=1e-12)
    np.testing.assert_array_equal(pe[:, 2:], 0.0)
    np.testing.assert_array_equal(laplacian_pe([], [], 1, 4), np.zeros((1, 4), np.float32))
    assert laplacian_pe([0], [1], 2, 0).shape == (2, 0)


def test_laplacian_pe_rejects_bad_edges():
    with pytest.raises(ValueError, match="outside"):
        laplacian_pe([0, 5], [1, 2], 4, 2)


def test_fingerprint_ignores_direction_order_and_duplicates():
    a = graph_fingerprint([0, 1, 2], [1, 2, 3], 4)
    assert a == graph_fingerprint([3, 1, 0, 2, 1, 2], [2, 2, 1, 1, 0, 2], 4)
    assert a != graph_fingerprint([0, 1, 2], [1, 2, 3], 5)
    assert a != graph_fingerprint([0, 1], [1, 2], 4)


def test_cache_memory_and_disk(tmp_path):
    s, r = _cycle(12)
    cache = LaplacianPECache(tmp_path)
    first = cache.get(s, r, 12, 4)
    again = cache.get(r[::-1], s[::-1], 12, 4)  # same undirected graph
    assert again is first and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, laplacian_pe(s, r, 12, 4))
    assert len(list(tmp_path.glob("*.npy"))) == 1
    fresh = LaplacianPECache(tmp_path)
    np.testing.assert_array_equal(fresh.get(s, r, 12, 4), first)
    assert (fresh.hits, fresh.misses) == (1, 0)  # read from disk
    # A corrupt file is recomputed, not used.
    path = next(tmp_path.glob("*.npy"))
    path.write_bytes(b"garbage")
    broken = LaplacianPECache(tmp_path)
    np.testing.assert_array_equal(broken.get(s, r, 12, 4), first)
    assert broken.misses == 1
    # A different k is a different entry.
    assert cache.get(s, r, 12, 2).shape == (12, 2) and cache.misses == 2
