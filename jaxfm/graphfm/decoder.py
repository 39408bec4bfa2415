"""Node decoder (GraphFM eq. 2) and graph-level decoder.

Node decoder: for target node i in graph g the sequence
``[z_i + e_self, z_{n_1} + e_nbr, ..., z_{n_m} + e_nbr, latents_g + e_latent]`` (length
``1 + m + K``) goes through ``decoder_depth`` pre-norm blocks; the output at position 0 is node
i's embedding. Missing neighbours (``neighbor_mask`` False) are masked out as keys, so padding
never reaches a real target.

Graph decoder (appendix D.4): a learned query token cross-attends to a graph's latents.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxfm.graphfm.batch import PackedBatch
from jaxfm.graphfm.blocks import Block

__all__ = ["GraphDecoder", "NodeDecoder"]


class NodeDecoder(nn.Module):
    """Parameters: ``type_embedding [3, D]`` (self, neighbour, latent), ``layer_{i}``, ``norm``.

    Shapes: tokens ``[T, D]``, latents ``[G, K, D]`` -> ``[Q, D]`` (zeros for padding targets).
    """

    depth: int
    num_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    eps: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, tokens, latents, batch: PackedBatch, *, deterministic: bool = True):
        d = tokens.shape[-1]
        types = self.param("type_embedding", nn.initializers.normal(0.02), (3, d))
        types = types.astype(tokens.dtype)
        me = tokens[batch.target_index][:, None] + types[0]  # [Q, 1, D]
        nbr = tokens[batch.neighbor_index] + types[1]  # [Q, m, D]
        lat = latents[batch.target_graph] + types[2]  # [Q, K, D]
        seq = jnp.concatenate([me, nbr, lat], axis=1)  # [Q, 1 + m + K, D]
        q, k = lat.shape[0], lat.shape[1]
        kv_mask = jnp.concatenate(
            [jnp.ones((q, 1), bool), batch.neighbor_mask.astype(bool), jnp.ones((q, k), bool)],
            axis=1,
        )
        for i in range(self.depth):
            seq = Block(
                self.num_heads,
                self.mlp_ratio,
                self.dropout,
                self.eps,
                dtype=self.dtype,
                name=f"layer_{i}",
            )(seq, kv_mask=kv_mask, deterministic=deterministic)
        out = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(seq[:, 0])
        return jnp.where(batch.target_mask[:, None], out, 0)


class GraphDecoder(nn.Module):
    """Query token x latents -> graph embedding ``[G, D]``. Parameters: ``query``, ``block``."""

    num_heads: int
    mlp_ratio: int = 4
    eps: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, latents, graph_mask):
        g, _, d = latents.shape
        query = self.param("query", nn.initializers.normal(0.02), (1, 1, d))
        q = jnp.broadcast_to(query.astype(latents.dtype), (g, 1, d))
        h = Block(self.num_heads, self.mlp_ratio, 0.0, self.eps, cross=True, dtype=self.dtype,
                  name="block")(q, latents)  # fmt: skip
        h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(h[:, 0])
        return jnp.where(graph_mask[:, None], h, 0)
