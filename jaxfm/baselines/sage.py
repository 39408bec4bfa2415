"""GraphSAGE layer with the mean aggregator (Hamilton et al., 2017).

``h'_v = W_self h_v + W_nb mean_{u -> v} h_u + b`` (the concatenation form of the paper's
Algorithm 1, written as two matrices). A node without valid incoming edges gets a zero
neighbourhood mean. No self loop is added: the self term is ``W_self``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.baselines.gcn import Linear, edge_validity, mask_nodes

__all__ = ["SAGELayer"]


class SAGELayer(nn.Module):
    """GraphSAGE-mean layer under the shared message-passing contract.

    Attributes:
      features: output width.
      use_bias: bias on the self term.

    Parameters: ``self/kernel [F, features]``, ``self/bias [features]``,
    ``neighbor/kernel [F, features]``.

    Shapes:
      h ``[N, F]`` (array or BCOO); senders/receivers ``[E]`` int; edge_mask ``[E]`` bool;
      node_mask ``[N]`` bool -> ``[N, features]`` (padded nodes zeroed).
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(
        self, h, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True
    ):
        del deterministic
        n = h.shape[0]
        valid = edge_validity(senders, receivers, edge_mask, node_mask)
        z_self = Linear(self.features, use_bias=self.use_bias, name="self")(h)
        # W_nb (mean h_u) = mean (W_nb h_u): project first so BCOO inputs work.
        z_nb = Linear(self.features, use_bias=False, name="neighbor")(h)
        count = jax.ops.segment_sum(valid.astype(jnp.float32), receivers, num_segments=n)
        msg = jnp.where(valid[:, None], z_nb[senders], 0.0)  # [E, features]
        mean = (
            jax.ops.segment_sum(msg, receivers, num_segments=n) / jnp.maximum(count, 1.0)[:, None]
        )
        return mask_nodes(z_self + mean, node_mask)
