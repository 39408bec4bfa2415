"""Graph-level decoder (GraphFM appendix D.4): a learned query token cross-attends to a graph's
latents; per-dataset graph heads (in :mod:`jaxfm.graphfm.heads`) map it to graph logits.

``g = LN(Block(query, latents_g))``: one pre-norm cross-attention block (GEGLU FFN) from a single
learned query ``[1, D]`` to the K latents of each graph slot.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.graphfm.blocks import Block

__all__ = ["GraphDecoder"]


class GraphDecoder(nn.Module):
    """Query token x latents -> graph embedding.

    Attributes:
      num_heads: attention heads.
      mlp_ratio: GEGLU hidden width / D.
      eps: LayerNorm epsilon.
      dtype: compute dtype.

    Parameters: ``query [1, 1, D]``, ``block`` (cross :class:`~jaxfm.graphfm.blocks.Block`),
    ``norm``.

    Shapes:
      latents ``[G, K, D]``, graph_mask ``[G]`` -> ``[G, D]`` (zeros for unused slots).
    """

    num_heads: int
    mlp_ratio: int = 4
    eps: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, latents: jax.Array, graph_mask: jax.Array) -> jax.Array:
        g, _, d = latents.shape
        query = self.param("query", nn.initializers.normal(0.02), (1, 1, d))
        q = jnp.broadcast_to(query.astype(latents.dtype), (g, 1, d))  # [G, 1, D]
        h = Block(
            self.num_heads, self.mlp_ratio, 0.0, self.eps, cross=True, dtype=self.dtype,
            name="block",
        )(q, latents)  # fmt: skip
        h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(h[:, 0])  # [G, D]
        return jnp.where(graph_mask[:, None], h, jnp.zeros((), h.dtype))
