"""Node decoder (GraphFM eq. 2).

Node decoder: for target node i in graph g the sequence
``[z_i + e_self, z_{n_1} + e_nbr, ..., z_{n_m} + e_nbr, latents_g + e_latent]`` (length
``1 + m + K``) goes through ``decoder_depth`` pre-norm blocks; the output at position 0 is node
i's embedding. Missing neighbours (``neighbor_mask`` False) are masked out as keys, so padding
never reaches a real target: a target's sequence is built only from its own self row, its
real neighbour rows and its graph's latents, and targets never attend to each other. Padding
targets (``target_mask`` False) output zeros.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm.blocks import Block

__all__ = ["NodeDecoder"]


class NodeDecoder(nn.Module):
    """Transformer over ``[self, m neighbours, K latents]`` per target; position 0 read out.

    Attributes:
      depth: pre-norm blocks (``layer_0`` is the bottom one; NFT unfreezes bottom-up).
      num_heads: attention heads.
      mlp_ratio: GEGLU hidden width / D.
      dropout: dropout rate.
      eps: LayerNorm epsilon.
      dtype: compute dtype.

    Parameters: ``type_embedding [3, D]`` (self, neighbour, latent), ``layer_{i}``, ``norm``.

    Shapes:
      tokens ``[T, D]``, latents ``[G, K, D]``, batch target fields ``[Q]`` / ``[Q, m]`` ->
      ``[Q, D]`` (zeros for padding targets).
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
        nmask = batch.neighbor_mask.astype(bool)  # [Q, m]
        nbr = jnp.where(nmask[..., None], tokens[batch.neighbor_index], 0) + types[1]  # [Q, m, D]
        lat = latents[batch.target_graph] + types[2]  # [Q, K, D]
        seq = jnp.concatenate([me, nbr, lat], axis=1)  # [Q, 1 + m + K, D]
        q, k = lat.shape[0], lat.shape[1]
        kv_mask = jnp.concatenate(
            [jnp.ones((q, 1), bool), nmask, jnp.ones((q, k), bool)],
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
        return jnp.where(batch.target_mask[:, None], out, jnp.zeros((), out.dtype))
