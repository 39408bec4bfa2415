"""Baselines trained on the same batches and loop as FIMP/GraphFM.

Message-passing layers share one contract (``features`` attribute;
``__call__(h, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True)``):
:class:`GCNLayer`, :class:`SAGELayer`, :class:`GATLayer`, :class:`GINLayer`, :class:`GPSLayer`,
and :class:`NoGraphLayer` (the ``mlp`` control). One registry, :data:`LAYERS` (``kind`` in
:data:`KINDS`), names them for every stack: :class:`GNN` (full-graph node classification),
:class:`NodeGNN` (FIMP tasks) and :class:`GraphClassifier` (graph level: per-layer pooling readout
+ MLP head). :class:`GraphMAE` is the masked-autoencoder
pretraining baseline (its trainers: :mod:`jaxfm.train.graphmae`).
"""

from jaxfm.baselines.gat import GATLayer
from jaxfm.baselines.gcn import GCNLayer
from jaxfm.baselines.gin import GINLayer
from jaxfm.baselines.gnn import GNN
from jaxfm.baselines.gps import GPSLayer
from jaxfm.baselines.graph_classifier import GRAPH_CLASSIFIER_KINDS, GraphClassifier
from jaxfm.baselines.graphmae import GraphMAE
from jaxfm.baselines.kinds import KINDS, LAYERS, MESSAGE_PASSING_KINDS, NoGraphLayer, layer_class
from jaxfm.baselines.node_gnn import GNN_KINDS, NodeGNN
from jaxfm.baselines.node_mlp import NodeMLP
from jaxfm.baselines.sage import SAGELayer

__all__ = [
    "GNN",
    "GNN_KINDS",
    "GRAPH_CLASSIFIER_KINDS",
    "KINDS",
    "LAYERS",
    "MESSAGE_PASSING_KINDS",
    "GATLayer",
    "GCNLayer",
    "GINLayer",
    "GPSLayer",
    "GraphClassifier",
    "GraphMAE",
    "NoGraphLayer",
    "NodeGNN",
    "NodeMLP",
    "SAGELayer",
    "layer_class",
]
