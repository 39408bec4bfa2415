"""Graph containers and batching, packed multi-graph batches, samplers (k-hop, GraphSAINT, snake),
Laplacian PE.

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
from jaxfm.graph.laplacian import LaplacianPECache, laplacian_pe
from jaxfm.graph.neighbors import (
    EARTH_RADIUS,
    haversine_distance,
    haversine_radius_graph,
    knn_graph,
    latlon_to_unit_vectors,
    radius_graph,
)
from jaxfm.graph.saint import SaintSampler
from jaxfm.graph.sampling import KHopSubgraph, NodeBatchSampler, full_graph_batch, khop_subgraph
from jaxfm.graph.snake import DistributedSSSampler, snake_partition
from jaxfm.graph.validate import validate_graph

__all__ = [
    "EARTH_RADIUS",
    "Budget",
    "DistributedSSSampler",
    "KHopSubgraph",
    "LaplacianPECache",
    "NodeBatchSampler",
    "SaintSampler",
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
    "laplacian_pe",
    "latlon_to_unit_vectors",
    "make_budgets",
    "node_mask",
    "pad_to_budget",
    "radius_graph",
    "remove_self_loops",
    "snake_partition",
    "to_undirected",
    "validate_graph",
]
