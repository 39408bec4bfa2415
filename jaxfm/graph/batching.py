"""Static-budget batching of ``jraph.GraphsTuple`` s: budgets, padding, masks, self-loops, checks.

``jit`` compiles one program per distinct input shape. Graphs differ in size, so every batch is
padded to one of a few :class:`Budget` s (a short geometric ladder from :func:`make_budgets`) and
the compiled program count stays at most the number of budgets.

Padding follows jraph's convention: after the real graphs comes **one padding graph** that owns all
padding nodes and padding edges (every padding edge connects the first padding node to itself),
followed by zero or more empty padding graphs (``n_node == n_edge == 0``) that fill the graph
budget. Padding leaves of ``nodes`` / ``edges`` / ``globals`` are zeros (``False`` for bool).
Because every real graph has at least one node and the padding graph always owns at least one
node, :func:`node_mask`, :func:`edge_mask` and :func:`graph_mask` recover the real parts from
``n_node`` / ``n_edge`` alone, under ``jit``.

Host-side functions (everything except the three masks) work on numpy arrays and return numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

__all__ = [
    "Budget",
    "batch_graphs",
    "choose_budget",
    "edge_mask",
    "graph_mask",
    "make_budgets",
    "node_mask",
    "pad_to_budget",
]


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """Static sizes of a padded batch, *including* padding.

    A batch with ``N`` real nodes, ``E`` real edges and ``G`` real graphs fits when
    ``N + 1 <= n_node``, ``E <= n_edge`` and ``G + 1 <= n_graph`` (one node and one graph are
    reserved for the padding graph).

    Attributes:
      n_node: total nodes of the padded batch (>= 2).
      n_edge: total edges of the padded batch (>= 0).
      n_graph: total graphs of the padded batch (>= 2).
    """

    n_node: int
    n_edge: int
    n_graph: int = 2

    def __post_init__(self):
        for field, low in (("n_node", 2), ("n_edge", 0), ("n_graph", 2)):
            value = getattr(self, field)
            if not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"Budget.{field} must be an int >= {low}, got {value!r}")

    def fits(self, n_node: int, n_edge: int, n_graph: int) -> bool:
        """Whether ``n_node`` real nodes, ``n_edge`` edges, ``n_graph`` graphs fit with padding."""
        return n_node + 1 <= self.n_node and n_edge <= self.n_edge and n_graph + 1 <= self.n_graph


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def make_budgets(
    max_nodes: int,
    max_edges: int,
    max_graphs: int = 2,
    *,
    num: int = 4,
    growth: float = 2.0,
    multiple: int = 8,
) -> tuple[Budget, ...]:
    """A short geometric ladder of budgets ending at ``(max_nodes, max_edges, max_graphs)``.

    Budget ``i`` (``0 <= i < num``) has ``max / growth**(num - 1 - i)`` nodes and edges, rounded
    up to a multiple of ``multiple`` (friendlier tiles on accelerators) and capped at the maximum;
    duplicates are dropped. The graph budget stays ``max_graphs`` on every rung (graph slots are
    cheap). All sizes include padding, see :class:`Budget`.

    Args:
      max_nodes: node budget of the largest rung (>= 2).
      max_edges: edge budget of the largest rung (>= 0).
      max_graphs: graph budget of every rung (>= 2: one real graph + the padding graph).
      num: number of rungs (>= 1).
      growth: ratio between consecutive rungs (> 1).
      multiple: sizes of the smaller rungs are rounded up to this.

    Returns:
      Budgets sorted from smallest to largest.

    Example:
      >>> [b.n_node for b in make_budgets(1024, 4096, num=3)]
      [256, 512, 1024]
    """
    if num < 1:
        raise ValueError(f"make_budgets: num must be >= 1, got {num}")
    if growth <= 1:
        raise ValueError(f"make_budgets: growth must be > 1, got {growth}")
    if multiple < 1:
        raise ValueError(f"make_budgets: multiple must be >= 1, got {multiple}")
    budgets = []
    for i in range(num):
        scale = growth ** (num - 1 - i)
        n_node = max(2, min(max_nodes, _round_up(max_nodes / scale, multiple)))
        n_edge = min(max_edges, _round_up(max_edges / scale, multiple))
        budget = Budget(n_node=n_node, n_edge=n_edge, n_graph=max_graphs)
        if budget not in budgets:
            budgets.append(budget)
    return tuple(budgets)


def _sizes(graph: jraph.GraphsTuple) -> tuple[int, int, int]:
    n_node = np.asarray(graph.n_node)
    return int(n_node.sum()), int(np.asarray(graph.n_edge).sum()), int(n_node.shape[0])


def choose_budget(graph: jraph.GraphsTuple, budgets: Budget | Sequence[Budget]) -> Budget:
    """The smallest budget (by nodes, then edges, then graphs) that fits the unpadded ``graph``.

    Raises:
      ValueError: if no budget fits; the message names the graph's sizes and the largest budget.
    """
    if isinstance(budgets, Budget):
        budgets = (budgets,)
    if not budgets:
        raise ValueError("choose_budget: budgets is empty")
    n_node, n_edge, n_graph = _sizes(graph)
    fitting = [b for b in budgets if b.fits(n_node, n_edge, n_graph)]
    if not fitting:
        largest = max(budgets, key=lambda b: (b.n_node, b.n_edge, b.n_graph))
        raise ValueError(
            f"choose_budget: no budget fits a batch with {n_node} nodes, {n_edge} edges and "
            f"{n_graph} graphs (needs n_node >= {n_node + 1}, n_edge >= {n_edge}, "
            f"n_graph >= {n_graph + 1} including padding); largest budget is {largest}. "
            "Use larger budgets, smaller batches, or cap neighbours (max_neighbors)."
        )
    return min(fitting, key=lambda b: (b.n_node, b.n_edge, b.n_graph))


# --------------------------------------------------------------------------------------------
# Padding and batching (numpy, host side)
# --------------------------------------------------------------------------------------------


def _pad_leaf(x: Any, total: int) -> np.ndarray:
    x = np.asarray(x)
    pad = np.zeros((total - x.shape[0], *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([x, pad], axis=0)


def pad_to_budget(graph: jraph.GraphsTuple, budget: Budget) -> jraph.GraphsTuple:
    """Pads an unpadded (possibly multi-graph) ``graph`` to exactly ``budget``'s sizes.

    Every leaf of ``nodes`` / ``edges`` / ``globals`` is padded with zeros along its leading axis.
    The padding graph gets all padding nodes and edges; padding edges connect the first padding
    node to itself; remaining graph slots are empty graphs.

    Args:
      graph: unpadded batch (``n_node.sum() == N`` etc.).
      budget: target sizes; must fit (see :class:`Budget`).

    Returns:
      A numpy ``GraphsTuple`` with ``N' = budget.n_node``, ``E' = budget.n_edge``,
      ``G' = budget.n_graph``; ``senders``/``receivers``/``n_node``/``n_edge`` are int32.

    Shapes:
      nodes leaves ``[N, ...] -> [N', ...]``; edges leaves and senders/receivers ``[E] -> [E']``;
      n_node/n_edge and globals leaves ``[G] -> [G']``.

    Raises:
      ValueError: if the graph does not fit the budget.
    """
    n_node, n_edge, n_graph = _sizes(graph)
    if not budget.fits(n_node, n_edge, n_graph):
        raise ValueError(
            f"pad_to_budget: graph with {n_node} nodes, {n_edge} edges, {n_graph} graphs does not "
            f"fit {budget} (padding needs one extra node and one extra graph)"
        )
    pad_nodes = budget.n_node - n_node
    pad_edges = budget.n_edge - n_edge
    pad_graphs = budget.n_graph - n_graph
    pad_index = np.full(pad_edges, n_node, dtype=np.int32)  # first padding node
    n_node_pad = np.zeros(pad_graphs, np.int32)
    n_edge_pad = np.zeros(pad_graphs, np.int32)
    n_node_pad[0], n_edge_pad[0] = pad_nodes, pad_edges
    pad = lambda tree, total: jax.tree.map(lambda x: _pad_leaf(x, total), tree)
    return jraph.GraphsTuple(
        nodes=pad(graph.nodes, budget.n_node),
        edges=pad(graph.edges, budget.n_edge),
        globals=pad(graph.globals, budget.n_graph),
        senders=np.concatenate([np.asarray(graph.senders, np.int32), pad_index]),
        receivers=np.concatenate([np.asarray(graph.receivers, np.int32), pad_index]),
        n_node=np.concatenate([np.asarray(graph.n_node, np.int32), n_node_pad]),
        n_edge=np.concatenate([np.asarray(graph.n_edge, np.int32), n_edge_pad]),
    )


def batch_graphs(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Concatenates unpadded graphs into one multi-graph ``GraphsTuple`` (numpy).

    Node indices of graph ``i`` are offset by the node count of graphs ``0..i-1``. All graphs
    must share the same ``nodes`` / ``edges`` / ``globals`` structure (keys, trailing shapes).

    Shapes:
      nodes leaves ``[sum N_i, ...]``; edges leaves, senders, receivers ``[sum E_i]``;
      n_node, n_edge, globals leaves ``[sum G_i]``.
    """
    if not graphs:
        raise ValueError("batch_graphs: got an empty list of graphs")
    offsets = np.cumsum([0] + [int(np.asarray(g.n_node).sum()) for g in graphs[:-1]])
    cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=0)
    parts = {}
    for field in ("nodes", "edges", "globals"):
        trees = [getattr(g, field) for g in graphs]
        try:
            parts[field] = jax.tree.map(cat, *trees)
        except ValueError as err:
            raise ValueError(f"batch_graphs: graphs have different '{field}' structures") from err
    shift = lambda field: cat(
        *[np.asarray(getattr(g, field)) + o for g, o in zip(graphs, offsets, strict=True)]
    )
    return jraph.GraphsTuple(
        senders=shift("senders").astype(np.int32),
        receivers=shift("receivers").astype(np.int32),
        n_node=cat(*[g.n_node for g in graphs]).astype(np.int32),
        n_edge=cat(*[g.n_edge for g in graphs]).astype(np.int32),
        **parts,
    )


