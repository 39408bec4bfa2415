"""TPU splash attention for segment-id attention (``implementation="splash"``).

:func:`jaxfm.ops.attention` routes here on TPU. The kernel is
``jax.experimental.pallas.ops.tpu.splash_attention``: it takes separate q and kv segment ids, so it
expresses the Perceiver's latents-to-nodes cross attention (GraphFM), the latent blocks and FIMP's
per-edge attention without a dense ``[Tq, Tk]`` mask. Off TPU it runs in Pallas interpret mode
(slow, exact), which is how the tests check it on CPU.

The kernel's constraints, and how this wrapper meets them:

* Sequence blocks are multiples of 128: q and kv are padded to a multiple of 128 rows. Padded keys
  get a segment id no query carries.
* A query row with no visible key is invalid for the kernel. Every masking argument is first folded
  into *effective* segment ids, per batch element: a valid key gets the dense rank of its id among
  the element's sorted key ids, a masked key gets -1, and a query gets its id's rank if that id has
  a valid key. A query with no valid key (padding rows, empty segments, all keys masked) is
  pointed at the id of key 0, so the kernel sees a well-formed row; its output is then forced to
  zero, which also makes its gradient contribution exactly zero.
* Short sequences waste most of a 128-row block: when both lengths are under 128, ``P`` batch
  elements are packed into one sequence (``P = 128 // max(Tq, Tk)``), their ranked ids offset by
  ``p * Tk`` so that no two elements share an id. FIMP's edges (``Lq = Lk = 32``) and the latent
  blocks (K = 32) pack 4 per sequence.

Query scaling (``1 / sqrt(Dh)``) is applied before the kernel, which does not scale.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["splash_attention", "splash_supported"]

_LANES = 128  # splash blocks are multiples of the TPU lane width
_DTYPES = (jnp.float32, jnp.bfloat16)


def splash_supported(q, k, v, *, bias=None) -> bool:
    """Whether the splash kernel can compute these arguments (any backend; interpret off TPU).

    Needs float32 or bfloat16 q/k/v of one dtype, equal q/v head dims, and no additive bias.
    """
    if bias is not None:
        return False
    if q.dtype not in _DTYPES or not (q.dtype == k.dtype == v.dtype):
        return False
    return q.shape[-1] == v.shape[-1]


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _block(length: int) -> int:
    """The largest of 512, 256, 128 that divides ``length`` (a multiple of 128)."""
    n = length // _LANES
    return _LANES * next(d for d in (4, 2, 1) if n % d == 0)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, tq: int, tk: int, interpret: bool):
    """A splash MHA kernel for ``[H, tq, Dh] x [H, tk, Dh]`` with a full (segment-only) mask."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    bq, bkv = _block(tq), _block(tk)
    sizes = sa.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    mask = sa.MultiHeadMask([sa.FullMask((tq, tk)) for _ in range(heads)])
    # the kernel holds its block tables as arrays: make them concrete, not tracers of the jit
    # that happens to build (and cache) it first
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def _effective_ids(q_ids, kv_ids, q_valid, kv_valid):
    """Per-element ranked segment ids (see the module docstring).

    Shapes:
      q_ids, q_valid ``[B, Tq]``; kv_ids, kv_valid ``[B, Tk]`` -> q_rank ``[B, Tq]`` int32,
      found ``[B, Tq]`` bool (the query has a valid key), kv_rank ``[B, Tk]`` int32 (-1 masked).
    """
    never = jnp.iinfo(jnp.int32).min  # sorts before every real id
    kv_ok = kv_valid & (kv_ids != 0)
    kv_key = jnp.where(kv_ok, kv_ids, never)
    sorted_kv = jnp.sort(kv_key, axis=1)
    search = jax.vmap(lambda s, x: jnp.searchsorted(s, x, side="left"))
    kv_rank = jnp.where(kv_ok, search(sorted_kv, kv_key), -1).astype(jnp.int32)
    pos = search(sorted_kv, q_ids)  # [B, Tq]
    hit = jnp.take_along_axis(sorted_kv, jnp.minimum(pos, sorted_kv.shape[1] - 1), axis=1)
    found = q_valid & (q_ids != 0) & (q_ids != never) & (hit == q_ids)
    return pos.astype(jnp.int32), found, kv_rank


