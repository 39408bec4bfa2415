"""Packed Perceiver encoder (GraphFM eq. 1): per-graph latents cross-attend to that graph only.

All graphs of a packed batch share ONE node sequence ``tokens [T, D]`` with segment ids
(graph slot + 1; 0 = padding). The K learned latents are copied per graph slot (``[G, K, D]``)
and flattened to ``G * K`` queries whose segment id is their slot's; the cross attention is one
:func:`jaxfm.ops.attention` call with ``q_segment_ids`` / ``kv_segment_ids``, so a graph's latents
see only its own nodes and nothing is padded between graphs. Then ``encoder_depth`` pre-norm
self-attention blocks run on each graph's K latents. Cost O(T K) + O(G K^2).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxfm.graphfm.blocks import Block

__all__ = ["PerceiverEncoder"]


class PerceiverEncoder(nn.Module):
    """Latents ``[K, D]`` -> per-graph latents ``[G, K, D]``.

    Parameters: ``latents [K, D]``, ``cross_attention`` (a cross :class:`Block`),
    ``layer_{i}`` (self-attention blocks), ``norm``.

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
    dtype: Any = None
    implementation: str | None = None

    @nn.compact
    def __call__(self, tokens, segment_ids, graph_mask, *, deterministic: bool = True):
        d = tokens.shape[-1]
        g, k = graph_mask.shape[0], self.num_latents
        latents = self.param("latents", nn.initializers.normal(0.02), (k, d))
        q = jnp.broadcast_to(latents.astype(tokens.dtype), (g, k, d)).reshape(1, g * k, d)
        slot_ids = jnp.where(graph_mask, jnp.arange(1, g + 1), 0).astype(jnp.int32)
        q_seg = jnp.repeat(slot_ids, k)[None]  # [1, G*K]
        x = Block(
            self.cross_heads,
            self.mlp_ratio,
            self.dropout,
            self.eps,
            cross=True,
            dtype=self.dtype,
            implementation=self.implementation,
            name="cross_attention",
        )(
            q,
            tokens[None],
            q_segment_ids=q_seg,
            kv_segment_ids=segment_ids[None].astype(jnp.int32),
            deterministic=deterministic,
        )
        x = x.reshape(g, k, d)  # [G, K, D]
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
        return jnp.where(graph_mask[:, None, None], x, 0)