# --------------------------------------------------------------------------------------------
# Masks (jit-compatible)
# --------------------------------------------------------------------------------------------


def graph_mask(graph: jraph.GraphsTuple) -> jax.Array:
    """``True`` for real graphs of a padded batch; works under ``jit``.

    The padding graphs are the trailing empty graphs plus the non-empty graph just before them
    (the one that owns the padding nodes).

    Shapes:
      returns ``[G]`` bool.
    """
    n_node = jnp.asarray(graph.n_node)
    n_graph = n_node.shape[0]
    trailing_empty = jnp.sum(jnp.cumprod((n_node[::-1] == 0).astype(jnp.int32)))
    n_real = jnp.maximum(n_graph - trailing_empty - 1, 0)
    return jnp.arange(n_graph) < n_real


def _leading_dim(tree: Any, what: str) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{what}: cannot infer the static size from an empty tree")
    return int(leaves[0].shape[0])


def node_mask(graph: jraph.GraphsTuple) -> jax.Array:
    """``True`` for real nodes of a padded batch; works under ``jit``.

    ``N`` is read statically from the leading axis of the ``nodes`` leaves (or, when ``nodes`` has
    no leaves, from the concrete ``n_node.sum()``).

    Shapes:
      returns ``[N]`` bool.
    """
    if jax.tree.leaves(graph.nodes):
        num_nodes = _leading_dim(graph.nodes, "node_mask")
    else:
        try:
            num_nodes = int(np.asarray(graph.n_node).sum())
        except jax.errors.TracerArrayConversionError as err:
            raise ValueError(
                "node_mask: graph.nodes has no leaves, so N is not static under jit; "
                "give the graph at least one node feature"
            ) from err
    n_real = jnp.sum(jnp.where(graph_mask(graph), jnp.asarray(graph.n_node), 0))
    return jnp.arange(num_nodes) < n_real


def edge_mask(graph: jraph.GraphsTuple) -> jax.Array:
    """``True`` for real edges of a padded batch; works under ``jit``.

    Shapes:
      returns ``[E]`` bool (``E = senders.shape[0]``).
    """
    n_real = jnp.sum(jnp.where(graph_mask(graph), jnp.asarray(graph.n_edge), 0))
    return jnp.arange(graph.senders.shape[0]) < n_real
