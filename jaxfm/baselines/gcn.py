"""GCN (Kipf & Welling, 2017): the layer, its reference propagation, and the shared small pieces.

One GCN layer is ``H' = D^-1/2 (A + I) D^-1/2 H W + b`` with D the degree of ``A + I``.
:class:`GCNLayer` is that layer under the shared message-passing contract of ``jaxfm.baselines``
(``senders``/``receivers`` plus optional edge / node masks, degree normalisation computed
in-layer), which :class:`jaxfm.baselines.gnn.GNN` stacks. :func:`gcn_norm` (symmetrised,
deduplicated edges with self loops and their weights) and :func:`gcn_propagate` are the textbook
precomputed form, kept as the reference the layer is tested against and to symmetrise a
dataset's edges once. :class:`Linear` (dense or ``jax.experimental.sparse.BCOO`` inputs, so
bag-of-words features stay sparse in the first layer), :func:`edge_validity` and
:func:`mask_nodes` are the small pieces every contract layer shares.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GCNLayer",
    "Linear",
    "edge_validity",
    "gcn_norm",
    "gcn_propagate",
    "mask_nodes",
]


def gcn_norm(senders, receivers, num_nodes: int):
    """Symmetrised edges with self loops and their ``1/sqrt(d_u d_v)`` weights (host numpy).

    Shapes:
      senders, receivers: ``[E]`` -> returns ``(senders [E'], receivers [E'], weight [E'])``.
    """
    s = np.concatenate([senders, receivers]).astype(np.int64)
    r = np.concatenate([receivers, senders]).astype(np.int64)
    keep = s != r
    key = np.unique(s[keep] * num_nodes + r[keep])
    loops = np.arange(num_nodes, dtype=np.int64)
    s = np.concatenate([key // num_nodes, loops])
    r = np.concatenate([key % num_nodes, loops])
    deg = np.bincount(r, minlength=num_nodes).astype(np.float64)
    w = 1.0 / np.sqrt(deg[s] * deg[r])
    return s.astype(np.int32), r.astype(np.int32), w.astype(np.float32)


def gcn_propagate(h, senders, receivers, weight, num_nodes: int):
    """``sum_u w_uv h_u`` for every receiver v (one normalised propagation)."""
    return jax.ops.segment_sum(h[senders] * weight[:, None], receivers, num_segments=num_nodes)


def edge_validity(senders, receivers, edge_mask=None, node_mask=None):
    """Which edges carry messages: ``edge_mask`` and both endpoints valid under ``node_mask``.

    Shapes:
      senders, receivers ``[E]`` int; edge_mask ``[E]`` bool or None; node_mask ``[N]`` bool or
      None -> ``[E]`` bool.
    """
    valid = jnp.ones(senders.shape, bool) if edge_mask is None else jnp.asarray(edge_mask, bool)
    if node_mask is not None:
        node_mask = jnp.asarray(node_mask, bool)
        valid = valid & node_mask[senders] & node_mask[receivers]
    return valid


def mask_nodes(h, node_mask=None):
    """Zeros the rows of padded nodes (``node_mask`` False); identity when ``node_mask`` is None.

    Shapes:
      h ``[N, F]``; node_mask ``[N]`` bool -> ``[N, F]``.
    """
    if node_mask is None:
        return h
    return jnp.where(jnp.asarray(node_mask, bool)[:, None], h, jnp.zeros((), h.dtype))


class Linear(nn.Module):
    """``x @ kernel + bias`` for dense or ``BCOO`` inputs (same parameter tree either way).

    Attributes:
      features: output width.
      use_bias: add ``bias``.
      kernel_init: initializer of ``kernel`` (Glorot uniform, as in the GCN/GAT papers).

    Parameters: ``kernel [F_in, features]``, ``bias [features]``.

    Shapes:
      x ``[N, F_in]`` (array or BCOO) -> ``[N, features]``.
    """

    features: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.glorot_uniform()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = x @ kernel
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class GCNLayer(nn.Module):
    """One GCN layer (Kipf & Welling 2017, eq. 2) under the shared layer contract.

    ``h'_v = sum_{u in N(v) + v} (h_u W) / sqrt(d_u d_v) + b`` with ``d_v = 1 + #valid incoming
    edges of v`` (the degree of ``A + I``; for the symmetric graphs GCN assumes, ``d_u`` as an
    in-degree equals the degree). The self loop is added here, once: self-loop edges in the
    input are ignored. With edges symmetrised this matches :func:`gcn_norm` +
    :func:`gcn_propagate` exactly.

    Attributes:
      features: output width.
      use_bias: add a bias after propagation.

    Parameters: ``linear/kernel [F, features]``, ``bias [features]``.

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
        del deterministic  # no stochastic part
        n = h.shape[0]
        valid = edge_validity(senders, receivers, edge_mask, node_mask) & (senders != receivers)
        deg = 1.0 + jax.ops.segment_sum(valid.astype(jnp.float32), receivers, num_segments=n)
        z = Linear(self.features, use_bias=False, name="linear")(h)  # [N, features]
        norm = jax.lax.rsqrt(deg[senders] * deg[receivers])  # [E]
        msg = jnp.where(valid[:, None], z[senders] * norm[:, None], 0.0)
        out = jax.ops.segment_sum(msg, receivers, num_segments=n) + z / deg[:, None]
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (self.features,))
        return mask_nodes(out, node_mask)
