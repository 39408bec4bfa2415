"""Structural node features for graphs that come without node features.

Airports, email-Eu-core, PolBlogs, the karate club and other structure-only graphs still need an
``x`` for GraphFM's per-dataset feature MLP. These features depend only on the (symmetrised,
self-loop-free) structure, are cheap (``O(E)`` plus one sparse product for triangles) and are
comparable across graphs (no per-graph normalisation except where stated):

=======================  ====================================================================
columns                  meaning
=======================  ====================================================================
``0 .. max_degree``      one-hot of ``min(degree, max_degree)`` (the last column = ">= max")
``max_degree + 1``       ``log1p(degree)``
``max_degree + 2``       mean ``log1p(degree)`` over the neighbours (0 for isolated nodes)
``max_degree + 3``       local clustering coefficient ``2 t_i / (d_i (d_i - 1))`` (0 if d < 2)
``max_degree + 4``       ``log(N * pagerank_i)`` (damping 0.85, 30 power iterations; 0 means
                         "as central as the uniform distribution")
=======================  ====================================================================

Degrees count distinct neighbours in the undirected simple graph.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["DEFAULT_MAX_DEGREE", "structural_feature_names", "structural_features"]

DEFAULT_MAX_DEGREE = 31
_PAGERANK_DAMPING = 0.85
_PAGERANK_ITERS = 30


def structural_feature_names(max_degree: int = DEFAULT_MAX_DEGREE) -> list[str]:
    """Column names of :func:`structural_features` (``max_degree + 5`` of them)."""
    onehot = [f"degree=={d}" for d in range(max_degree)]
    tail = ["log1p_degree", "mean_neighbour_log1p_degree", "clustering", "log_pagerank"]
    return [*onehot, f"degree>={max_degree}", *tail]


def _simple_adjacency(senders, receivers, n: int) -> sp.csr_matrix:
    s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    keep = s != r
    s, r = s[keep], r[keep]
    a = sp.coo_matrix(
        (np.ones(2 * s.size, np.float64), (np.concatenate([s, r]), np.concatenate([r, s]))),
        shape=(n, n),
    ).tocsr()
    a.data[:] = 1.0  # duplicates were summed by tocsr
    return a


def _triangles(a: sp.csr_matrix, deg: np.ndarray) -> np.ndarray:
    """Triangles through every node, without forming ``A @ A`` (hubs make that quadratic).

    Edges are oriented from lower to higher (degree, id) rank, so every out-degree is at most
    ``sqrt(2E)``. A triangle with ranks ``u < v < w`` is then the one pattern ``u->v->w, u->w``:
    ``(D @ D) * D`` counts it at entry ``(u, w)`` (credited to u and w) and ``(D.T @ D) * D`` at
    ``(v, w)`` (credited to v).
    """
    n = a.shape[0]
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), deg))] = np.arange(n)
    coo = a.tocoo()
    up = rank[coo.row] < rank[coo.col]
    d = sp.csr_matrix((np.ones(int(up.sum())), (coo.row[up], coo.col[up])), shape=(n, n))
    ends = (d @ d).multiply(d)  # [N, N]: (u, w) -> number of middles v
    middles = (d.T @ d).multiply(d)  # [N, N]: (v, w) -> number of starts u
    t = np.asarray(ends.sum(axis=1)).ravel() + np.asarray(ends.sum(axis=0)).ravel()
    return t + np.asarray(middles.sum(axis=1)).ravel()


def _pagerank(a: sp.csr_matrix, deg: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    p = np.full(n, 1.0 / n)
    inv = np.divide(1.0, deg, out=np.zeros(n), where=deg > 0)
    dangling = deg == 0
    for _ in range(_PAGERANK_ITERS):
        spread = a.T @ (p * inv)
        p = _PAGERANK_DAMPING * (spread + p[dangling].sum() / n) + (1 - _PAGERANK_DAMPING) / n
    return p


def structural_features(
    senders, receivers, num_nodes: int, *, max_degree: int = DEFAULT_MAX_DEGREE
) -> np.ndarray:
    """Structural features of every node (see the module docstring for the columns).

    Args:
      senders, receivers: ``[E]`` edges (either or both directions; duplicates and self loops
        are ignored).
      num_nodes: N >= 1.
      max_degree: degrees >= this share the last one-hot column.

    Returns:
      ``float32 [N, max_degree + 5]``.

    Raises:
      ValueError: ``num_nodes < 1`` or ``max_degree < 1``.
    """
    if num_nodes < 1:
        raise ValueError(f"structural_features: num_nodes must be >= 1, got {num_nodes}")
    if max_degree < 1:
        raise ValueError(f"structural_features: max_degree must be >= 1, got {max_degree}")
    n = int(num_nodes)
    a = _simple_adjacency(senders, receivers, n)
    deg = np.asarray(a.sum(axis=1)).ravel()  # [N]
    out = np.zeros((n, max_degree + 5), np.float64)
    out[np.arange(n), np.minimum(deg, max_degree).astype(np.int64)] = 1.0
    logd = np.log1p(deg)
    out[:, max_degree + 1] = logd
    out[:, max_degree + 2] = np.divide(a @ logd, deg, out=np.zeros(n), where=deg > 0)
    triangles = _triangles(a, deg)  # [N]
    pairs = deg * (deg - 1) / 2.0
    out[:, max_degree + 3] = np.divide(triangles, pairs, out=np.zeros(n), where=pairs > 0)
    out[:, max_degree + 4] = np.log(n * _pagerank(a, deg))
    return out.astype(np.float32)
