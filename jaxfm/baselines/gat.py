"""GAT layer (Velickovic et al., 2018, eqs. 1-6).

``e_uv = LeakyReLU_0.2(a_dst . W h_v + a_src . W h_u)``, ``alpha_uv = softmax_u(e_uv)`` over the
valid incoming edges of v **plus v itself** (the paper's self-attention includes the node), and
``h'_v = ||_k sum_u alpha^k_uv W^k h_u`` (heads concatenated) or the mean over heads
(``concat=False``, the paper's output layer). Self-loop edges in the input are ignored: the self
term is added here exactly once. The softmax is a segment softmax over receivers
(``jax.ops.segment_max`` / ``segment_sum``), stabilised by the per-node maximum.

The coefficients are sown as ``intermediates/attention`` ``[E + N, H]`` (edges first, then the N
self loops) for inspection.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.baselines.gcn import Linear, edge_validity, mask_nodes

__all__ = ["GATLayer", "segment_softmax"]


def segment_softmax(logits, segment_ids, valid, num_segments: int):
    """Softmax of ``logits`` over the entries sharing a segment id; invalid entries get 0.

    Shapes:
      logits ``[E, H]``; segment_ids ``[E]`` int; valid ``[E]`` bool -> ``[E, H]``.
    """
    safe = jnp.where(valid[:, None], logits, -jnp.inf)
    seg_max = jax.ops.segment_max(safe, segment_ids, num_segments=num_segments)  # [S, H]
    seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
    shifted = jnp.where(valid[:, None], logits - seg_max[segment_ids], 0.0)
    p = jnp.where(valid[:, None], jnp.exp(shifted), 0.0)
    denom = jax.ops.segment_sum(p, segment_ids, num_segments=num_segments)  # [S, H]
    return p / jnp.where(denom > 0, denom, 1.0)[segment_ids]


class GATLayer(nn.Module):
    """GAT (v1) layer under the shared message-passing contract.

    Attributes:
      features: output width; with ``concat`` it is split into ``heads`` heads of
        ``features // heads`` (must divide), else every head has width ``features`` and the
        heads are averaged.
      heads: number of attention heads H.
      concat: concatenate heads (hidden layers) or average them (output layer).
      negative_slope: LeakyReLU slope of the attention logits.
      attention_dropout: dropout on the coefficients (rng stream ``"dropout"``).
      use_bias: add a bias to the output.

    Parameters: ``linear/kernel [F, H * Dh]``, ``att_src [H, Dh]``, ``att_dst [H, Dh]``,
    ``bias [features]``.

    Shapes:
      h ``[N, F]`` (array or BCOO); senders/receivers ``[E]`` int; edge_mask ``[E]`` bool;
      node_mask ``[N]`` bool -> ``[N, features]`` (padded nodes zeroed).

    Raises:
      ValueError: if ``concat`` and ``features`` is not divisible by ``heads``.
    """

    features: int
    heads: int = 1
    concat: bool = True
    negative_slope: float = 0.2
    attention_dropout: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(
        self, h, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True
    ):
        if self.concat and self.features % self.heads:
            raise ValueError(
                f"GATLayer: features ({self.features}) must be divisible by heads ({self.heads})"
            )
        n = h.shape[0]
        dh = self.features // self.heads if self.concat else self.features
        z = Linear(self.heads * dh, use_bias=False, name="linear")(h)
        z = z.reshape(n, self.heads, dh)  # [N, H, Dh]
        a_src = self.param("att_src", nn.initializers.glorot_uniform(), (self.heads, dh))
        a_dst = self.param("att_dst", nn.initializers.glorot_uniform(), (self.heads, dh))
        e_src = jnp.einsum("nhd,hd->nh", z, a_src)  # [N, H]
        e_dst = jnp.einsum("nhd,hd->nh", z, a_dst)  # [N, H]

        loops = jnp.arange(n, dtype=senders.dtype)
        s = jnp.concatenate([senders, loops])  # [E + N]
        r = jnp.concatenate([receivers, loops])
        loop_valid = jnp.ones((n,), bool) if node_mask is None else jnp.asarray(node_mask, bool)
        edge_valid = edge_validity(senders, receivers, edge_mask, node_mask) & (
            senders != receivers
        )
        valid = jnp.concatenate([edge_valid, loop_valid])
        logits = nn.leaky_relu(e_src[s] + e_dst[r], self.negative_slope)  # [E + N, H]
        alpha = segment_softmax(logits, r, valid, n)
        self.sow("intermediates", "attention", alpha)
        alpha = nn.Dropout(self.attention_dropout)(alpha, deterministic=deterministic)
        msg = jnp.where(valid[:, None, None], alpha[..., None] * z[s], 0.0)  # [E + N, H, Dh]
        out = jax.ops.segment_sum(msg, r, num_segments=n)  # [N, H, Dh]
        out = out.reshape(n, self.heads * dh) if self.concat else out.mean(axis=1)
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (self.features,))
        return mask_nodes(out, node_mask)
