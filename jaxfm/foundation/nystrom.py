"""Nystromformer encoder layer (transformers' ``NystromformerLayer``), the layer BrainLM stacks.

Every BrainLM encoder and decoder layer is ``transformers.models.nystromformer.NystromformerLayer``
(transformers 4.28): a BERT-style **post-norm** block

    ``h = LN(x + dense(ctx(x)))``,  ``y = LN(h + dense2(act(dense1(h))))``

whose attention context is

    ``ctx = A V + conv(V)``.

``A V`` is exact softmax attention when ``num_landmarks == segment_means_seq_len`` (a comparison
of two *config constants*, not of the real sequence length; every released BrainLM config takes
this path), otherwise the Nystrom approximation (Xiong et al., 2021, eq. 14):
``softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V`` with landmarks ``Q~, K~`` the means
of consecutive segments of ``segment_means_seq_len // num_landmarks`` tokens and ``pinv`` the
6-step iterative Moore-Penrose approximation (their eq. 16). Q and K are each divided by
``Dh ** 0.25`` (same as ``1 / sqrt(Dh)`` on the scores). ``conv`` is a depthwise
``Conv2d(H, H, kernel=(k, 1), padding=(k // 2, 0), groups=H, bias=False)`` over the **token
axis** of each value head (zero padding at both ends), so it depends on the token order as fed.
No attention dropout is applied (transformers defines it but never calls it).

The exact path runs through :func:`jaxfm.ops.attention` (the one attention entry point); the
Nystrom path through :func:`nystrom_attention` here.

Parameter tree (names follow the PyTorch state dict):
``attention/self/{query,key,value}/{kernel [D, H, Dh], bias [H, Dh]}``,
``attention/self/conv/kernel [k, 1, 1, H]`` (HWIO of the OIHW ``(H, 1, k, 1)`` weight),
``attention/output/dense/{kernel [H, Dh, D], bias [D]}``, ``attention/output/LayerNorm``,
``intermediate/dense``, ``output/dense``, ``output/LayerNorm``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.nn.mlp import get_activation
from jaxfm.ops import attention as _attention
from jaxfm.ops import cross_node_attention
from jaxfm.ops.nystrom import _fail, nystrom_attention

__all__ = [
    "HF_ACTIVATIONS",
    "NystromformerLayer",
    "NystromformerSelfAttention",
]

# transformers ACT2FN names -> jaxfm.nn.mlp activations.
HF_ACTIVATIONS = {
    "gelu": "gelu",  # exact erf GELU
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_AGGREGATIONS = ("mean", "sum")


class _HeadsDense(nn.Module):
    """``[..., H, Dh] -> [..., D]`` with an optional per-row bias scale (cross-node messages)."""

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array, bias_scale: jax.Array | None = None) -> jax.Array:
        h, dh = y.shape[-2:]
        kernel = self.param(
            "kernel",
            lambda key, shape, dt: nn.initializers.xavier_uniform()(
                key, (h * dh, shape[-1]), dt
            ).reshape(shape),
            (h, dh, self.features),
            self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        y, kernel, bias = nn.dtypes.promote_dtype(y, kernel, bias, dtype=self.dtype)
        out = jnp.einsum("...hk,hkf->...f", y, kernel)
        if bias_scale is not None:
            bias = bias * bias_scale.astype(out.dtype)
        return out + bias


class _DenseLayerNorm(nn.Module):
    """BERT ``SelfOutput`` / ``Output``: ``LayerNorm(residual + dropout(dense(y)))``.

    ``dense`` maps to the residual's width; with ``heads_input`` it reads ``[..., H, Dh]``.
    """

    heads_input: bool
    layer_norm_eps: float
    dropout: float
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y, residual, *, bias_scale=None, deterministic: bool = True):
        features = residual.shape[-1]
        if self.heads_input:
            y = _HeadsDense(features, self.dtype, self.param_dtype, name="dense")(y, bias_scale)
        else:
            y = nn.Dense(
                features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.xavier_uniform(),
                name="dense",
            )(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return nn.LayerNorm(
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="LayerNorm",
        )(y + residual)


class NystromformerSelfAttention(nn.Module):
    """Q/K/V projections, exact-or-Nystrom attention, and the depthwise value convolution.

    Attributes:
      num_heads: H.
      num_landmarks: m; exact softmax iff ``num_landmarks == segment_means_seq_len``.
      segment_means_seq_len: config constant; segments are ``segment_means_seq_len // m`` long.
      conv_kernel_size: odd k of the value convolution, or ``None`` for none.
      inv_init_option: ``"original"`` or ``"exact"`` (see :func:`iterative_pinv`).
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Shapes:
      ``project``: x ``[B, S, D]`` -> q, k, v ``[B, S, H, Dh]``.
      ``value_conv``: v ``[B, S, H, Dh]`` -> ``[B, S, H, Dh]``.
    """

    num_heads: int
    num_landmarks: int = 64
    segment_means_seq_len: int = 64
    conv_kernel_size: int | None = 65
    inv_init_option: str = "original"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def exact(self) -> bool:
        """Whether the exact softmax path is taken (a comparison of config constants)."""
        return self.num_landmarks == self.segment_means_seq_len

    def setup(self):
        if self.conv_kernel_size is not None and self.conv_kernel_size % 2 == 0:
            _fail(
                f"NystromformerSelfAttention: conv_kernel_size must be odd (an even kernel "
                f"changes the sequence length), got {self.conv_kernel_size}"
            )
        self.query = _QKV(self.num_heads, self.dtype, self.param_dtype)
        self.key = _QKV(self.num_heads, self.dtype, self.param_dtype)
        self.value = _QKV(self.num_heads, self.dtype, self.param_dtype)
        if self.conv_kernel_size is not None:
            k = self.conv_kernel_size
            self.conv = nn.Conv(
                self.num_heads,
                kernel_size=(k, 1),
                padding=((k // 2, k // 2), (0, 0)),
                feature_group_count=self.num_heads,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform"),
            )

    def project(self, x: jax.Array, x_kv: jax.Array | None = None):
        """Q from ``x``, K and V from ``x_kv`` (default ``x``), before any scaling."""
        x_kv = x if x_kv is None else x_kv
        return self.query(x), self.key(x_kv), self.value(x_kv)

    def value_conv(self, v: jax.Array) -> jax.Array:
        """Depthwise conv over the token axis of each value head (zeros if there is no conv)."""
        if self.conv_kernel_size is None:
            return jnp.zeros_like(v)
        # torch Conv2d on (B, H, S, Dh): channels = heads, spatial = (S, Dh); NHWC here.
        y = self.conv(jnp.swapaxes(v, 2, 3))  # [B, S, Dh, H]
        return jnp.swapaxes(y, 2, 3)  # [B, S, H, Dh]

    def _segment_len(self) -> int:
        return self.segment_means_seq_len // self.num_landmarks

    def __call__(
        self, x: jax.Array, *, return_weights: bool = False, return_intermediates: bool = False
    ):
        """Self-attention context ``A V + conv(V)``.

        Returns:
          ``(context [B, S, H, Dh], probs, intermediates)``.
          probs: only with ``return_weights`` (else ``None``; asking for them makes the exact
          path use the dense reference attention): ``[B, H, S, S]`` (exact) or ``[B, H, S, m]``
          (Nystrom).
          intermediates: only with ``return_intermediates`` (else ``None``): ``query``,
          ``key``, ``value`` ``[B, S, H*Dh]`` (Linear outputs before the scaling) and
          ``value_conv`` ``[B, H, S, Dh]`` (PyTorch layouts, as in the golden files).
        """
        q, k, v = self.project(x)  # [B, S, H, Dh]
        if self.exact:
            # (q / Dh**.25)(k / Dh**.25)^T == q k^T / sqrt(Dh): the entry point's scaling.
            res = _attention(q, k, v, return_weights=return_weights)
            ctx, probs = res if return_weights else (res, None)
        else:
            ctx, probs = nystrom_attention(
                q,
                k,
                v,
                num_landmarks=self.num_landmarks,
                segment_len=self._segment_len(),
                init_option=self.inv_init_option,
            )
        conv = self.value_conv(v)
        inter = None
        if return_intermediates:
            flat = lambda a: a.reshape(*a.shape[:2], -1)  # [B, S, H*Dh]
            inter = {
                "query": flat(q),
                "key": flat(k),
                "value": flat(v),
                "value_conv": jnp.transpose(conv, (0, 2, 1, 3)),  # [B, H, S, Dh]
            }
        return ctx + conv, probs, inter

    def cross_node(
        self,
        x: jax.Array,
        x_src: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        *,
        kv_mask: jax.Array | None,
        edge_mask: jax.Array | None,
        aggregation: str,
        edge_chunk_size: int | None,
    ):
        """Aggregated cross-node contexts ``M_v = AGG_u [A_{u->v} V_u + conv(V_u)]``.

        Returns ``(context [N, L, H, Dh], in_degree [N] float32)``.
        """
        n = x.shape[0]
        q, k, v = self.project(x, x_src)  # q [N, Lq, H, Dh], k/v [N, Lk, H, Dh]
        if kv_mask is not None:
            v = jnp.where(kv_mask[:, :, None, None], v, 0.0)  # padding = the conv's zero pad
        valid = jnp.ones(senders.shape, bool) if edge_mask is None else edge_mask
        deg = jax.ops.segment_sum(valid.astype(jnp.float32), receivers, num_segments=n)  # [N]
        denom = jnp.maximum(deg, 1.0) if aggregation == "mean" else jnp.ones_like(deg)

        def aggregate(per_edge):  # [E, L, H, Dh] -> [N, L, H, Dh]
            per_edge = jnp.where(valid[:, None, None, None], per_edge, 0.0)
            total = jax.ops.segment_sum(per_edge, receivers, num_segments=n)
            return total / denom[:, None, None, None].astype(total.dtype)

        if self.exact:
            ctx = cross_node_attention(
                q,
                k,
                v,
                senders,
                receivers,
                kv_mask=kv_mask,
                edge_mask=edge_mask,
                aggregation=aggregation,
                edge_chunk_size=edge_chunk_size,
            )
        else:
            if kv_mask is not None:
                _fail("NystromformerSelfAttention.cross_node: the Nystrom path takes no kv_mask")
            # Per-edge Nystrom attention (memory O(E L D)); padding edges are left out of the
            # global 'original' pinv scale.
            ctx_e, _ = nystrom_attention(
                q[receivers],
                k[senders],
                v[senders],
                num_landmarks=self.num_landmarks,
                segment_len=self._segment_len(),
                init_option=self.inv_init_option,
                batch_valid=valid,
            )
            ctx = aggregate(ctx_e)
        if self.conv_kernel_size is not None:
            # conv runs along each SOURCE's token axis; token i of the destination receives
            # token i of conv(V_u), aggregated like the attention messages.
            ctx = ctx + aggregate(self.value_conv(v)[senders])
        return ctx, deg


class _QKV(nn.Module):
    """Linear ``[..., D] -> [..., H, D/H]`` (DenseGeneral layout: ``kernel [D, H, Dh]``,
    ``bias [H, Dh]``)."""

    num_heads: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        if d % self.num_heads:
            _fail(f"Nystromformer: hidden size {d} is not divisible by num_heads={self.num_heads}")
        shape = (d, self.num_heads, d // self.num_heads)
        kernel = self.param(
            "kernel",
            lambda key, sh, dt: nn.initializers.xavier_uniform()(key, (d, d), dt).reshape(sh),
            shape,
            self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, shape[1:], self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("...d,dhk->...hk", x, kernel) + bias


class _NystromformerAttention(nn.Module):
    """``attention``: ``self`` (context) + ``output`` (dense, residual, LayerNorm)."""

    num_heads: int
    num_landmarks: int
    segment_means_seq_len: int
    conv_kernel_size: int | None
    inv_init_option: str
    layer_norm_eps: float
    hidden_dropout: float
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        self.self = NystromformerSelfAttention(
            num_heads=self.num_heads,
            num_landmarks=self.num_landmarks,
            segment_means_seq_len=self.segment_means_seq_len,
            conv_kernel_size=self.conv_kernel_size,
            inv_init_option=self.inv_init_option,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.output = _DenseLayerNorm(
            heads_input=True,
            layer_norm_eps=self.layer_norm_eps,
            dropout=self.hidden_dropout,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, x, *, deterministic=True, return_weights=False, return_intermediates=False):
        ctx, probs, inter = self.self(
            x, return_weights=return_weights, return_intermediates=return_intermediates
        )
        return self.output(ctx, x, deterministic=deterministic), probs, inter

    def cross_node(self, x, x_src, senders, receivers, *, aggregation, deterministic, **kw):
        ctx, deg = self.self.cross_node(
            x, x_src, senders, receivers, aggregation=aggregation, **kw
        )  # [N, L, H, Dh], [N]
        # the output dense is part of each message: its bias counts once per aggregated edge
        scale = jnp.minimum(deg, 1.0) if aggregation == "mean" else deg
        return self.output(ctx, x, bias_scale=scale[:, None, None], deterministic=deterministic)


class _Intermediate(nn.Module):
    """``intermediate``: ``act(dense(x))``."""

    features: int
    activation: str
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(
            self.features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            name="dense",
        )(x)
        return get_activation(self.activation)(y)


class NystromformerLayer(nn.Module):
    """transformers' ``NystromformerLayer``: post-norm attention + feed-forward block.

    Runs as a self-attention layer (``__call__``) and, with the same parameters, in FIMP
    cross-node form (:meth:`cross_node`).

    Attributes:
      num_heads: attention heads H (hidden size D comes from the input).
      intermediate_size: feed-forward width.
      hidden_act: transformers activation name (``"gelu"`` = exact erf GELU); see
        :data:`HF_ACTIVATIONS`.
      layer_norm_eps: both LayerNorms (BrainLM: 1e-12).
      num_landmarks: Nystrom landmarks m.
      segment_means_seq_len: exact softmax iff equal to ``num_landmarks``.
      conv_kernel_size: odd kernel of the depthwise value convolution, or ``None``.
      inv_init_option: ``"original"`` or ``"exact"`` pinv initialisation (Nystrom path only).
      hidden_dropout: dropout after both dense projections (``hidden_dropout_prob``).
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Shapes:
      ``__call__``: x ``[B, S, D]`` -> ``[B, S, D]``.
      ``cross_node``: x ``[N, L, D]`` -> ``[N, L, D]``.
    """

    num_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    num_landmarks: int = 64
    segment_means_seq_len: int = 64
    conv_kernel_size: int | None = 65
    inv_init_option: str = "original"
    hidden_dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.hidden_act not in HF_ACTIVATIONS:
            _fail(
                f"NystromformerLayer: hidden_act must be one of {sorted(HF_ACTIVATIONS)}, got "
                f"{self.hidden_act!r}"
            )
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.attention = _NystromformerAttention(
            num_heads=self.num_heads,
            num_landmarks=self.num_landmarks,
            segment_means_seq_len=self.segment_means_seq_len,
            conv_kernel_size=self.conv_kernel_size,
            inv_init_option=self.inv_init_option,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout=self.hidden_dropout,
            **common,
        )
        self.intermediate = _Intermediate(
            self.intermediate_size, HF_ACTIVATIONS[self.hidden_act], **common
        )
        self.output = _DenseLayerNorm(
            heads_input=False,
            layer_norm_eps=self.layer_norm_eps,
            dropout=self.hidden_dropout,
            **common,
        )

    def _feed_forward(self, h, deterministic):
        return self.output(self.intermediate(h), h, deterministic=deterministic)

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool = True,
        output_attentions: bool = False,
        output_intermediates: bool = False,
    ):
        """Self-attention layer.

        Args:
          x: token sequence (as fed: the value convolution depends on the token order).
          deterministic: disables dropout when True.
          output_attentions: also return the attention probabilities. Static.
          output_intermediates: also return q/k/v Linear outputs and the value convolution.
            Static.

        Returns:
          ``y [B, S, D]``, or ``(y, aux)`` when either flag is set; ``aux`` holds
          ``attentions`` (``[B, H, S, S]``, or ``[B, H, S, m]`` on the Nystrom path) and/or
          ``query``, ``key``, ``value`` ``[B, S, D]``, ``value_conv`` ``[B, H, S, Dh]``.
        """
        h, probs, inter = self.attention(
            x,
            deterministic=deterministic,
            return_weights=output_attentions,
            return_intermediates=output_intermediates,
        )
        y = self._feed_forward(h, deterministic)
        if not (output_attentions or output_intermediates):
            return y
        aux = dict(inter or {})
        if output_attentions:
            aux["attentions"] = probs
        return y, aux

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
        """The same layer with FIMP cross-node attention (same signature as
        :meth:`jaxfm.nn.TransformerLayer.cross_node`).

        For an edge ``u -> v`` the attention message is
        ``m_{u->v} = dense(softmax(Q_v K_u^T / sqrt(Dh)) V_u + conv(V_u))``, with Q from the
        destination's stream ``x`` and K, V from the source's stream ``x_src`` (default ``x``).
        **The value convolution runs over the source's token axis**: ``conv(V_u)`` is computed
        once per source node along its own tokens (padding tokens of ``kv_mask`` zeroed first,
        like the conv's zero padding) and token i of the destination receives token i of it, so
        source and destination streams must have the same length L. Messages are aggregated
        token-wise over v's valid incoming edges (mean or sum; the dense bias counts once per
        aggregated edge, a node without edges gets no message), then the post-norm residual
        ``LN(x_v + M_v)`` and the feed-forward block run per node. With self-loops only, this
        is :meth:`__call__` node by node. The Nystrom path (``num_landmarks !=
        segment_means_seq_len``) runs per edge with no ``kv_mask``.

        Args:
          x: destination (query) token streams.
          senders: source node per edge.
          receivers: destination node per edge.
          kv_mask: True for valid source tokens.
          edge_mask: True for real edges.
          aggregation: ``"mean"`` or ``"sum"`` (static).
          edge_chunk_size: edge chunk of the attention op (static).
          deterministic: disables dropout when True.
          x_src: source streams for keys/values (default ``x``).

        Shapes:
          x ``[N, L, D]``; x_src ``[N, L, D]``; senders, receivers ``[E]``; kv_mask ``[N, L]``;
          edge_mask ``[E]`` -> ``[N, L, D]``.

        Raises:
          ValueError: for an unknown aggregation, or source/destination lengths that differ
            while the layer has a value convolution.
        """
        if aggregation not in _AGGREGATIONS:
            _fail(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
        x_src = x if x_src is None else x_src
        if self.conv_kernel_size is not None and x_src.shape[1] != x.shape[1]:
            _fail(
                f"NystromformerLayer.cross_node: with a value convolution the source streams "
                f"must be as long as the destination streams, got {x_src.shape[1]} and "
                f"{x.shape[1]}"
            )
        senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
        h = self.attention.cross_node(
            x,
            x_src,
            senders,
            receivers,
            kv_mask=None if kv_mask is None else jnp.asarray(kv_mask, bool),
            edge_mask=None if edge_mask is None else jnp.asarray(edge_mask, bool),
            aggregation=aggregation,
            edge_chunk_size=edge_chunk_size,
            deterministic=deterministic,
        )
        return self._feed_forward(h, deterministic)
