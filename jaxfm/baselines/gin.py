"""GIN layer (Xu et al., 2019, eq. 4.1): ``h'_v = MLP((1 + eps) h_v + sum_{u -> v} h_u)``.

The MLP is ``Linear -> ReLU -> Linear`` with a learnable ``eps`` (GIN-eps). The first linear map is
applied before the sum (it commutes with it), so sparse BCOO inputs work unchanged. No self loop
is added: the self term is ``(1 + eps) h_v``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.baselines.gcn import Linear, edge_validity, mask_nodes

__all__ = ["GINLayer"]


class GINLayer(nn.Module):
    """GIN-eps layer under the shared message-passing contract.

    Attributes:
      features: output width.
      hidden_features: width of the MLP's hidden layer (None: ``features``).
      train_eps: learn ``eps`` (else it stays ``eps_init``).
      eps_init: initial ``eps``.

    Parameters: ``eps []`` (if trained), ``mlp_0/kernel [F, hidden]``, ``mlp_0_bias [hidden]``,
    ``mlp_1/{kernel,bias} [hidden, features]``.

    Shapes:
      h ``[N, F]`` (array or BCOO); senders/receivers ``[E]`` int; edge_mask ``[E]`` bool;
      node_mask ``[N]`` bool -> ``[N, features]`` (padded nodes zeroed).
    """

    features: int
    hidden_features: int | None = None
    train_eps: bool = True
    eps_init: float = 0.0

    @nn.compact
    def __call__(
        self, h, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True
    ):
        del deterministic
        n = h.shape[0]
        valid = edge_validity(senders, receivers, edge_mask, node_mask)
        eps = (
            self.param("eps", nn.initializers.constant(self.eps_init), ())
            if self.train_eps
            else self.eps_init
        )
        width = self.hidden_features or self.features
        z = Linear(width, use_bias=False, name="mlp_0")(h)  # h W1, [N, width]
        msg = jnp.where(valid[:, None], z[senders], 0.0)
        agg = (1.0 + eps) * z + jax.ops.segment_sum(msg, receivers, num_segments=n)
        b1 = self.param("mlp_0_bias", nn.initializers.zeros, (width,))
        out = Linear(self.features, name="mlp_1")(nn.relu(agg + b1))
        return mask_nodes(out, node_mask)
