"""GraphFM: packed Perceiver encoder, node decoder and per-dataset heads (paper: GraphFM)."""

from jaxfm.graph.packed import PackedBatch, check_packed_batch
from jaxfm.graphfm.config import VARIANTS, DatasetSpec, GraphFMConfig, graphfm_config
from jaxfm.graphfm.losses import loss_and_metrics
from jaxfm.graphfm.model import DATASET_SPECIFIC, GraphFM
from jaxfm.graphfm.summary import format_summary, parameter_summary

__all__ = [
    "DATASET_SPECIFIC",
    "VARIANTS",
    "DatasetSpec",
    "GraphFM",
    "GraphFMConfig",
    "PackedBatch",
    "check_packed_batch",
    "format_summary",
    "graphfm_config",
    "loss_and_metrics",
    "parameter_summary",
]
