"""GraphMAE (Hou et al., 2022): masked feature reconstruction pretraining + a linear probe.

Pretraining (paper Sec. 3): a fraction ``mask_rate`` of the (valid) nodes has its input features
replaced by a learnable ``[MASK]`` token; a GAT encoder embeds the graph; the embeddings pass a
linear ``encoder_to_decoder`` map and the masked nodes' codes are **re-masked** (set to zero);
a one-layer GAT decoder reconstructs the features; the loss is the scaled cosine error on the
masked nodes (eq. 4)::

    L_SCE = mean_{v masked} (1 - x_v . z_v / (|x_v| |z_v|)) ** gamma,   gamma >= 1.

The model lives here; its pretraining and the linear-probe evaluation are trainers on the
spine, in :mod:`jaxfm.train.graphmae`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfm.baselines.gat import GATLayer
from jaxfm.baselines.gcn import Linear, mask_nodes

__all__ = ["GraphMAE", "sample_node_mask", "sce_loss"]


def sce_loss(pred, target, mask, gamma: float = 2.0, eps: float = 1e-12):
    """Scaled cosine error, averaged over the nodes where ``mask`` is True (0 if none).

    Shapes:
      pred, target ``[N, F]``; mask ``[N]`` bool -> scalar.
    """

    def unit(a):  # max() before the root: a zero row gets a zero (not NaN) gradient
        return a * jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, axis=-1, keepdims=True), eps**2))

    pn, tn = unit(pred), unit(target)
    err = (1.0 - jnp.sum(pn * tn, axis=-1)) ** gamma  # [N]
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(err * mask) / jnp.maximum(mask.sum(), 1.0)


def sample_node_mask(key, num_nodes: int, rate: float, node_mask=None):
    """A uniformly random ``round(rate * #valid)`` subset (at least one) of the valid nodes.

    Shapes:
      node_mask ``[N]`` bool or None -> ``[N]`` bool.
    """
    valid = jnp.ones((num_nodes,), bool) if node_mask is None else jnp.asarray(node_mask, bool)
    scores = jnp.where(valid, jax.random.uniform(key, (num_nodes,)), 2.0)
    rank = jnp.argsort(jnp.argsort(scores))  # 0 = smallest score
    k = jnp.maximum(jnp.round(rate * valid.sum()), 1)
    return (rank < k) & valid


class GraphMAE(nn.Module):
    """GAT encoder / GAT decoder masked autoencoder on node features.

    Attributes:
      num_features: input feature width F (the reconstruction target width).
      hidden: encoder width (split over ``heads`` concatenated heads).
      heads: encoder attention heads.
      num_layers: encoder GAT layers (ELU after each, the last included).
      mask_rate: fraction of valid nodes masked per step.
      gamma: SCE exponent (>= 1).
      dropout: feature dropout before each encoder layer.
      attention_dropout: dropout on the encoder's attention coefficients.

    Methods:
      ``__call__(x, senders, receivers, *, edge_mask=None, node_mask=None,
      deterministic=True)`` -> ``(loss, masked [N] bool)``; needs rng stream ``"mask"`` (and
      ``"dropout"`` when not deterministic).
      ``encode(x, senders, receivers, *, edge_mask=None, node_mask=None)`` -> ``[N, hidden]``.

    Shapes:
      x ``[N, F]`` dense float; senders/receivers ``[E]`` int; masks ``[E]`` / ``[N]`` bool.
    """

    num_features: int
    hidden: int = 256
    heads: int = 4
    num_layers: int = 2
    mask_rate: float = 0.5
    gamma: float = 2.0
    dropout: float = 0.2
    attention_dropout: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"GraphMAE.mask_rate must be in (0, 1), got {self.mask_rate}")
        if self.gamma < 1.0:
            raise ValueError(f"GraphMAE.gamma must be >= 1, got {self.gamma}")
        if self.hidden % self.heads:
            raise ValueError(
                f"GraphMAE: hidden ({self.hidden}) must be divisible by heads ({self.heads})"
            )
        if self.num_layers < 1 or self.num_features < 1:
            raise ValueError("GraphMAE: num_layers and num_features must be >= 1")
        super().__post_init__()

    def setup(self):
        self.mask_token = self.param("mask_token", nn.initializers.zeros, (self.num_features,))
        self.encoder = [
            GATLayer(
                self.hidden,
                heads=self.heads,
                attention_dropout=self.attention_dropout,
                name=f"encoder_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.feature_dropout = nn.Dropout(self.dropout)
        self.encoder_to_decoder = Linear(self.hidden, use_bias=False)
        self.decoder = GATLayer(self.num_features, heads=1, concat=False)

    def encode(self, x, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True):
        h = x
        for layer in self.encoder:
            h = self.feature_dropout(h, deterministic=deterministic)
            h = nn.elu(
                layer(
                    h,
                    senders,
                    receivers,
                    edge_mask=edge_mask,
                    node_mask=node_mask,
                    deterministic=deterministic,
                )
            )
        return mask_nodes(h, node_mask)

    def __call__(
        self, x, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True
    ):
        if not isinstance(x, jax.Array | np.ndarray):
            raise ValueError(f"GraphMAE: x must be a dense array, got {type(x).__name__}")
        n = x.shape[0]
        masked = sample_node_mask(self.make_rng("mask"), n, self.mask_rate, node_mask)
        x_in = jnp.where(masked[:, None], self.mask_token, x)  # [N, F]
        kw = dict(edge_mask=edge_mask, node_mask=node_mask)
        h = self.encode(x_in, senders, receivers, deterministic=deterministic, **kw)
        code = self.encoder_to_decoder(h)
        code = jnp.where(masked[:, None], 0.0, code)  # re-mask
        recon = self.decoder(code, senders, receivers, deterministic=deterministic, **kw)
        return sce_loss(recon, x, masked, self.gamma), masked
