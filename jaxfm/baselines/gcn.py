"""GCN (Kipf & Welling, 2017) and a feature-only MLP for full-graph node classification.

One GCN layer is ``H' = D^-1/2 (A + I) D^-1/2 H W + b`` with D the degree of ``A + I``; edges are
made symmetric and self loops added once by :func:`gcn_norm`. Inputs may be dense or a
``jax.experimental.sparse.BCOO`` matrix (bag-of-words features stay sparse in the first layer).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import sparse as jsparse

__all__ = ["GCN", "FeatureMLP", "gcn_norm", "gcn_propagate"]


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


def _dense(x, features: int, name: str, module: nn.Module):
    if isinstance(x, jsparse.BCOO):
        kernel = module.param(
            f"{name}_kernel", nn.initializers.glorot_uniform(), (x.shape[1], features)
        )
        bias = module.param(f"{name}_bias", nn.initializers.zeros, (features,))
        return x @ kernel + bias
    return nn.Dense(features, name=name)(x)


class GCN(nn.Module):
    """``depth`` GCN layers (ReLU + dropout between them); the last maps to ``num_classes``."""

    hidden: int = 64
    num_classes: int = 2
    depth: int = 2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, senders, receivers, weight, *, deterministic: bool = True):
        n = x.shape[0]
        h = x
        for i in range(self.depth):
            last = i == self.depth - 1
            if i > 0 or not isinstance(h, jsparse.BCOO):
                h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
            h = _dense(h, self.num_classes if last else self.hidden, f"layer_{i}", self)
            h = gcn_propagate(h, senders, receivers, weight, n)
            if not last:
                h = nn.relu(h)
        return h


class FeatureMLP(nn.Module):
    """The no-graph baseline: the same widths as :class:`GCN`, edges ignored."""

    hidden: int = 64
    num_classes: int = 2
    depth: int = 2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, senders=None, receivers=None, weight=None, *, deterministic=True):
        del senders, receivers, weight
        h = x
        for i in range(self.depth):
            last = i == self.depth - 1
            if i > 0 or not isinstance(h, jsparse.BCOO):
                h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
            h = _dense(h, self.num_classes if last else self.hidden, f"layer_{i}", self)
            if not last:
                h = nn.relu(h)
        return h
