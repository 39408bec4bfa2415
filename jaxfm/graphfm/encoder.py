"""Packed Perceiver encoder (GraphFM eq. 1): per-graph latents cross-attend to that graph only.

All graphs of a packed batch share ONE node sequence ``tokens [T, D]`` with segment ids
(graph slot + 1; 0 = padding rows). The K learned latents ``[K, D]`` are shared by all graphs;
graph slot g gets a copy, and the cross attention lets slot g's latents see only the rows with
``segment_ids == g + 1``. Two layouts compute the same thing:

* ``segment`` (CPU/TPU): the ``G * K`` latent queries carry their slot's id as ``q_segment_ids``
  and the one concatenated ``[T, D]`` sequence is the key/value side with ``kv_segment_ids``: one
  :func:`jaxfm.ops.attention` call, no padding between graphs (XLA path, dense ``[G K, T]``
  mask).
* ``bucketed`` (GPU): keys and values are projected once per packed row, then each graph's rows
  (contiguous in the packed sequence) are gathered into a ``[G, S, H, Dh]`` layout and its true
  length goes in as ``kv_seq_lengths``, the form cuDNN's flash attention takes (no dense mask).
  S = ``bucket_nodes`` (default T).

Cost note (measured, ``experiments/benchmarks/graphfm_encoder.py``): the XLA ``segment`` path
materializes the masked ``[G K, T]`` score matrix, so it costs O(G K T), not O(K T); the
``bucketed`` path costs O(G K S) (linear in T for graphs of bounded size S, but every graph
pays for S keys). A ragged (grouped) kernel would make the packed path O(K T) exactly.

``auto`` picks ``bucketed`` on GPU and ``segment`` elsewhere. Then ``encoder_depth`` pre-norm
self-attention blocks run on each graph's K latents (``[G, K, D]``), followed by a LayerNorm.
Cost O(T K) + O(G K^2). Unused slots (``graph_mask`` False) output zeros.

The cross-attention block is Perceiver's: ``x = latents + Attn(LN_q(latents), LN_kv(tokens))``,
then ``x = x + FFN(LN(x))`` (GEGLU), with the same parameter names as
:class:`jaxfm.graphfm.blocks.Block`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.graphfm.blocks import GEGLU, Block
from jaxfm.graphfm.config import ATTENTION_PATHS
from jaxfm.nn.attention import MultiHeadAttention
from jaxfm.ops import attention as _attention

__all__ = ["PackedCrossAttention", "PerceiverEncoder", "resolve_attention_path", "scatter_graphs"]


def resolve_attention_path(path: str) -> str:
    """``auto`` -> ``bucketed`` on GPU, ``segment`` elsewhere; other values pass through."""
    if path not in ATTENTION_PATHS:
        raise ValueError(f"attention path must be one of {ATTENTION_PATHS}, got {path!r}")
    if path == "auto":
        return "bucketed" if jax.default_backend() == "gpu" else "segment"
    return path


def scatter_graphs(tokens: jax.Array, segment_ids: jax.Array, num_graphs: int, bucket: int):
    """Gathers each graph's (contiguous) rows into a padded per-graph layout.

    Args:
      tokens: packed rows.
      segment_ids: graph slot + 1 per row (0 = padding); a graph's rows must be contiguous.
      num_graphs: G (static).
      bucket: S, rows per graph in the output (static); longer graphs are truncated, so callers
        size S to the largest graph (T is always enough).

    Returns:
      ``(x [G, S, D], lengths [G] int32)``; rows past a graph's length are zero.

    Shapes:
      tokens ``[T, D]``, segment_ids ``[T]`` -> ``[G, S, D]``, ``[G]``.
    """
    t = tokens.shape[0]
    rows = jnp.arange(t, dtype=jnp.int32)
    seg = segment_ids.astype(jnp.int32)
    lengths = jax.ops.segment_sum(jnp.ones_like(rows), seg, num_segments=num_graphs + 1)[1:]
    starts = jax.ops.segment_min(rows, seg, num_segments=num_graphs + 1)[1:]  # [G]
    starts = jnp.where(lengths > 0, starts, 0)
    lengths = jnp.minimum(lengths, bucket)
    offset = jnp.arange(bucket, dtype=jnp.int32)
    idx = jnp.minimum(starts[:, None] + offset[None, :], t - 1)  # [G, S]
    valid = offset[None, :] < lengths[:, None]  # [G, S]
    x = jnp.where(valid[..., None], tokens[idx], jnp.zeros((), tokens.dtype))  # [G, S, D]
    return x, lengths


class PackedCrossAttention(nn.Module):
    """Perceiver cross-attention block from per-slot latents to the packed node rows.

    Attributes:
      num_heads: attention heads.
      mlp_ratio: GEGLU hidden width / D.
      dropout: dropout on the attention output and in the FFN.
      eps: LayerNorm epsilon.
      path: ``"segment"`` or ``"bucketed"`` (resolved, see :func:`resolve_attention_path`).
      bucket_nodes: S of the bucketed layout (``None``: T).
      dtype: compute dtype.

    Parameters: ``norm_q``, ``norm_kv``, ``attention/{query,key,value,out}``, ``norm_mlp``,
    ``mlp/{fc1,fc2}``.

    Shapes:
      latents ``[K, D]``, tokens ``[T, D]``, segment_ids ``[T]``, graph_mask ``[G]`` ->
      ``[G, K, D]``.
    """

    num_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    eps: float = 1e-5
    path: str = "segment"
    bucket_nodes: int | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, latents, tokens, segment_ids, graph_mask, *, deterministic: bool = True):
        graph_mask, segment_ids = jnp.asarray(graph_mask, bool), jnp.asarray(segment_ids)
        g, (k, d), t = graph_mask.shape[0], latents.shape, tokens.shape[0]
        hq = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm_q")(latents)  # [K, D]
        ctx = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm_kv")(tokens)  # [T, D]
        mha = MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype, name="attention")
        slot_ids = jnp.where(graph_mask, jnp.arange(1, g + 1), 0).astype(jnp.int32)  # [G]
        seg = jnp.where(segment_ids > 0, segment_ids, 0).astype(jnp.int32)
        if self.path == "segment":
            q, kk, v = mha.project_qkv(hq, ctx)  # [K, H, Dh], [T, H, Dh]
            q = jnp.broadcast_to(q, (g, *q.shape)).reshape(1, g * k, *q.shape[1:])  # [1, GK, H, Dh]
            y = _attention(
                q,
                kk[None],
                v[None],
                q_segment_ids=jnp.repeat(slot_ids, k)[None],  # [1, G*K]
                kv_segment_ids=seg[None],  # [1, T]
            )
            y = y.reshape(g, k, *y.shape[2:])  # [G, K, H, Dh]
        elif self.path == "bucketed":
            seg = jnp.where(graph_mask[jnp.maximum(seg - 1, 0)], seg, 0)  # unused slot -> pad
            bucket = t if self.bucket_nodes is None else min(self.bucket_nodes, t)
            q, kk, v = mha.project_qkv(hq, ctx)  # [K, H, Dh], [T, H, Dh]: once per real row
            h_, dh = kk.shape[1:]
            kv = jnp.concatenate([kk, v], axis=1).reshape(t, 2 * h_ * dh)  # [T, 2 H Dh]
            kv, lengths = scatter_graphs(kv, seg, g, bucket)  # [G, S, 2 H Dh], [G]
            kk, v = jnp.split(kv.reshape(g, bucket, 2 * h_, dh), 2, axis=2)  # [G, S, H, Dh]
            q = jnp.broadcast_to(q, (g, *q.shape))  # [G, K, H, Dh]
            y = _attention(q, kk, v, kv_seq_lengths=lengths)
        else:
            raise ValueError(f"PackedCrossAttention.path must be segment|bucketed, got {self.path}")
        h = mha.out(y, d)  # [G, K, D]
        x = latents.astype(h.dtype)[None] + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm_mlp")(x)
        h = GEGLU(self.mlp_ratio * d, self.dropout, self.dtype, name="mlp")(
            h, deterministic=deterministic
        )
        return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class PerceiverEncoder(nn.Module):
    """Learned latents ``[K, D]`` -> per-graph latents ``[G, K, D]``.

    Attributes:
      num_latents: K.
      depth: latent self-attention blocks.
      cross_heads: heads of the cross attention.
      self_heads: heads of the self-attention blocks.
      mlp_ratio: GEGLU hidden width / D.
      dropout: dropout rate.
      eps: LayerNorm epsilon.
      attention: ``"auto"``, ``"segment"`` or ``"bucketed"`` (static).
      bucket_nodes: S of the bucketed layout (``None``: T).
      dtype: compute dtype.

    Parameters: ``latents [K, D]``, ``cross_attention`` (:class:`PackedCrossAttention`),
    ``layer_{i}`` (self-attention :class:`~jaxfm.graphfm.blocks.Block`), ``norm``.

    Shapes:
      tokens ``[T, D]``, segment_ids ``[T]`` (0 = padding), graph_mask ``[G]`` ->
      ``[G, K, D]`` (zeros for unused slots).
    """

    num_latents: int
    depth: int
    cross_heads: int
    self_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    eps: float = 1e-5
    attention: str = "auto"
    bucket_nodes: int | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, tokens, segment_ids, graph_mask, *, deterministic: bool = True):
        d = tokens.shape[-1]
        graph_mask = jnp.asarray(graph_mask, bool)
        latents = self.param("latents", nn.initializers.normal(0.02), (self.num_latents, d))
        x = PackedCrossAttention(
            self.cross_heads,
            self.mlp_ratio,
            self.dropout,
            self.eps,
            path=resolve_attention_path(self.attention),
            bucket_nodes=self.bucket_nodes,
            dtype=self.dtype,
            name="cross_attention",
        )(latents, tokens, segment_ids, graph_mask, deterministic=deterministic)  # [G, K, D]
        for i in range(self.depth):
            x = Block(
                self.self_heads,
                self.mlp_ratio,
                self.dropout,
                self.eps,
                dtype=self.dtype,
                name=f"layer_{i}",
            )(x, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(x)
        return jnp.where(graph_mask[:, None, None], x, jnp.zeros((), x.dtype))
