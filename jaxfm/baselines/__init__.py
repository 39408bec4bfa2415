"""Baselines trained on the same batches and loop as FIMP/GraphFM."""

from jaxfm.baselines.gcn import GCN, FeatureMLP
from jaxfm.baselines.node_mlp import NodeMLP

__all__ = ["GCN", "FeatureMLP", "NodeMLP"]
