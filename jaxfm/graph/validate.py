"""Checks on concrete graphs before they reach ``jit`` (XLA gathers clamp out-of-range indices)."""

from __future__ import annotations

import jax
import jraph
import numpy as np

from jaxfm.graph.batching import graph_mask

__all__ = ["validate_graph"]


def validate_graph(graph: jraph.GraphsTuple, *, name: str = "graph", padded: bool = False) -> None:
    """Checks a concrete ``GraphsTuple`` before it reaches ``jit``; raises on the first problem.

    Checks: index arrays are 1-D integers of matching lengths; ``n_node`` sums to ``N`` (the
    leading axis of every ``nodes`` leaf) and ``n_edge`` to ``E``; ``edges`` leaves have ``E`` rows
    and ``globals`` leaves ``G``; senders/receivers lie in ``[0, N)`` and inside their own graph;
    float leaves hold no NaN/inf (the message names the key); no real graph is empty.

    Args:
      graph: the graph or batch to check.
      name: how the message refers to the graph (e.g. the argument name).
      padded: ``True`` for a padded batch: its trailing padding graphs may be empty.

    Raises:
      ValueError: naming ``name``, the offending field/key and what was expected.
    """

    def fail(msg: str):
        raise ValueError(f"{name}.{msg}")

    n_node, n_edge = np.asarray(graph.n_node), np.asarray(graph.n_edge)
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    for field, arr in (
        ("n_node", n_node),
        ("n_edge", n_edge),
        ("senders", senders),
        ("receivers", receivers),
    ):
        if arr.ndim != 1:
            fail(f"{field}: expected a 1-D array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            fail(f"{field}: expected an integer dtype, got {arr.dtype}")
    if n_node.shape != n_edge.shape or n_node.size == 0:
        fail(f"n_node/n_edge: expected equal lengths >= 1, got {n_node.shape} and {n_edge.shape}")
    if (n_node < 0).any() or (n_edge < 0).any():
        fail("n_node/n_edge: expected non-negative counts")
    if senders.shape != receivers.shape:
        fail(
            f"senders/receivers: expected equal lengths, got {senders.shape} and {receivers.shape}"
        )
    num_nodes, num_edges, num_graphs = int(n_node.sum()), int(n_edge.sum()), n_node.shape[0]
    if senders.shape[0] != num_edges:
        fail(f"n_edge: expected to sum to len(senders) = {senders.shape[0]}, sums to {num_edges}")
    for field, total, label in (
        ("nodes", num_nodes, "N = sum(n_node)"),
        ("edges", num_edges, "E = sum(n_edge)"),
        ("globals", num_graphs, "G = len(n_node)"),
    ):
        for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(graph, field))[0]:
            key = f"{field}{jax.tree_util.keystr(path)}"
            leaf = np.asarray(leaf)
            if leaf.ndim == 0 or leaf.shape[0] != total:
                fail(f"{key}: expected leading dim {label} = {total}, got shape {leaf.shape}")
            if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
                bad = int((~np.isfinite(leaf)).sum())
                fail(f"{key}: expected finite values, found {bad} NaN/inf entries")
    for field, arr in (("senders", senders), ("receivers", receivers)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_nodes):
            fail(
                f"{field}: expected indices in [0, {num_nodes}), got range "
                f"[{arr.min()}, {arr.max()}]"
            )
    node_graph = np.repeat(np.arange(num_graphs), n_node)
    edge_graph = np.repeat(np.arange(num_graphs), n_edge)
    for field, arr in (("senders", senders), ("receivers", receivers)):
        crossing = np.flatnonzero(node_graph[arr] != edge_graph)
        if crossing.size:
            e = int(crossing[0])
            fail(
                f"{field}: edge {e} belongs to graph {edge_graph[e]} but its node {arr[e]} "
                f"belongs to graph {node_graph[arr[e]]}"
            )
    num_real = num_graphs
    if padded:
        num_real = int(np.asarray(graph_mask(graph)).sum())
    empty = np.flatnonzero(n_node[:num_real] == 0)
    if empty.size:
        fail(
            f"n_node: expected every graph to have >= 1 node, graph {int(empty[0])} is empty"
            + ("" if padded else " (pass padded=True for a padded batch)")
        )
