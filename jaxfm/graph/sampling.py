"""Node-level minibatches on one big graph: k-hop in-neighbourhoods padded to static budgets.

For node classification on a graph too big (or too slow) to run whole, each step takes a batch of
seed nodes and the nodes whose messages can reach them within ``num_hops`` layers. Messages flow
sender -> receiver, so the neighbourhood is the **in**-neighbourhood: node ``u`` is in it when a
directed path ``u -> ... -> seed`` of at most ``num_hops`` edges exists.

The subgraph keeps exactly the edges the expansion traverses: every in-edge of each node first
reached at hop ``d < num_hops``. Without ``max_neighbors`` a ``num_hops``-layer message-passing
model then computes the same seed outputs on the subgraph as on the full graph (sum or mean
aggregation alike); with ``max_neighbors`` each expanded node keeps a uniform sample of its in-edges
(GraphSAGE-style), which bounds the subgraph size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jraph
import numpy as np

from jaxfm.graph.batching import Budget, choose_budget, pad_to_budget

__all__ = ["KHopSubgraph", "NodeBatchSampler", "full_graph_batch", "khop_subgraph"]


@dataclasses.dataclass(frozen=True)
class KHopSubgraph:
    """A k-hop in-neighbourhood in local indexing.

    Attributes:
      node_ids: original ids of the subgraph's nodes, seeds first (in the given order), then the
        other nodes by hop, then id. ``[n]`` int64.
      senders: local sender index of each kept edge. ``[e]`` int32.
      receivers: local receiver index of each kept edge (sorted by receiver, then sender).
        ``[e]`` int32.
      edge_ids: original edge index of each kept edge (to slice edge features). ``[e]`` int64.
      seed_mask: ``True`` on the seeds (the first ``len(seeds)`` nodes). ``[n]`` bool.
    """

    node_ids: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    edge_ids: np.ndarray
    seed_mask: np.ndarray


class _InEdges:
    """CSR view of the in-edges of every node (edge ids grouped by receiver)."""

    def __init__(self, senders: np.ndarray, receivers: np.ndarray, num_nodes: int):
        senders, receivers = np.asarray(senders), np.asarray(receivers)
        if senders.ndim != 1 or senders.shape != receivers.shape:
            raise ValueError(
                f"khop_subgraph: senders and receivers must be 1-D of equal length, got "
                f"{senders.shape} and {receivers.shape}"
            )
        for field, arr in (("senders", senders), ("receivers", receivers)):
            if arr.size and (arr.min() < 0 or arr.max() >= num_nodes):
                raise ValueError(
                    f"khop_subgraph: {field} must lie in [0, {num_nodes}), got range "
                    f"[{arr.min()}, {arr.max()}]"
                )
        self.senders = senders.astype(np.int64)
        self.receivers = receivers.astype(np.int64)
        self.edge_ids = np.argsort(receivers, kind="stable")
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(receivers, minlength=num_nodes))])
        self.num_nodes = num_nodes

    def gather(self, nodes: np.ndarray, max_neighbors: int | None, rng) -> np.ndarray:
        """Edge ids of the in-edges of ``nodes`` (at most ``max_neighbors`` each, sampled)."""
        starts, ends = self.indptr[nodes], self.indptr[nodes + 1]
        counts = ends - starts
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        group = np.repeat(np.arange(nodes.size), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = np.repeat(starts, counts) + offsets
        if max_neighbors is not None and (counts > max_neighbors).any():
            # Uniform sample without replacement per node: random keys, keep the smallest ranks.
            order = np.lexsort((rng.random(total), group))
            positions = positions[order]
            keep = offsets < max_neighbors  # offsets are ranks within each (already sorted) group
            positions = positions[keep]
        return self.edge_ids[positions]


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _khop(in_edges: _InEdges, seeds: np.ndarray, num_hops: int, max_neighbors, rng):
    num_nodes = in_edges.num_nodes
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(
            f"khop_subgraph: seeds must be a 1-D integer array, got {seeds.shape} {seeds.dtype}"
        )
    if seeds.size == 0:
        raise ValueError("khop_subgraph: seeds is empty")
    if seeds.min() < 0 or seeds.max() >= num_nodes:
        raise ValueError(
            f"khop_subgraph: seeds must lie in [0, {num_nodes}), got range "
            f"[{seeds.min()}, {seeds.max()}]"
        )
    if np.unique(seeds).size != seeds.size:
        raise ValueError("khop_subgraph: seeds must be unique")
    if num_hops < 0:
        raise ValueError(f"khop_subgraph: num_hops must be >= 0, got {num_hops}")
    if max_neighbors is not None and max_neighbors < 0:
        raise ValueError(f"khop_subgraph: max_neighbors must be >= 0, got {max_neighbors}")

    local = np.full(num_nodes, -1, np.int64)  # original id -> local id
    local[seeds] = np.arange(seeds.size)
    node_ids, edge_ids = [seeds.astype(np.int64)], []
    frontier, count = seeds.astype(np.int64), seeds.size
    for _ in range(num_hops):
        edges = in_edges.gather(frontier, max_neighbors, rng)
        edge_ids.append(edges)
        new = np.unique(in_edges.senders[edges])
        new = new[local[new] < 0]
        local[new] = np.arange(count, count + new.size)
        count += new.size
        node_ids.append(new)
        frontier = new
        if new.size == 0:
            break
    node_ids = np.concatenate(node_ids)
    edge_ids = np.concatenate(edge_ids) if edge_ids else np.zeros(0, np.int64)
    return node_ids, edge_ids, local


def khop_subgraph(
    senders: np.ndarray,
    receivers: np.ndarray,
    num_nodes: int,
    seeds: np.ndarray,
    num_hops: int,
    *,
    max_neighbors: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> KHopSubgraph:
    """The ``num_hops``-hop in-neighbourhood of ``seeds`` as a local subgraph (numpy).

    Args:
      senders: source node of each edge of the big graph.
      receivers: destination node of each edge.
      num_nodes: ``N`` of the big graph.
      seeds: unique seed node ids.
      num_hops: number of expansion hops (the depth of the message-passing model).
      max_neighbors: if set, each expanded node keeps at most this many in-edges, sampled
        uniformly without replacement.
      rng: numpy Generator or seed for the sampling (``None``: seed 0, so results are
        reproducible); unused without ``max_neighbors``.

    Returns:
      A :class:`KHopSubgraph`.

    Shapes:
      senders, receivers ``[E]``; seeds ``[S]``; see :class:`KHopSubgraph` for the outputs.
    """
    in_edges = _InEdges(senders, receivers, num_nodes)
    return _subgraph(in_edges, seeds, num_hops, max_neighbors, _as_rng(rng))


def _subgraph(in_edges: _InEdges, seeds, num_hops, max_neighbors, rng) -> KHopSubgraph:
    node_ids, edge_ids, local = _khop(in_edges, seeds, num_hops, max_neighbors, rng)
    s = local[in_edges.senders[edge_ids]]
    r = local[in_edges.receivers[edge_ids]]
    order = np.lexsort((s, r))
    seed_mask = np.zeros(node_ids.size, bool)
    seed_mask[: np.asarray(seeds).size] = True
    return KHopSubgraph(
        node_ids=node_ids,
        senders=s[order].astype(np.int32),
        receivers=r[order].astype(np.int32),
        edge_ids=edge_ids[order],
        seed_mask=seed_mask,
    )


def _with_node_keys(graph: jraph.GraphsTuple, node_ids, target_mask) -> dict[str, Any]:
    nodes = graph.nodes if graph.nodes is not None else {}
    if not isinstance(nodes, dict):
        raise ValueError(f"graph.nodes must be a dict (or None), got {type(nodes).__name__}")
    out = jax.tree.map(lambda x: np.asarray(x)[node_ids], nodes)
    out["target_mask"] = target_mask
    out["node_index"] = np.asarray(node_ids, np.int32)
    return out


def _pad(sub: jraph.GraphsTuple, budgets) -> jraph.GraphsTuple:
    padded = pad_to_budget(sub, choose_budget(sub, budgets))
    n_real = int(sub.n_node.sum())
    padded.nodes["node_index"][n_real:] = -1
    return padded


def _check_single_graph(graph: jraph.GraphsTuple, fn: str) -> int:
    n_node = np.asarray(graph.n_node)
    if n_node.shape != (1,):
        raise ValueError(
            f"{fn}: expected one unpadded graph (n_node of shape [1]), got "
            f"n_node of shape {n_node.shape}"
        )
    return int(n_node[0])


def full_graph_batch(
    graph: jraph.GraphsTuple,
    budgets: Budget | Sequence[Budget],
    *,
    seeds: np.ndarray | None = None,
) -> jraph.GraphsTuple:
    """The whole graph as one padded batch, for full-batch training.

    Adds ``nodes["node_index"]`` (original id, -1 on padding) and ``nodes["target_mask"]``:
    ``True`` on ``seeds`` if given, else the graph's own ``target_mask`` if it has one, else on
    every real node.

    Args:
      graph: one unpadded graph with a dict (or ``None``) ``nodes``.
      budgets: a budget or candidates; the smallest that fits is used.
      seeds: optional node ids whose outputs enter the loss.

    Shapes:
      nodes leaves ``[N, ...] -> [N', ...]`` with ``N'`` the chosen budget's ``n_node``.
    """
    num_nodes = _check_single_graph(graph, "full_graph_batch")
    if seeds is not None:
        target = np.zeros(num_nodes, bool)
        target[np.asarray(seeds)] = True
    elif isinstance(graph.nodes, dict) and "target_mask" in graph.nodes:
        target = np.asarray(graph.nodes["target_mask"], bool)
    else:
        target = np.ones(num_nodes, bool)
    nodes = _with_node_keys(graph, np.arange(num_nodes), target)
    return _pad(graph._replace(nodes=nodes), budgets)


class NodeBatchSampler:
    """Iterates over seed minibatches of one big graph as padded ``GraphsTuple`` s.

    Each batch holds ``batch_size`` seeds (the last one may hold fewer) with their
    ``num_hops``-hop in-neighbourhood (see :func:`khop_subgraph`), padded to the smallest fitting
    budget, so a jitted step compiles at most ``len(budgets)`` times. Its ``nodes`` dict is the big
    graph's node dict sliced to the subgraph plus ``"target_mask"`` (``True`` only on this batch's
    seeds; replaces any existing key) and ``"node_index"`` (original node id, -1 on padding);
    ``edges`` (if any) are sliced too; ``globals`` are the big graph's.

    Order and neighbour samples are a deterministic function of ``(seed, epoch)``: call
    :meth:`set_epoch` before each epoch (or use :meth:`iter_epoch`) to reshuffle. Every seed is
    a target exactly once per epoch.

    Args:
      graph: one unpadded graph (``n_node`` of shape ``[1]``); ``nodes`` a dict or ``None``.
      seeds: unique node ids to train on.
      batch_size: seeds per batch.
      num_hops: neighbourhood depth (the model's number of message-passing layers).
      budgets: candidate budgets (e.g. from :func:`~jaxfm.graph.make_budgets`).
      shuffle: shuffle seeds each epoch (else keep the given order).
      seed: base random seed.
      max_neighbors: optional per-node in-edge sample size.
      drop_last: drop the last incomplete batch.
    """

    def __init__(
        self,
        graph: jraph.GraphsTuple,
        seeds: np.ndarray,
        *,
        batch_size: int,
        num_hops: int,
        budgets: Budget | Sequence[Budget],
        shuffle: bool = True,
        seed: int = 0,
        max_neighbors: int | None = None,
        drop_last: bool = False,
    ):
        num_nodes = _check_single_graph(graph, "NodeBatchSampler")
        if batch_size < 1:
            raise ValueError(f"NodeBatchSampler: batch_size must be >= 1, got {batch_size}")
        self.seeds = np.asarray(seeds, np.int64)
        if self.seeds.ndim != 1 or self.seeds.size == 0:
            raise ValueError(
                f"NodeBatchSampler: seeds must be a non-empty 1-D array, got shape "
                f"{self.seeds.shape}"
            )
        if np.unique(self.seeds).size != self.seeds.size:
            raise ValueError("NodeBatchSampler: seeds must be unique")
        self.graph = graph
        self.batch_size = batch_size
        self.num_hops = num_hops
        self.budgets = (budgets,) if isinstance(budgets, Budget) else tuple(budgets)
        self.shuffle = shuffle
        self.seed = seed
        self.max_neighbors = max_neighbors
        self.drop_last = drop_last
        self.epoch = 0
        self._in_edges = _InEdges(graph.senders, graph.receivers, num_nodes)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.seeds.size // self.batch_size
        return math.ceil(self.seeds.size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[jraph.GraphsTuple]:
        return self.iter_epoch(self.epoch)

    def iter_epoch(self, epoch: int, *, start: int = 0) -> Iterator[jraph.GraphsTuple]:
        """Yields the batches of ``epoch``, skipping the first ``start`` (to resume mid-epoch)."""
        order_rng = np.random.default_rng([self.seed, epoch, 0])
        order = order_rng.permutation(self.seeds) if self.shuffle else self.seeds
        for b in range(start, len(self)):
            batch_seeds = order[b * self.batch_size : (b + 1) * self.batch_size]
            # One independent stream per (epoch, batch): resuming at `start` reproduces it.
            rng = np.random.default_rng([self.seed, epoch, 1, b])
            yield self._batch(batch_seeds, rng)

    def _batch(self, batch_seeds: np.ndarray, rng: np.random.Generator) -> jraph.GraphsTuple:
        sub = _subgraph(self._in_edges, batch_seeds, self.num_hops, self.max_neighbors, rng)
        g = self.graph
        n, e = sub.node_ids.size, sub.senders.size
        small = jraph.GraphsTuple(
            nodes=_with_node_keys(g, sub.node_ids, sub.seed_mask),
            edges=jax.tree.map(lambda x: np.asarray(x)[sub.edge_ids], g.edges),
            globals=jax.tree.map(np.asarray, g.globals),
            senders=sub.senders,
            receivers=sub.receivers,
            n_node=np.array([n], np.int32),
            n_edge=np.array([e], np.int32),
        )
        return _pad(small, self.budgets)
