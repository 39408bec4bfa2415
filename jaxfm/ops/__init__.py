"""Pure functions (no Flax state): attention dispatch, cross-node attention, segment ops."""

from jaxfm.ops.attention import attention, attention_reference, build_mask, cudnn_supported
from jaxfm.ops.cross_node import (
    cross_node_attention,
    cross_node_attention_reference,
)

__all__ = [
    "attention",
    "attention_reference",
    "build_mask",
    "cross_node_attention",
    "cross_node_attention_reference",
    "cudnn_supported",
]
