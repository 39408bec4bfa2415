"""Graph containers and batching: static budgets, padding, masks, neighbour graphs, samplers.

A batch is a ``jraph.GraphsTuple`` whose ``nodes`` is a dict of arrays with leading dim ``N``,
padded to one of a few :class:`Budget` s (jraph's convention: one padding graph at the end owns the
padding nodes and edges). See :mod:`jaxfm.graph.batching`.
"""

from jaxfm.graph.batching import (
    Budget,
    batch_graphs,
    choose_budget,
    edge_mask,
    graph_mask,
    make_budgets,
    node_mask,
    pad_to_budget,
)
from jaxfm.graph.edges import add_self_loops, remove_self_loops, to_undirected
from jaxfm.graph.neighbors import (
    EARTH_RADIUS,
    haversine_distance,
    haversine_radius_graph,
    knn_graph,
    latlon_to_unit_vectors,
    radius_graph,
)
from jaxfm.graph.sampling import KHopSubgraph, NodeBatchSampler, full_graph_batch, khop_subgraph
from jaxfm.graph.validate import validate_graph

__all__ = [
    "EARTH_RADIUS",
    "Budget",
    "KHopSubgraph",
    "NodeBatchSampler",
    "add_self_loops",
    "batch_graphs",
    "choose_budget",
    "edge_mask",
    "full_graph_batch",
    "graph_mask",
    "haversine_distance",
    "haversine_radius_graph",
    "khop_subgraph",
    "knn_graph",
    "latlon_to_unit_vectors",
    "make_budgets",
    "node_mask",
    "pad_to_budget",
    "radius_graph",
    "remove_self_loops",
    "to_undirected",
    "validate_graph",
]
