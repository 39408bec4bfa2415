"""Cross-node attention (FIMP eqs. 6-7): receiver tokens attend sender tokens, per edge.

PROVISIONAL simple version (per-edge gather, no chunking) so dependent modules can be written;
the optimized chunked implementation replaces the body of `cross_node_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cross_node_attention", "cross_node_attention_reference"]


def cross_node_attention_reference(
    q, k, v, senders, receivers, *, kv_mask=None, edge_mask=None, num_nodes=None,
    aggregation="mean",
):
    """Per-edge loop reference in float32 (numpy-style python loop; for tests only)."""
    import numpy as np

    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    n, lq, h, dh = q.shape
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    e = senders.shape[0]
    kv_mask = np.ones(k.shape[:2], bool) if kv_mask is None else np.asarray(kv_mask)
    edge_mask = np.ones((e,), bool) if edge_mask is None else np.asarray(edge_mask)
    out = np.zeros((n, lq, h, v.shape[-1]))
    count = np.zeros((n,))
    for i in range(e):
        if not edge_mask[i]:
            continue
        s, r = senders[i], receivers[i]
        count[r] += 1
        valid = kv_mask[s]
        if not valid.any():
            continue
        scores = np.einsum("qhd,khd->hqk", q[r], k[s]) / np.sqrt(dh)
        scores = np.where(valid[None, None, :], scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        out[r] += np.einsum("hqk,khd->qhd", p, v[s])
    if aggregation == "mean":
        out = out / np.maximum(count, 1)[:, None, None, None]
    return out.astype(np.float32)


def cross_node_attention(
    q, k, v, senders, receivers, *, kv_mask=None, edge_mask=None, num_nodes=None,
    aggregation="mean", edge_chunk_size=None,
):
    """See module docstring. Shapes: q [N, Lq, H, Dh], k/v [N, Lk, H, Dh]; returns [N, Lq, H, Dh]."""
    n, lq, h, dh = q.shape
    e = senders.shape[0]
    kv_mask = jnp.ones(k.shape[:2], bool) if kv_mask is None else kv_mask
    edge_mask = jnp.ones((e,), bool) if edge_mask is None else edge_mask
    qe, ke, ve = q[receivers], k[senders], v[senders]
    scores = jnp.einsum("eqhd,ekhd->ehqk", qe.astype(jnp.float32), ke.astype(jnp.float32))
    scores = scores / jnp.sqrt(jnp.float32(dh))
    valid = kv_mask[senders][:, None, None, :]
    scores = jnp.where(valid, scores, -jnp.inf)
    m = jnp.max(scores, -1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(valid, jnp.exp(scores - jax.lax.stop_gradient(m)), 0.0)
    den = p.sum(-1, keepdims=True)
    p = p / jnp.where(den > 0, den, 1.0)
    msg = jnp.einsum("ehqk,ekhd->eqhd", p, ve.astype(jnp.float32))
    msg = jnp.where(edge_mask[:, None, None, None], msg, 0.0)
    out = jax.ops.segment_sum(msg, receivers, num_segments=n)
    if aggregation == "mean":
        cnt = jax.ops.segment_sum(edge_mask.astype(jnp.float32), receivers, num_segments=n)
        out = out / jnp.maximum(cnt, 1.0)[:, None, None, None]
    return out.astype(q.dtype)
