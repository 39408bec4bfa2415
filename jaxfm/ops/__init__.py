"""Pure functions (no Flax state): attention dispatch, cross-node attention, segment ops."""

from jaxfm.ops.attention import (
    IMPLEMENTATIONS,
    attention,
    attention_reference,
    build_mask,
    cudnn_supported,
    record_attention_calls,
    resolve_implementation,
)
from jaxfm.ops.cross_node import (
    cross_node_attention,
    cross_node_attention_reference,
)
from jaxfm.ops.splash import splash_supported

__all__ = [
    "IMPLEMENTATIONS",
    "attention",
    "attention_reference",
    "build_mask",
    "cross_node_attention",
    "cross_node_attention_reference",
    "cudnn_supported",
    "record_attention_calls",
    "resolve_implementation",
    "splash_supported",
]
