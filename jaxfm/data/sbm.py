"""GraphWorld-style degree-corrected stochastic block model graphs, and homophily statistics.

GraphFM (appendix B.1) adds synthetic graphs made with GraphWorld's SBM generator to the
pretraining corpus, mostly to enrich the low-homophily regime. The parameter ranges follow the
paper's table:

=========================  ===================================================  =============
parameter                  meaning                                              range
=========================  ===================================================  =============
``num_nodes``              number of vertices                                   32 - 500,000
``edge_ratio``             in-cluster / out-cluster edge probability (p/q)      0.1 - 10
``avg_degree``             expected average degree                              1 - 20
``feature_center_spread``  variance of the class feature centres                0 - 5
``num_classes``            number of clusters = node labels                     2 - 6
``cluster_size_slope``     slope of the cluster sizes, index-ordered            0 - 0.5
``power_exponent``         exponent of the expected-degree power law            0.5 - 1.0
=========================  ===================================================  =============

Generation (all vectorised, memory O(N + E), never an N x N matrix):

- cluster shares ``pi_c ∝ 1 + slope * c`` (c = 0..C-1), sizes by largest-remainder rounding;
  node labels are the clusters;
- degree propensities ``theta_i`` from a power law ``p(x) ∝ x^-gamma`` truncated to
  ``[1, sqrt(N)]`` (the cutoff keeps every Chung-Lu edge probability well below 1);
- an undirected edge picks its ordered cluster pair ``(a, b)`` with probability
  ``∝ n_a n_b B_ab`` (``B`` = ``edge_ratio`` on the diagonal, 1 off it), then each endpoint
  inside its cluster with probability ``∝ theta``. Self-loops and duplicates are dropped and
  edges are redrawn until ``round(avg_degree * N / 2)`` distinct edges exist, so the realised
  average degree matches the request (expected edge homophily
  ``sum_a n_a^2 r / sum_ab n_a n_b B_ab``, :func:`expected_edge_homophily`);
- features ``x_i = mu_{y_i} + eps_i`` with centres ``mu_c ~ N(0, spread * I)`` and
  ``eps ~ N(0, I)`` (GraphWorld's "feature center distance" is the centres' variance).

Homophily (:func:`homophily`): edge homophily = share of edges joining two nodes of the same
class; node homophily (the paper's formula, Pei et al. 2020) = mean over nodes with at least one
neighbour of the share of their neighbours with the same class.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from jaxfm.data.graph_dataset import NodeDataset, Split
from jaxfm.data.splits import split_nodes

__all__ = [
    "PARAM_RANGES",
    "Homophily",
    "SBMParams",
    "expected_edge_homophily",
    "homophily",
    "sample_sbm_params",
    "sbm_corpus",
    "sbm_graph",
]

# The paper's GraphWorld ranges (appendix B.1).
PARAM_RANGES = {
    "num_nodes": (32, 500_000),
    "edge_ratio": (0.1, 10.0),
    "avg_degree": (1.0, 20.0),
    "feature_center_spread": (0.0, 5.0),
    "num_classes": (2, 6),
    "cluster_size_slope": (0.0, 0.5),
    "power_exponent": (0.5, 1.0),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SBMParams:
    """Parameters of one SBM graph (see the module docstring for their meaning and ranges).

    Values outside the paper's ranges are allowed where they still make sense (for tests and
    ablations); impossible ones raise ``ValueError``.
    """

    num_nodes: int
    num_classes: int = 4
    edge_ratio: float = 1.0
    avg_degree: float = 8.0
    feature_center_spread: float = 1.0
    cluster_size_slope: float = 0.0
    power_exponent: float = 0.75
    feature_dim: int = 16

    def __post_init__(self):
        if self.num_nodes < 2:
            raise ValueError(f"SBMParams.num_nodes must be >= 2, got {self.num_nodes}")
        if not 1 <= self.num_classes <= self.num_nodes:
            raise ValueError(
                f"SBMParams.num_classes must be in [1, num_nodes={self.num_nodes}], "
                f"got {self.num_classes}"
            )
        if self.edge_ratio <= 0:
            raise ValueError(f"SBMParams.edge_ratio must be > 0, got {self.edge_ratio}")
        if not 0 < self.avg_degree <= (self.num_nodes - 1) / 2:
            raise ValueError(
                f"SBMParams.avg_degree must be in (0, (num_nodes - 1) / 2 = "
                f"{(self.num_nodes - 1) / 2}], got {self.avg_degree}"
            )
        if self.feature_center_spread < 0:
            raise ValueError("SBMParams.feature_center_spread must be >= 0")
        if self.cluster_size_slope < 0:
            raise ValueError("SBMParams.cluster_size_slope must be >= 0")
        if self.power_exponent < 0:
            raise ValueError("SBMParams.power_exponent must be >= 0")
        if self.feature_dim < 1:
            raise ValueError(f"SBMParams.feature_dim must be >= 1, got {self.feature_dim}")


class Homophily(NamedTuple):
    """Edge homophily (share of same-class edges) and node homophily (mean per-node share)."""

    edge: float
    node: float


def homophily(
    senders: np.ndarray, receivers: np.ndarray, labels: np.ndarray, *, num_nodes: int | None = None
) -> Homophily:
    """Edge and node homophily of a labelled graph.

    Edges touching an unlabelled node (label < 0) are ignored. Node homophily averages, over the
    nodes with at least one (labelled) in-neighbour, the share of in-neighbours
    (``senders -> v``) with v's class; an undirected graph stores both directions, so that is the
    share of neighbours. NaN when no edge counts.

    Shapes:
      senders, receivers: ``[E]``; labels: ``[N]``.
    """
    s = np.asarray(senders, np.int64)
    r = np.asarray(receivers, np.int64)
    y = np.asarray(labels)
    n = y.shape[0] if num_nodes is None else int(num_nodes)
    keep = (y[s] >= 0) & (y[r] >= 0)
    s, r = s[keep], r[keep]
    if s.size == 0:
        return Homophily(float("nan"), float("nan"))
    same = y[s] == y[r]
    deg = np.bincount(r, minlength=n)
    same_deg = np.bincount(r, weights=same, minlength=n)
    has = deg > 0
    return Homophily(float(same.mean()), float(np.mean(same_deg[has] / deg[has])))


def _cluster_sizes(n: int, num_classes: int, slope: float) -> np.ndarray:
    """Cluster sizes ``∝ 1 + slope * c`` summing to ``n``, each at least 1 (largest remainder)."""
    pi = 1.0 + slope * np.arange(num_classes)
    raw = pi / pi.sum() * (n - num_classes)
    sizes = np.floor(raw).astype(np.int64)
    rest = n - num_classes - sizes.sum()
    sizes[np.argsort(-(raw - sizes), kind="stable")[:rest]] += 1
    return sizes + 1


def _block_weights(sizes: np.ndarray, ratio: float) -> np.ndarray:
    """``[C, C]`` probability of an edge's ordered cluster pair, ``∝ n_a n_b B_ab``."""
    w = np.outer(sizes, sizes).astype(np.float64)
    w[np.diag_indices_from(w)] *= ratio
    return w / w.sum()


