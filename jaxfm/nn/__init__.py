"""Shared Flax (Linen) building blocks: attention, MLP, transformer layers, position encodings."""

from jaxfm.nn.attention import AGGREGATIONS, MultiHeadAttention
from jaxfm.nn.mlp import ACTIVATIONS, Mlp, get_activation
from jaxfm.nn.posenc import sinusoidal_1d, sinusoidal_2d, sinusoidal_from_positions
from jaxfm.nn.transformer import NORM_POSITIONS, TransformerLayer

__all__ = [
    "ACTIVATIONS",
    "AGGREGATIONS",
    "NORM_POSITIONS",
    "Mlp",
    "MultiHeadAttention",
    "TransformerLayer",
    "get_activation",
    "sinusoidal_1d",
    "sinusoidal_2d",
    "sinusoidal_from_positions",
]
