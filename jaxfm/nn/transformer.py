"""Transformer encoder layer usable as a self-attention layer and as a FIMP cross-node layer.

The same parameters (``attention``, ``norm1``, ``norm2``, ``mlp``) run in two forms:

* ``__call__``: an ordinary encoder layer on ``[B, T, D]`` (reproduces ViT / scGPT / BrainLM);
* ``cross_node``: the layer of a foundation model repurposed for message creation (FIMP §3.3):
  the attention sublayer becomes cross-node attention (eqs. 6-7; queries from the destination's
  stream, keys/values from the sources' streams, aggregated over incoming edges), while the
  residual connections, norms and MLP are applied per node.

Pre-norm:  ``h = x + Attn(LN1(x))``,  ``y = h + MLP(LN2(h))``.
Post-norm: ``h = LN1(x + Attn(x))``,  ``y = LN2(h + MLP(h))``.

On a graph whose only edges are self-loops, ``cross_node`` equals ``__call__`` node by node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.nn.attention import MultiHeadAttention
from jaxfm.nn.mlp import Mlp

__all__ = ["NORM_POSITIONS", "TransformerLayer"]

NORM_POSITIONS = ("pre", "post")


class TransformerLayer(nn.Module):
    """One transformer encoder layer (attention + MLP, residuals, LayerNorms).

    Attributes:
      num_heads: attention heads H.
      mlp_dim: hidden width of the MLP.
      head_dim: per-head width; ``None`` = ``D // num_heads``.
      norm: ``"pre"`` (ViT, BrainLM) or ``"post"`` (scGPT / PyTorch default) LayerNorm position.
      activation: MLP activation (see :data:`jaxfm.nn.mlp.ACTIVATIONS`).
      layer_norm_eps: epsilon of both LayerNorms (ViT-flax 1e-6, HF ViT 1e-12, PyTorch 1e-5).
      dropout: rate on the attention output (before the residual) and inside the MLP.
      use_bias: biases on the attention and MLP projections.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      kernel_init: kernel initializer of all projections.
      implementation: attention implementation for ``__call__`` (see :func:`jaxfm.ops.attention`).

    Parameters: ``attention/{query,key,value,out}``, ``norm1/{scale,bias}``,
    ``norm2/{scale,bias}``, ``mlp/{fc1,fc2}``.

    Shapes:
      ``__call__``: x ``[B, T, D]`` -> ``[B, T, D]``.
      ``cross_node``: x ``[N, L, D]`` -> ``[N, L, D]``.
    """

    num_heads: int
    mlp_dim: int
    head_dim: int | None = None
    norm: str = "pre"
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()
    implementation: str | None = None

    def setup(self):
        if self.norm not in NORM_POSITIONS:
            raise ValueError(
                f"TransformerLayer: norm must be one of {NORM_POSITIONS}, got {self.norm!r}"
            )
        self.attention = MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            implementation=self.implementation,
        )
        layer_norm = lambda: nn.LayerNorm(
            epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype
        )
        self.norm1 = layer_norm()
        self.norm2 = layer_norm()
        self.mlp = Mlp(
            hidden=self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
        )
        self.attn_out_dropout = nn.Dropout(self.dropout)

    def _block(self, x: jax.Array, attend: Callable, deterministic: bool) -> jax.Array:
        """Residual/norm/MLP wiring around ``attend`` (which maps the normed-or-raw input)."""
        drop = lambda a: self.attn_out_dropout(a, deterministic=deterministic)
        if self.norm == "pre":
            h = x + drop(attend(self.norm1(x)))
            return h + self.mlp(self.norm2(h), deterministic=deterministic)
        h = self.norm1(x + drop(attend(x)))
        return self.norm2(h + self.mlp(h, deterministic=deterministic))

    def __call__(
        self,
        x: jax.Array,
        *,
        kv_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Self-attention encoder layer.

        Args:
          x: token sequences.
          kv_mask: True for valid (non-padding) tokens; padding tokens are never attended.
          segment_ids: packed-sequence ids (tokens attend within their segment; 0 = padding).
          deterministic: disables dropout when True.

        Shapes:
          x ``[B, T, D]``; kv_mask, segment_ids ``[B, T]`` -> ``[B, T, D]``.
        """
        attend = lambda h: self.attention(
            h, kv_mask=kv_mask, q_segment_ids=segment_ids, kv_segment_ids=segment_ids
        )
        return self._block(x, attend, deterministic)

    def cross_node(
        self,
        x: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        *,
        kv_mask: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        aggregation: str = "mean",
        edge_chunk_size: int | None = None,
        deterministic: bool = True,
        x_src: jax.Array | None = None,
    ) -> jax.Array:
        """The same layer with FIMP cross-node attention as its attention sublayer.

        Args:
          x: node token streams (queries come from the destination's stream).
          senders: source node per edge.
          receivers: destination node per edge.
          kv_mask: True for valid source tokens.
          edge_mask: True for real edges.
          aggregation: ``"mean"`` or ``"sum"`` over incoming edges (static).
          edge_chunk_size: edge chunk for the attention op (static).
          deterministic: disables dropout when True.
          x_src: source streams for keys/values (default ``x``); normed by ``norm1`` as well in
            the pre-norm form.

        Shapes:
          x ``[N, L, D]``; x_src ``[N, Lk, D]``; senders, receivers ``[E]``; kv_mask ``[N, Lk]``;
          edge_mask ``[E]`` -> ``[N, L, D]``.
        """

        def attend(h):
            src = x_src
            if src is not None and self.norm == "pre":
                src = self.norm1(src)
            return self.attention.cross_node(
                h,
                senders,
                receivers,
                kv_mask=kv_mask,
                edge_mask=edge_mask,
                aggregation=aggregation,
                edge_chunk_size=edge_chunk_size,
                x_src=src,
            )

        return self._block(x, attend, deterministic)

    def attention_map(
        self, x_q: jax.Array, x_kv: jax.Array | None = None, *, kv_mask: jax.Array | None = None
    ) -> jax.Array:
        """Attention probabilities of this layer's attention sublayer (norm applied as in use).

        Shapes:
          x_q ``[B, Tq, D]``, x_kv ``[B, Tk, D]``, kv_mask ``[B, Tk]`` -> ``[B, H, Tq, Tk]``.
        """
        x_kv = x_q if x_kv is None else x_kv
        if self.norm == "pre":
            x_q, x_kv = self.norm1(x_q), self.norm1(x_kv)
        return self.attention.attention_map(x_q, x_kv, kv_mask=kv_mask)