def expected_edge_homophily(params: SBMParams) -> float:
    """Edge homophily the generator aims at: the in-cluster share of the pair probabilities."""
    sizes = _cluster_sizes(params.num_nodes, params.num_classes, params.cluster_size_slope)
    return float(np.trace(_block_weights(sizes, params.edge_ratio)))


def _power_law(rng: np.random.Generator, n: int, gamma: float, upper: float) -> np.ndarray:
    """Samples of ``p(x) ∝ x^-gamma`` on ``[1, upper]`` by inverting the CDF."""
    u = rng.random(n)
    if upper <= 1:
        return np.ones(n)
    if abs(gamma - 1.0) < 1e-9:
        return upper**u
    a = 1.0 - gamma
    return (1.0 + u * (upper**a - 1.0)) ** (1.0 / a)


def _sample_edges(
    rng: np.random.Generator,
    labels: np.ndarray,
    sizes: np.ndarray,
    theta: np.ndarray,
    ratio: float,
    num_edges: int,
) -> np.ndarray:
    """``int64 [M, 2]`` distinct undirected edges (u < v) of the degree-corrected SBM."""
    n = labels.size
    num_classes = sizes.size
    order = np.argsort(labels, kind="stable")  # nodes grouped by cluster
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Per-cluster CDF of the propensities, over the grouped order.
    theta_g = theta[order]
    cdf = np.cumsum(theta_g)
    block_start = np.concatenate([[0.0], cdf[np.cumsum(sizes)[:-1] - 1]])
    block_total = cdf[np.cumsum(sizes) - 1] - block_start
    pair_p = _block_weights(sizes, ratio).ravel()
    max_pairs = n * (n - 1) // 2
    num_edges = min(num_edges, max_pairs)
    keys = np.empty(0, np.int64)
    for _ in range(64):
        missing = num_edges - keys.size
        if missing <= 0:
            break
        draw = int(missing * 1.1) + 16
        pair = rng.choice(num_classes * num_classes, size=draw, p=pair_p)
        ends = []
        for blk in (pair // num_classes, pair % num_classes):
            target = block_start[blk] + rng.random(draw) * block_total[blk]
            pos = np.searchsorted(cdf, target, side="right")
            pos = np.clip(pos, starts[blk], starts[blk] + sizes[blk] - 1)
            ends.append(order[pos])
        u, v = ends
        ok = u != v
        lo, hi = np.minimum(u[ok], v[ok]), np.maximum(u[ok], v[ok])
        new = lo.astype(np.int64) * n + hi
        # Keep first occurrences in draw order (so the result does not depend on sorting luck).
        _, first = np.unique(new, return_index=True)
        new = new[np.sort(first)]
        new = new[~np.isin(new, keys)]
        keys = np.concatenate([keys, new[:missing]])
    return np.stack([keys // n, keys % n], axis=1)


def sbm_graph(params: SBMParams, *, seed: int = 0, name: str = "sbm") -> NodeDataset:
    """One degree-corrected SBM graph as a :class:`NodeDataset` (classification by cluster).

    Edges are undirected (both directions stored, no self-loops or duplicates); features are
    ``float32 [N, feature_dim]``; the split is a seeded, class-stratified 60/20/20 one.
    Deterministic given ``(params, seed)``.

    Example:
      >>> g = sbm_graph(SBMParams(num_nodes=100, num_classes=3, avg_degree=4.0), seed=0)
      >>> g.num_nodes, g.num_edges, g.num_classes
      (100, 400, 3)
    """
    rng = np.random.default_rng([int(seed), 0x5B3])
    n, c = params.num_nodes, params.num_classes
    sizes = _cluster_sizes(n, c, params.cluster_size_slope)
    labels = rng.permutation(np.repeat(np.arange(c), sizes)).astype(np.int32)
    theta = _power_law(rng, n, params.power_exponent, math.sqrt(n))
    num_edges = round(params.avg_degree * n / 2)
    edges = _sample_edges(rng, labels, sizes, theta, params.edge_ratio, num_edges)
    senders = np.concatenate([edges[:, 0], edges[:, 1]]).astype(np.int32)
    receivers = np.concatenate([edges[:, 1], edges[:, 0]]).astype(np.int32)
    centers = rng.normal(0.0, math.sqrt(params.feature_center_spread), (c, params.feature_dim))
    x = (centers[labels] + rng.normal(size=(n, params.feature_dim))).astype(np.float32)
    train, val, test = split_nodes(n, (0.6, 0.2, 0.2), seed=int(seed), stratify=labels)
    masks = []
    for idx in (train, val, test):
        m = np.zeros(n, bool)
        m[idx] = True
        masks.append(m)
    return NodeDataset(
        name=name,
        senders=senders,
        receivers=receivers,
        num_nodes=n,
        x=x,
        y=labels,
        num_classes=c,
        task="classification",
        splits=(Split(*masks),),
        source=f"synthetic:{params}",
    )


def sample_sbm_params(
    rng: np.random.Generator,
    *,
    node_range: tuple[int, int] = PARAM_RANGES["num_nodes"],
    feature_dim: int = 16,
) -> SBMParams:
    """Draws one parameter set from the paper's ranges.

    ``num_nodes``, ``edge_ratio`` are log-uniform (they span orders of magnitude), the others
    uniform; ``avg_degree`` is capped at ``(num_nodes - 1) / 2`` for tiny graphs.
    """
    lo, hi = node_range
    if not 2 <= lo <= hi:
        raise ValueError(
            f"sample_sbm_params: node_range must satisfy 2 <= lo <= hi, got {node_range}"
        )
    r = PARAM_RANGES
    n = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    log_ratio = rng.uniform(math.log(r["edge_ratio"][0]), math.log(r["edge_ratio"][1]))
    num_classes = int(rng.integers(r["num_classes"][0], r["num_classes"][1] + 1))
    return SBMParams(
        num_nodes=n,
        num_classes=min(num_classes, n),
        edge_ratio=float(math.exp(log_ratio)),
        avg_degree=float(min(rng.uniform(*r["avg_degree"]), (n - 1) / 2)),
        feature_center_spread=float(rng.uniform(*r["feature_center_spread"])),
        cluster_size_slope=float(rng.uniform(*r["cluster_size_slope"])),
        power_exponent=float(rng.uniform(*r["power_exponent"])),
        feature_dim=feature_dim,
    )


def sbm_corpus(
    num_graphs: int,
    seed: int = 0,
    *,
    node_range: tuple[int, int] = (64, 2000),
    feature_dim: int = 16,
    name_prefix: str = "sbm",
) -> list[NodeDataset]:
    """``num_graphs`` SBM graphs with parameters drawn from the paper's ranges.

    The default ``node_range`` keeps the built-in corpus small (the paper goes up to 500k nodes).
    Graph ``i`` is named ``f"{name_prefix}_{i:03d}"``; the corpus is a pure function of
    ``(num_graphs, seed, node_range, feature_dim)`` and graph ``i`` does not depend on
    ``num_graphs``.
    """
    if num_graphs < 0:
        raise ValueError(f"sbm_corpus: num_graphs must be >= 0, got {num_graphs}")
    graphs = []
    for i in range(num_graphs):
        rng = np.random.default_rng([int(seed), i, 0x5B4])
        params = sample_sbm_params(rng, node_range=node_range, feature_dim=feature_dim)
        graphs.append(
            sbm_graph(params, seed=int(rng.integers(2**31)), name=f"{name_prefix}_{i:03d}")
        )
    return graphs
