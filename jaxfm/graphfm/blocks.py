"""Pre-norm transformer blocks of GraphFM (Perceiver/POYO style: GEGLU feed-forward).

``x + Attn(LN(x), LN(ctx))`` then ``x + FFN(LN(x))``; the FFN is GEGLU
(``W2 (a * gelu(g))`` with ``[a, g] = W1 x``, hidden ``mlp_ratio * D``), the feed-forward of the
Perceiver code base GraphFM is built on.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.nn.attention import MultiHeadAttention

__all__ = ["GEGLU", "Block"]


class GEGLU(nn.Module):
    """``Dense(D) (a * gelu(g))`` with ``[a, g] = Dense(2 * hidden)(x)``."""

    hidden: int
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        h = nn.Dense(2 * self.hidden, dtype=self.dtype, name="fc1")(x)
        a, g = jnp.split(h, 2, axis=-1)
        h = nn.Dropout(self.dropout)(a * nn.gelu(g, approximate=False), deterministic=deterministic)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class Block(nn.Module):
    """One pre-norm block: (cross- or self-) attention then GEGLU, both residual.

    Parameters: ``norm_q`` (+ ``norm_kv`` for cross attention), ``attention``, ``norm_mlp``,
    ``mlp``.

    Shapes:
      x ``[B, Tq, D]``; context ``[B, Tk, D]`` (None: self attention); segment ids / kv_mask as
      :class:`~jaxfm.nn.attention.MultiHeadAttention`.
    """

    num_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    eps: float = 1e-5
    cross: bool = False
    dtype: Any = None
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        kv_mask=None,
        q_segment_ids=None,
        kv_segment_ids=None,
        deterministic: bool = True,
    ):
        h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm_q")(x)
        if self.cross:
            ctx = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm_kv")(context)
        else:
            ctx = h
        h = MultiHeadAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            implementation=self.implementation,
            name="attention",
        )(h, ctx, kv_mask=kv_mask, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm_mlp")(x)
        h = GEGLU(self.mlp_ratio * x.shape[-1], self.dropout, self.dtype, name="mlp")(
            h, deterministic=deterministic
        )
        return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
