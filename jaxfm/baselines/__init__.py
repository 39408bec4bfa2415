"""Baselines trained on the same batches and loop as FIMP/GraphFM.

Message-passing layers share one contract (``features`` attribute;
``__call__(h, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True)``):
:class:`GCNLayer`, :class:`SAGELayer`, :class:`GATLayer`, :class:`GINLayer`, :class:`GPSLayer`;
:class:`GNN` stacks them (``kind`` in :data:`KINDS`); :class:`GraphClassifier` is the
graph-level GNN (per-layer pooling readout + MLP head). :class:`GraphMAE` is the masked-autoencoder
pretraining baseline (with :func:`linear_probe`).
"""

from jaxfm.baselines.gat import GATLayer
from jaxfm.baselines.gcn import GCN, FeatureMLP, GCNLayer
from jaxfm.baselines.gin import GINLayer
from jaxfm.baselines.gnn import GNN, KINDS
from jaxfm.baselines.gps import GPSLayer
from jaxfm.baselines.graph_classifier import GRAPH_CLASSIFIER_KINDS, GraphClassifier
from jaxfm.baselines.graphmae import GraphMAE, linear_probe
from jaxfm.baselines.node_gnn import GNN_KINDS, NodeGNN
from jaxfm.baselines.node_mlp import NodeMLP
from jaxfm.baselines.sage import SAGELayer

__all__ = [
    "GCN",
    "GNN",
    "GNN_KINDS",
    "GRAPH_CLASSIFIER_KINDS",
    "KINDS",
    "FeatureMLP",
    "GATLayer",
    "GCNLayer",
    "GINLayer",
    "GPSLayer",
    "GraphClassifier",
    "GraphMAE",
    "NodeGNN",
    "NodeMLP",
    "SAGELayer",
    "linear_probe",
]