def _pack(x, p: int, bp: int):
    """``[B, T, ...]`` -> ``[Bp / P, P * T, ...]`` after padding B to ``bp`` with zeros."""
    pad = [(0, bp - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    x = jnp.pad(x, pad)
    return x.reshape(bp // p, p * x.shape[1], *x.shape[2:])


def _pad_seq(x, length: int, value=0):
    pad = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad, constant_values=value)


def splash_attention(
    q,
    k,
    v,
    *,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_valid=None,
    kv_valid=None,
    interpret: bool | None = None,
):
    """Segment-id attention through the splash kernel (zeros for a query with no valid key).

    Query i of element b attends key j iff ``q_segment_ids[b, i] == kv_segment_ids[b, j] != 0``
    (all ids equal when both are None), ``q_valid[b, i]`` and ``kv_valid[b, j]``.

    Args:
      q: queries. k: keys. v: values.
      q_segment_ids: int ids of the queries (0 = padding), or None (one segment).
      kv_segment_ids: int ids of the keys, or None (one segment). Pass with q_segment_ids.
      q_valid: False for query rows that attend nothing (e.g. past ``q_seq_lengths``), or None.
      kv_valid: False for masked keys (``kv_mask``, ``kv_seq_lengths``), or None.
      interpret: run the Pallas kernel in interpret mode (default: off TPU). Static.

    Returns:
      ``[B, Tq, H, Dh]`` in q's dtype.

    Shapes:
      q ``[B, Tq, H, Dh]``; k, v ``[B, Tk, H, Dh]``; ids and validity ``[B, Tq]`` / ``[B, Tk]``.
    """
    b, tq, h, dh = q.shape
    tk = k.shape[1]
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((b, tq), jnp.int32)
        kv_segment_ids = jnp.ones((b, tk), jnp.int32)
    q_valid = jnp.ones((b, tq), bool) if q_valid is None else q_valid
    kv_valid = jnp.ones((b, tk), bool) if kv_valid is None else kv_valid
    q_rank, found, kv_rank = _effective_ids(
        q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32), q_valid, kv_valid
    )

    # pack P short elements per sequence; element p's ids move to [p * Tk, (p + 1) * Tk)
    p = max(1, min(b, _LANES // max(tq, tk)))
    bp = _round_up(b, p)
    slot = (jnp.arange(bp, dtype=jnp.int32) % p * tk)[:, None]  # [Bp, 1]
    q_ids = _pack(jnp.pad(q_rank, ((0, bp - b), (0, 0))) + slot, p, bp)  # [B', P*Tq]
    found_p = _pack(found, p, bp)
    kv_ids = jnp.pad(kv_rank, ((0, bp - b), (0, 0)), constant_values=-1)
    kv_ids = _pack(jnp.where(kv_ids >= 0, kv_ids + slot, -1), p, bp)  # [B', P*Tk]
    tq_p, tk_p = _round_up(p * tq, _LANES), _round_up(p * tk, _LANES)
    kv_ids = _pad_seq(kv_ids, tk_p, -1)
    found_p = _pad_seq(found_p, tq_p, False)
    # a query with no valid key points at key 0's id: a well-formed row, zeroed below
    q_ids = jnp.where(found_p, _pad_seq(q_ids, tq_p), kv_ids[:, :1])

    scale = jnp.asarray(1.0 / math.sqrt(dh), q.dtype)
    heads_major = lambda x, t: jnp.swapaxes(_pad_seq(_pack(x, p, bp), t), 1, 2)  # [B', H, T', Dh]
    qh, kh, vh = heads_major(q * scale, tq_p), heads_major(k, tk_p), heads_major(v, tk_p)

    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    kernel = _kernel(h, tq_p, tk_p, bool(interpret))
    run = lambda q_, k_, v_, a, c: kernel(q_, k_, v_, segment_ids=SegmentIds(q=a, kv=c))
    out = jax.vmap(run)(qh, kh, vh, q_ids, kv_ids)  # [B', H, T'q, Dh]
    out = jnp.swapaxes(out, 1, 2)[:, : p * tq].reshape(bp, tq, h, v.shape[-1])[:b]
    return jnp.where(found[:, :, None, None], out, jnp.zeros((), out.dtype)).astype(q.dtype)
