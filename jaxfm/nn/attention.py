"""Multi-head attention projections around the :mod:`jaxfm.ops` attention functions.

:class:`MultiHeadAttention` owns the four projections (``query``, ``key``, ``value``, ``out``) and
runs them in two forms sharing the same parameters:

* ``__call__``: ordinary self/cross attention over ``[B, T, D]`` via :func:`jaxfm.ops.attention`;
* ``cross_node``: FIMP message creation (eqs. 6-7) over node token streams ``[N, L, D]``: for an
  edge ``u -> v``, ``m_{u->v} = softmax((H_v W_Q)(H_u W_K)^T / sqrt(Dh)) (H_u W_V) W_O`` and
  ``M_v = AGG_{u in N(v)} m_{u->v}``. Q, K and V are projected once per node (not per edge), the
  per-edge softmax and aggregation run in :func:`jaxfm.ops.cross_node_attention`, and the linear
  output projection is applied once per node to the aggregate.

Parameter layout equals ``flax.linen.DenseGeneral`` (as in ``nn.MultiHeadDotProductAttention``):
``query|key|value/kernel [D, H, Dh]``, ``query|key|value/bias [H, Dh]``,
``out/kernel [H, Dh, Dout]``, ``out/bias [Dout]``. The head width may be inferred from the input
width at call time, which is why the projections are tiny local modules rather than
``DenseGeneral`` instances.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.ops import attention as _attention
from jaxfm.ops import cross_node_attention

__all__ = ["AGGREGATIONS", "MultiHeadAttention"]

AGGREGATIONS = ("mean", "sum")


def _reshaped_init(init: Callable, in_ndim: int) -> Callable:
    """Initializes ``[*in, *out]`` kernels as the 2-D ``[prod(in), prod(out)]`` matrix (as
    DenseGeneral does), so fan-in/fan-out scaling sees the true fans."""

    def _init(key, shape, dtype=jnp.float32):
        flat = (math.prod(shape[:in_ndim]), math.prod(shape[in_ndim:]))
        return init(key, flat, dtype).reshape(shape)

    return _init


class _HeadProjection(nn.Module):
    """``[..., D] -> [..., H, Dh]`` (DenseGeneral layout; Dh given at call time)."""

    num_heads: int
    use_bias: bool
    dtype: Any
    param_dtype: Any
    kernel_init: Callable
    bias_init: Callable
    precision: Any

    @nn.compact
    def __call__(self, x: jax.Array, head_dim: int) -> jax.Array:
        shape = (x.shape[-1], self.num_heads, head_dim)
        kernel = self.param("kernel", _reshaped_init(self.kernel_init, 1), shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, shape[1:], self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("...d,dhk->...hk", x, kernel, precision=self.precision)
        return y if bias is None else y + bias


class _OutProjection(nn.Module):
    """``[..., H, Dh] -> [..., F]``; the bias may be scaled per row (edge-count semantics)."""

    use_bias: bool
    dtype: Any
    param_dtype: Any
    kernel_init: Callable
    bias_init: Callable
    precision: Any

    @nn.compact
    def __call__(self, y: jax.Array, features: int, bias_scale=None) -> jax.Array:
        shape = (*y.shape[-2:], features)
        kernel = self.param("kernel", _reshaped_init(self.kernel_init, 2), shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (features,), self.param_dtype)
            if self.use_bias
            else None
        )
        y, kernel, bias = nn.dtypes.promote_dtype(y, kernel, bias, dtype=self.dtype)
        out = jnp.einsum("...hk,hkf->...f", y, kernel, precision=self.precision)
        if bias is None:
            return out
        if bias_scale is not None:
            bias = bias * bias_scale.astype(out.dtype)
        return out + bias


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``query``/``key``/``value``/``out`` projections.

    Attributes:
      num_heads: H.
      head_dim: Dh; if ``None``, ``qkv_features // H``, or else ``D_q // H`` (query input width).
      qkv_features: total projected width ``H * Dh`` (alternative to ``head_dim``).
      out_features: output width; ``None`` keeps the query input width.
      use_bias: biases on all four projections.
      dtype: computation dtype (``None``: from inputs and params).
      param_dtype: parameter dtype.
      kernel_init: kernel initializer (applied to the 2-D flattened kernel).
      bias_init: bias initializer.
      precision: einsum precision of the projections.
      implementation: forwarded to :func:`jaxfm.ops.attention` (``None`` = auto). Static.

    Shapes:
      ``__call__``: x_q ``[B, Tq, Dq]``, x_kv ``[B, Tk, Dkv]`` -> ``[B, Tq, Dout]``.
      ``cross_node``: x ``[N, Lq, D]``, x_src ``[N, Lk, Ds]``, senders/receivers ``[E]`` ->
      ``[N, Lq, Dout]``.
    """

    num_heads: int
    head_dim: int | None = None
    qkv_features: int | None = None
    out_features: int | None = None
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.zeros
    precision: Any = None
    implementation: str | None = None

    def setup(self):
        common = dict(
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            precision=self.precision,
        )
        self.query = _HeadProjection(num_heads=self.num_heads, **common)
        self.key = _HeadProjection(num_heads=self.num_heads, **common)
        self.value = _HeadProjection(num_heads=self.num_heads, **common)
        self.out = _OutProjection(**common)

    def _resolve_head_dim(self, d_q: int) -> int:
        if self.head_dim is not None:
            if (
                self.qkv_features is not None
                and self.qkv_features != self.head_dim * self.num_heads
            ):
                raise ValueError(
                    f"MultiHeadAttention: qkv_features={self.qkv_features} != num_heads "
                    f"({self.num_heads}) * head_dim ({self.head_dim})"
                )
            return self.head_dim
        total = self.qkv_features if self.qkv_features is not None else d_q
        if total % self.num_heads:
            raise ValueError(
                f"MultiHeadAttention: width {total} is not divisible by num_heads={self.num_heads}"
            )
        return total // self.num_heads

    def project_qkv(self, x_q: jax.Array, x_kv: jax.Array | None = None):
        """Projects queries from ``x_q`` and keys/values from ``x_kv`` (default ``x_q``).

        Shapes:
          x_q ``[..., Tq, Dq]``, x_kv ``[..., Tk, Dkv]`` -> q ``[..., Tq, H, Dh]``,
          k and v ``[..., Tk, H, Dh]``.
        """
        x_kv = x_q if x_kv is None else x_kv
        dh = self._resolve_head_dim(x_q.shape[-1])
        return self.query(x_q, dh), self.key(x_kv, dh), self.value(x_kv, dh)

    def project_qk(self, x_q: jax.Array, x_kv: jax.Array | None = None):
        """Like :meth:`project_qkv` without the values: ``(q, k)``."""
        x_kv = x_q if x_kv is None else x_kv
        dh = self._resolve_head_dim(x_q.shape[-1])
        return self.query(x_q, dh), self.key(x_kv, dh)

    def __call__(
        self,
        x_q: jax.Array,
        x_kv: jax.Array | None = None,
        *,
        kv_mask: jax.Array | None = None,
        q_segment_ids: jax.Array | None = None,
        kv_segment_ids: jax.Array | None = None,
        bias: jax.Array | None = None,
        return_weights: bool = False,
    ):
        """Self attention (``x_kv=None``) or cross attention from ``x_q`` to ``x_kv``.

        Args:
          x_q: query-side tokens.
          x_kv: key/value-side tokens (default ``x_q``).
          kv_mask: True for valid keys.
          q_segment_ids: packed-sequence ids of the queries (0 = padding).
          kv_segment_ids: packed-sequence ids of the keys.
          bias: additive attention-logit bias, broadcastable to ``[B, H, Tq, Tk]``.
          return_weights: also return the attention probabilities. Static.

        Returns:
          ``[B, Tq, Dout]``, or ``(out, weights [B, H, Tq, Tk])`` with ``return_weights``. A
          query with no valid key attends to nothing (its output is the ``out`` bias).

        Shapes:
          x_q ``[B, Tq, Dq]``; x_kv ``[B, Tk, Dkv]``; kv_mask ``[B, Tk]`` bool; segment ids
          ``[B, Tq]`` / ``[B, Tk]`` int.
        """
        if x_q.ndim != 3:
            raise ValueError(f"MultiHeadAttention: x_q must be [B, T, D], got {x_q.shape}")
        q, k, v = self.project_qkv(x_q, x_kv)  # [B, T, H, Dh]
        res = _attention(
            q,
            k,
            v,
            q_segment_ids=q_segment_ids,
            kv_segment_ids=kv_segment_ids,
            kv_mask=None if kv_mask is None else jnp.asarray(kv_mask, bool),
            bias=bias,
            implementation=self.implementation,
            return_weights=return_weights,
        )
        y, weights = res if return_weights else (res, None)
        features = self.out_features if self.out_features is not None else x_q.shape[-1]
        out = self.out(y, features)  # [B, Tq, Dout]
        return (out, weights) if return_weights else out

    def attention_map(
        self,
        x_q: jax.Array,
        x_kv: jax.Array | None = None,
        *,
        kv_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Attention probabilities with these parameters (e.g. gene x gene maps of an edge).

        Shapes:
          x_q ``[B, Tq, Dq]``, x_kv ``[B, Tk, Dkv]``, kv_mask ``[B, Tk]`` -> ``[B, H, Tq, Tk]``
          float32. For FIMP edges pass ``x_q = H[receivers]``, ``x_kv = H[senders]``.
        """
        q, k, v = self.project_qkv(x_q, x_kv)
        _, weights = _attention(
            q,
            k,
            v,
            kv_mask=None if kv_mask is None else jnp.asarray(kv_mask, bool),
            return_weights=True,
        )
        return weights

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
        x_src: jax.Array | None = None,
    ) -> jax.Array:
        """FIMP cross-node attention (eqs. 6-7) aggregated at receivers.

        For each valid edge ``u -> v`` the message is ``m_{u->v} = Attn(Q = H_v, K = V = H_u)``
        including the ``out`` projection; ``M_v`` is the token-wise mean (or sum) over v's valid
        incoming edges, and 0 for a node without any. Because ``out`` is affine, it is applied
        once to the aggregated attention output, with its bias counted once per aggregated edge
        (``mean``: once if v has an edge; ``sum``: in-degree times), which equals aggregating
        the per-edge messages exactly.

        Args:
          x: destination (query) token streams, one per node.
          senders: source node of each edge.
          receivers: destination node of each edge.
          kv_mask: True for valid source tokens (key padding mask).
          edge_mask: True for real edges.
          aggregation: ``"mean"`` or ``"sum"``. Static.
          edge_chunk_size: edges per chunk inside the op (bounded memory). Static.
          x_src: source (key/value) token streams; default ``x``.

        Returns:
          Aggregated messages ``M``.

        Shapes:
          x ``[N, Lq, D]``; x_src ``[N, Lk, Ds]``; senders, receivers ``[E]`` int; kv_mask
          ``[N, Lk]`` bool; edge_mask ``[E]`` bool -> ``[N, Lq, Dout]``.
        """
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        n = x.shape[0]
        senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
        # Eq. 6: Q from the destination stream, K and V from the source stream, once per node.
        q, k, v = self.project_qkv(x, x_src)  # q [N, Lq, H, Dh], k/v [N, Lk, H, Dh]
        if edge_mask is not None:
            edge_mask = jnp.asarray(edge_mask, bool)
        # Eq. 7 per edge + token-wise aggregation over incoming edges.
        agg = cross_node_attention(
            q,
            k,
            v,
            senders,
            receivers,
            kv_mask=None if kv_mask is None else jnp.asarray(kv_mask, bool),
            edge_mask=edge_mask,
            num_nodes=n,
            aggregation=aggregation,
            edge_chunk_size=edge_chunk_size,
        )  # [N, Lq, H, Dh]
        valid = (
            jnp.ones(senders.shape, jnp.float32)
            if edge_mask is None
            else edge_mask.astype(jnp.float32)
        )
        in_degree = jax.ops.segment_sum(valid, receivers, num_segments=n)  # [N]
        bias_scale = jnp.minimum(in_degree, 1.0) if aggregation == "mean" else in_degree
        features = self.out_features if self.out_features is not None else x.shape[-1]
        return self.out(agg, features, bias_scale[:, None, None])  # [N, Lq, Dout]
