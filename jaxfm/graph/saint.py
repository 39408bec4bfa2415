"""GraphSAINT random-walk subgraphs (Zeng et al. 2020; GraphFM appendix C.2).

A graph above the packing node budget is trained on as induced subgraphs: pick ``num_roots``
root nodes uniformly at random (optionally among candidate nodes, e.g. labelled ones), walk
``walk_length`` uniform random steps from each, and take the subgraph induced by every visited
node. A subgraph has at most ``num_roots * (walk_length + 1)`` nodes, so choosing
``num_roots = budget // (walk_length + 1)`` keeps it within a node budget.

The graph is treated as undirected (the walk and the induced edges use the symmetrised
adjacency). Samples are a pure function of ``(seed, epoch, index)``; per epoch,
:meth:`SaintSampler.epoch_subgraphs` draws subgraphs until their node counts add up to the
graph's size (``coverage`` times), so a big graph contributes about as many node rows per
epoch as it has nodes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SaintSampler", "csr_adjacency", "induced_subgraph", "random_walk_nodes"]


def csr_adjacency(
    senders: np.ndarray, receivers: np.ndarray, num_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrised, de-duplicated adjacency without self-loops as CSR ``(indptr, indices)``.

    Shapes:
      senders, receivers: ``[E]``; returns ``indptr [N + 1]`` (int64), ``indices [E']`` (int64),
      each row's neighbours sorted ascending.
    """
    s = np.asarray(senders, np.int64)
    r = np.asarray(receivers, np.int64)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"csr_adjacency: senders {s.shape} / receivers {r.shape} must match (1-D)")
    if s.size and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= num_nodes):
        raise ValueError(f"csr_adjacency: an edge index is outside [0, num_nodes={num_nodes})")
    keep = s != r
    src = np.concatenate([s[keep], r[keep]])
    dst = np.concatenate([r[keep], s[keep]])
    keys = np.unique(src * max(num_nodes, 1) + dst)
    src, dst = keys // max(num_nodes, 1), keys % max(num_nodes, 1)
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=num_nodes), out=indptr[1:])
    return indptr, dst


def random_walk_nodes(
    indptr: np.ndarray,
    indices: np.ndarray,
    roots: np.ndarray,
    walk_length: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sorted unique nodes visited by uniform random walks of ``walk_length`` steps from ``roots``.

    A walker on a node without neighbours stays put.
    """
    cur = np.asarray(roots, np.int64)
    visited = [cur]
    for _ in range(walk_length):
        start = indptr[cur]
        deg = indptr[cur + 1] - start
        step = np.floor(rng.random(cur.size) * deg).astype(np.int64)
        nxt = indices[np.minimum(start + step, max(indices.size - 1, 0))] if indices.size else cur
        cur = np.where(deg > 0, nxt, cur)
        visited.append(cur)
    return np.unique(np.concatenate(visited))


def induced_subgraph(
    indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the subgraph induced by sorted unique ``nodes``, in local ids (both directions).

    Cost O(sum of the nodes' degrees); no O(N) scratch array.

    Shapes:
      nodes: ``[n]`` sorted unique; returns ``senders, receivers`` ``int32 [e]`` in ``[0, n)``.
    """
    nodes = np.asarray(nodes, np.int64)
    if nodes.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    start = indptr[nodes]
    deg = indptr[nodes + 1] - start
    total = int(deg.sum())
    owner = np.repeat(np.arange(nodes.size), deg)
    offset = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
    nbr = indices[np.repeat(start, deg) + offset]
    local = np.searchsorted(nodes, nbr)
    inside = local < nodes.size
    inside[inside] = nodes[local[inside]] == nbr[inside]
    return owner[inside].astype(np.int32), local[inside].astype(np.int32)


class SaintSampler:
    """GraphSAINT random-walk subgraph sampler over one graph.

    Args:
      senders, receivers: ``[E]`` edges of the graph (treated as undirected).
      num_nodes: N.
      num_roots: walk roots per subgraph (>= 1).
      walk_length: steps per walk (>= 0; GraphSAINT uses 2-4).
      seed: base seed.
      root_candidates: node ids roots are drawn from (default: all nodes), e.g. the labelled
        training nodes so every subgraph has targets.
    """

    def __init__(
        self,
        senders: np.ndarray,
        receivers: np.ndarray,
        num_nodes: int,
        *,
        num_roots: int,
        walk_length: int = 2,
        seed: int = 0,
        root_candidates: np.ndarray | None = None,
    ):
        if num_roots < 1:
            raise ValueError(f"SaintSampler: num_roots must be >= 1, got {num_roots}")
        if walk_length < 0:
            raise ValueError(f"SaintSampler: walk_length must be >= 0, got {walk_length}")
        if num_nodes < 1:
            raise ValueError(f"SaintSampler: num_nodes must be >= 1, got {num_nodes}")
        self.indptr, self.indices = csr_adjacency(senders, receivers, num_nodes)
        self.num_nodes = int(num_nodes)
        self.num_roots = int(num_roots)
        self.walk_length = int(walk_length)
        self.seed = int(seed)
        cand = np.arange(num_nodes) if root_candidates is None else np.asarray(root_candidates)
        if cand.size == 0:
            cand = np.arange(num_nodes)
        self.root_candidates = cand.astype(np.int64)

    @property
    def max_nodes(self) -> int:
        """Upper bound on a subgraph's node count."""
        return min(self.num_nodes, self.num_roots * (self.walk_length + 1))

    def sample(self, epoch: int, index: int) -> np.ndarray:
        """Sorted node ids of subgraph ``index`` of ``epoch``."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 0x5A1])
        roots = rng.choice(
            self.root_candidates,
            size=min(self.num_roots, self.root_candidates.size),
            replace=False,
        )
        return random_walk_nodes(self.indptr, self.indices, roots, self.walk_length, rng)

    def epoch_subgraphs(self, epoch: int, *, coverage: float = 1.0) -> list[np.ndarray]:
        """Subgraphs of ``epoch``, drawn until their sizes sum to ``>= coverage * N``."""
        if coverage <= 0:
            raise ValueError(f"SaintSampler: coverage must be > 0, got {coverage}")
        out, total, i = [], 0, 0
        while total < coverage * self.num_nodes:
            nodes = self.sample(epoch, i)
            out.append(nodes)
            total += nodes.size
            i += 1
        return out

    def subgraph_edges(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local edges of the subgraph induced by ``nodes`` (see :func:`induced_subgraph`)."""
        return induced_subgraph(self.indptr, self.indices, nodes)
