"""Cross-node attention (FIMP eqs. 6-7): a receiver's tokens attend each neighbour's tokens.

For every valid edge ``u -> v`` the message is ``m_{u->v} = softmax(Q_v K_u^T / sqrt(Dh)) V_u``
(multi-head, one softmax per edge), and the messages are aggregated at the receiver
(``M_v = mean or sum over u of m_{u->v}``, token-wise). Q, K and V are projected once per node by
the caller; this module only pairs them along edges.

Two implementations, selected by the static ``implementation`` keyword:

``"grouped"`` (default on CPU and TPU)
    Edges are stably sorted by receiver and each receiver's incoming edges are packed into rows
    of ``row_width`` (W) neighbour slots (static row bound ``R = (E + (W-1) min(N, E)) / W``,
    tables built with jnp ops under jit). Per row and head one matmul scores the receiver's
    queries against all W neighbours' keys, the softmax is taken per neighbour block of Lk keys,
    and a second matmul ``P [Lq, W*Lk] x V [W*Lk, Dh]`` sums the W messages directly (fused
    aggregation). Tiny per-edge matmuls become W times larger ones. Rows are processed in chunks
    by ``lax.scan`` (chunks past the rows in use are skipped with ``lax.cond``); a custom VJP
    keeps only the per-block log-sum-exp and recomputes scores chunk by chunk, flash-attention
    style, so neither pass holds more than one chunk of ``[chunk, H, Lq, Lk]`` scores.

``"per_edge"`` (default on GPU)
    Edges in chunks with batch = edges through :func:`jaxfm.ops.attention` (so on GPU the cuDNN
    flash path is used when dtypes allow), differentiated by autodiff through a rematerialized
    (``jax.checkpoint``) scan.

Both compute in float32 and return q's dtype. Per-receiver sums are formed in a fixed order (rows
or edges in their order after a stable sort by receiver / in the input), so chunking does not
change the summation order. ``"grouped"`` is bitwise independent of ``edge_chunk_size``;
``"per_edge"`` agrees across chunk sizes to float32 rounding only (its softmax denominators come
from XLA reductions whose association order follows the whole array's shape).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxfm.ops.attention import attention, cudnn_supported

__all__ = [
    "cross_node_attention",
    "cross_node_attention_reference",
    "default_cpu_shards",
]

_AGGREGATIONS = ("mean", "sum")
_IMPLEMENTATIONS = (None, "grouped", "per_edge")
DEFAULT_ROW_WIDTH = 4  # neighbour slots per row of the grouped implementation (benchmarked)
DEFAULT_EDGE_CHUNK_SIZE = 128  # edges (grouped: row slots) per scan step (benchmarked)
_PROMISE = lax.GatherScatterMode.PROMISE_IN_BOUNDS
_SHARD_AXIS = "cross_node_cpu"


# ----------------------------------------------------------------------------- validation


def _fail(msg: str) -> None:
    raise ValueError(msg)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_index_array(name: str, arr, e: int, n: int) -> None:
    if arr.ndim != 1 or arr.shape[0] != e:
        _fail(f"cross_node_attention: {name} must have shape [E]=({e},), got {tuple(arr.shape)}")
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        _fail(f"cross_node_attention: {name} must be an integer array, got dtype {arr.dtype}")
    if _is_concrete(arr) and e > 0:
        a = np.asarray(arr)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= n:
            _fail(
                f"cross_node_attention: {name} must lie in [0, N={n}), got values in [{lo}, {hi}] "
                "(XLA gathers would clamp them silently)"
            )


def _validate(q, k, v, senders, receivers, kv_mask, edge_mask, num_nodes, extra=()):
    if q.ndim != 4:
        _fail(f"cross_node_attention: q must be [N, Lq, H, Dh], got shape {tuple(q.shape)}")
    n, _, h, dh = q.shape
    if k.ndim != 4 or k.shape[0] != n or k.shape[2] != h or k.shape[3] != dh:
        _fail(
            f"cross_node_attention: k must be [N={n}, Lk, H={h}, Dh={dh}] to match q "
            f"{tuple(q.shape)}, got {tuple(k.shape)}"
        )
    lk = k.shape[1]
    if v is not None and tuple(v.shape) != tuple(k.shape):
        _fail(
            f"cross_node_attention: v must be [N={n}, Lk={lk}, H={h}, Dh={dh}] like k, got "
            f"{tuple(v.shape)}"
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x is not None and not jnp.issubdtype(x.dtype, jnp.floating):
            _fail(f"cross_node_attention: {name} must be a floating array, got dtype {x.dtype}")
    if senders.ndim != 1:
        _fail(f"cross_node_attention: senders must have shape [E], got {tuple(senders.shape)}")
    e = senders.shape[0]
    _check_index_array("senders", senders, e, n)
    _check_index_array("receivers", receivers, e, n)
    if kv_mask is not None:
        if tuple(kv_mask.shape) != (n, lk):
            _fail(
                f"cross_node_attention: kv_mask must have shape [N, Lk]=({n}, {lk}), got "
                f"{tuple(kv_mask.shape)}"
            )
        if kv_mask.dtype != jnp.bool_:
            _fail(f"cross_node_attention: kv_mask must be bool, got dtype {kv_mask.dtype}")
    if edge_mask is not None:
        if tuple(edge_mask.shape) != (e,):
            _fail(
                f"cross_node_attention: edge_mask must have shape [E]=({e},), got "
                f"{tuple(edge_mask.shape)}"
            )
        if edge_mask.dtype != jnp.bool_:
            _fail(f"cross_node_attention: edge_mask must be bool, got dtype {edge_mask.dtype}")
    if num_nodes is not None and (not isinstance(num_nodes, int | np.integer) or num_nodes != n):
        _fail(f"cross_node_attention: num_nodes must equal N={n} (q.shape[0]), got {num_nodes!r}")
    for name, val in extra:
        if val is not None and (not isinstance(val, int | np.integer) or val < 1):
            _fail(f"cross_node_attention: {name} must be a positive int, got {val!r}")


# ----------------------------------------------------------------------------- grouped rows


def _row_tables(senders, receivers, edge_valid, n: int, w: int, r: int):
    """Packs edges into rows of ``w`` neighbour slots, one receiver per row (pure jnp, static R).

    Edges are stably sorted by receiver (invalid edges last); receiver v with in-degree d gets
    ``ceil(d / w)`` consecutive rows. ``r`` is a static upper bound on the rows in use.

    Returns:
      send ``[R, W]`` int32 sender per slot (0 in empty slots), slot_ok ``[R, W]`` bool,
      recv ``[R]`` int32 receiver per row (``n`` for unused rows), rows_used ``[]`` int32,
      deg ``[N]`` int32 valid in-degree.
    """
    e = senders.shape[0]
    # graphs closed over as constants would otherwise be sorted by XLA's constant folder at
    # compile time (seconds for large E)
    senders, receivers, edge_valid = lax.optimization_barrier((senders, receivers, edge_valid))
    key = jnp.where(edge_valid, receivers.astype(jnp.int32), n)
    order = jnp.argsort(key, stable=True)
    skey = key[order]
    ssend = senders.astype(jnp.int32)[order]
    deg = jnp.zeros((n + 1,), jnp.int32).at[key].add(1)
    first = jnp.cumsum(deg) - deg  # first sorted position of each receiver
    pos = jnp.arange(e, dtype=jnp.int32) - first[skey]  # rank among the receiver's edges
    nrows = (deg[:n] + w - 1) // w
    row0 = jnp.cumsum(nrows) - nrows
    valid = skey < n
    row = jnp.where(valid, row0[jnp.minimum(skey, n - 1)] + pos // w, r)  # r -> dropped
    slot = pos % w
    send = jnp.zeros((r, w), jnp.int32).at[row, slot].set(ssend, mode="drop")
    slot_ok = jnp.zeros((r, w), bool).at[row, slot].set(True, mode="drop")
    recv = jnp.full((r,), n, jnp.int32).at[row].set(skey, mode="drop")
    return send, slot_ok, recv, jnp.sum(nrows), deg[:n]


def _take(x, idx):
    """Leading-axis gather with indices known to be in range: ``x[idx]``."""
    return x.at[idx].get(mode=_PROMISE)


def _chunk_indices(send_c, recv_c, n, h):
    """Node-head rows (``node * H + head``) of a chunk.

    Returns the receiver rows ``[C*H]`` (``>= N*H`` for unused rows, dropped by scatters), the
    same clamped for gathers, and the sender rows ``[C*H*W]`` (row-major over ``[C, H, W]``).
    """
    heads = jnp.arange(h, dtype=jnp.int32)
    rows = (recv_c[:, None] * h + heads).reshape(-1)
    slots = (send_c[:, None, :] * h + heads[:, None]).reshape(-1)
    return rows, jnp.minimum(rows, n * h - 1), slots


def _key_mask(send_c, kv_mask):
    """Valid keys of a chunk's slots, ``[C, W, Lk]`` bool, or None without a key mask."""
    return None if kv_mask is None else kv_mask[send_c]


def _grouped_fwd_scan(q, k, v, tables, h, w, c, nch, with_lse):
    """Forward over row chunks; node-head-major f32 ``q [N*H, Lq, Dh]`` (scaled), ``k``, ``v``.

    Per row and head: ``S^T = K_row Q_v^T`` (``[W*Lk, Lq]``), softmax per neighbour block of Lk
    keys, then ``O = P V_row`` (``[Lq, W*Lk] x [W*Lk, Dh]``), which sums the W messages. Both
    matmuls contract the left operand's minor axis, the forms XLA's CPU dot library runs directly.
    Returns the row sums scattered to ``[N*H, Lq, Dh]`` and, if asked, the per-block log-sum-exp
    ``[C, H, W, Lq]`` of every chunk (``+inf`` for an empty block; Lk times smaller than scores).
    """
    ids, send, slot_ok, recv, rows_used, kv_mask = tables
    nh, lq, _ = q.shape
    lk, dv = v.shape[1:]
    b = c * h

    # block indicator [B, W, W*Lk]: one matmul sums each neighbour block's exponentials. XLA's
    # CPU reductions pick their association order from the whole array shape (a row would round
    # differently in chunks of different sizes); a batched matmul's order depends on Lk alone.
    blocks_t = jnp.broadcast_to(
        jnp.repeat(jnp.eye(w, dtype=jnp.float32), lk, axis=1), (b, w, w * lk)
    )

    def compute(out, send_c, slot_c, recv_c):
        rows, rows_in, slots = _chunk_indices(send_c, recv_c, nh // h, h)
        k_c = _take(k, slots).reshape(b, w * lk, -1)
        st = jnp.einsum("bsd,bqd->bsq", k_c, _take(q, rows_in)).reshape(c, h, w, lk, lq)
        keys = _key_mask(send_c, kv_mask)
        if keys is not None:
            st = jnp.where(keys[:, None, :, :, None], st, -jnp.inf)
        mx = jnp.max(st, axis=3, keepdims=True)  # one softmax per neighbour block
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
        ext = jnp.exp(st - mx).reshape(b, w * lk, lq)  # [B, W*Lk, Lq]
        den = jnp.einsum("bws,bsq->bwq", blocks_t, ext).reshape(c, h, w, 1, lq)
        ok = (den > 0) & slot_c[:, None, :, None, None]  # empty slot or no valid key -> zeros
        pt = ext.reshape(c, h, w, lk, lq) * jnp.where(ok, 1.0 / den, 0.0)
        # materialize P (the barrier keeps XLA from folding the transpose into a slower dot)
        p = lax.optimization_barrier(jnp.swapaxes(pt.reshape(b, w * lk, lq), 1, 2))
        # one matmul over the row's W*Lk keys sums the W neighbours' messages (fused aggregation)
        o = jnp.einsum("bqs,bsd->bqd", p, _take(v, slots).reshape(b, w * lk, dv))
        out = out.at[rows].add(o, mode="drop")
        lse = jnp.where(ok, mx + jnp.log(den), jnp.inf)[:, :, :, 0]  # [C, H, W, Lq]
        return out, lse

    def skip(out, *_):
        return out, jnp.full((c, h, w, lq), jnp.inf, jnp.float32)

    def body(out, xs):
        i, send_c, slot_c, recv_c = xs
        out, lse = lax.cond(i * c < rows_used, compute, skip, out, send_c, slot_c, recv_c)
        return out, (lse if with_lse else None)

    out0 = jnp.zeros((nh, lq, dv), jnp.float32)
    return lax.scan(body, out0, (ids, send, slot_ok, recv))


def _grouped_bwd_scan(q, k, v, tables, lse, g, h, w, c, nch):
    """Backward over row chunks (flash-attention style: scores recomputed, lse reused).

    Works on transposed scores ``S^T [C, H, W, Lk, Lq]`` so that dV = P^T dO and dK = dS^T Q are
    plain matmuls; dQ = dS K needs dS, one in-cache transpose per chunk.
    """
    ids, send, slot_ok, recv, rows_used, kv_mask = tables
    nh, lq, dh = q.shape
    lk, dv = v.shape[1:]
    b = c * h

    def compute(carry, send_c, slot_c, recv_c, lse_c):
        dq, dk, dv_ = carry
        rows, rows_in, slots = _chunk_indices(send_c, recv_c, nh // h, h)
        q_c, g_c = _take(q, rows_in), _take(g, rows_in)  # [B, Lq, Dh], [B, Lq, Dh]
        k_c = _take(k, slots).reshape(b, w * lk, dh)
        v_c = _take(v, slots).reshape(b, w * lk, dv)
        st = jnp.einsum("bsd,bqd->bsq", k_c, q_c).reshape(c, h, w, lk, lq)
        keys = _key_mask(send_c, kv_mask)
        if keys is not None:
            st = jnp.where(keys[:, None, :, :, None], st, -jnp.inf)
        pt = jnp.exp(st - lse_c[:, :, :, None, :])  # masked keys and empty blocks -> 0
        dpt = jnp.einsum("bsd,bqd->bsq", v_c, g_c).reshape(pt.shape)
        delta = jnp.sum(pt * dpt, axis=3, keepdims=True)  # per neighbour block
        dst = (pt * (dpt - delta)).reshape(b, w * lk, lq)
        pt = pt.reshape(b, w * lk, lq)
        dv_c = jnp.einsum("bsq,bqd->bsd", pt, g_c)
        dk_c = jnp.einsum("bsq,bqd->bsd", dst, q_c)
        # materialize dS (the barrier keeps XLA from folding the transpose into a slower dot)
        ds = lax.optimization_barrier(jnp.swapaxes(dst, 1, 2))
        dq_c = jnp.einsum("bqs,bsd->bqd", ds, k_c)
        dq = dq.at[rows].add(dq_c, mode="drop")
        dk = dk.at[slots].add(dk_c.reshape(b * w, lk, dh), mode=_PROMISE)  # empty slots add 0
        dv_ = dv_.at[slots].add(dv_c.reshape(b * w, lk, dv), mode=_PROMISE)
        return dq, dk, dv_

    def skip(carry, *_):
        return carry

    def body(carry, xs):
        i, send_c, slot_c, recv_c, lse_c = xs
        carry = lax.cond(i * c < rows_used, compute, skip, carry, send_c, slot_c, recv_c, lse_c)
        return carry, None

    carry0 = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v))
    carry, _ = lax.scan(body, carry0, (ids, send, slot_ok, recv, lse))
    return carry


@functools.lru_cache(maxsize=8)
def _cpu_mesh(shards: int) -> Mesh:
    return Mesh(np.array(jax.local_devices(backend="cpu")[:shards]), (_SHARD_AXIS,))


def _table_specs(tables):
    """Chunk tables split over the shards; rows_used and the key mask replicated."""
    split, rep = P(_SHARD_AXIS), P()
    return (split, split, split, split, rep, None if tables[5] is None else rep)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _grouped_core(q, k, v, tables, h, w, c, nch, shards):
    if shards == 1:
        return _grouped_fwd_scan(q, k, v, tables, h, w, c, nch, with_lse=False)[0]
    return _grouped_core_fwd(q, k, v, tables, h, w, c, nch, shards)[0]


def _grouped_core_fwd(q, k, v, tables, h, w, c, nch, shards):
    if shards == 1:
        out, lse = _grouped_fwd_scan(q, k, v, tables, h, w, c, nch, with_lse=True)
        return out, (q, k, v, tables, lse)

    # each CPU device scans its share of the row chunks; the partial sums add up over devices
    def body(q, k, v, t):
        out, lse = _grouped_fwd_scan(q, k, v, t, h, w, c, nch // shards, with_lse=True)
        return lax.psum(out, _SHARD_AXIS), lse

    rep, split = P(), P(_SHARD_AXIS)
    out, lse = jax.shard_map(
        body,
        mesh=_cpu_mesh(shards),
        in_specs=(rep, rep, rep, _table_specs(tables)),
        out_specs=(rep, split),
        check_vma=False,
    )(q, k, v, tables)
    return out, (q, k, v, tables, lse)


def _grouped_core_bwd(h, w, c, nch, shards, res, g):
    q, k, v, tables, lse = res
    if shards == 1:
        dq, dk, dv = _grouped_bwd_scan(q, k, v, tables, lse, g, h, w, c, nch)
    else:

        def body(q, k, v, t, lse, g):
            grads = _grouped_bwd_scan(q, k, v, t, lse, g, h, w, c, nch // shards)
            return tuple(lax.psum(x, _SHARD_AXIS) for x in grads)

        rep, split = P(), P(_SHARD_AXIS)
        dq, dk, dv = jax.shard_map(
            body,
            mesh=_cpu_mesh(shards),
            in_specs=(rep, rep, rep, _table_specs(tables), split, rep),
            out_specs=(rep, rep, rep),
            check_vma=False,
        )(q, k, v, tables, lse, g)
    return dq, dk, dv, jax.tree.map(lambda _: None, tables)


_grouped_core.defvjp(_grouped_core_fwd, _grouped_core_bwd)


def _node_head_major(x):
    """``[N, L, H, D]`` -> ``[N*H, L, D]``: row ``node * H + head`` (D stays contiguous)."""
    n, length, h, d = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(n * h, length, d)


def _grouped(q, k, v, senders, receivers, kv_mask, edge_valid, w, chunk, shards):
    """Returns the per-receiver float32 sum ``[N, Lq, H, Dh]`` and the valid in-degree ``[N]``."""
    n, lq, h, dh = q.shape
    dv = v.shape[-1]
    e = senders.shape[0]
    r = max(1, (e + (w - 1) * min(n, e)) // w)  # >= sum_v ceil(deg_v / w)
    c = max(1, min(chunk // w, r))
    nch = -(-r // c)
    shards = max(1, min(shards, nch))
    nch = -(-nch // shards) * shards  # every shard scans as many chunks
    send, slot_ok, recv, rows_used, deg = _row_tables(senders, receivers, edge_valid, n, w, nch * c)
    # shard s takes chunks s, s + S, s + 2S, ...: the rows in use (a prefix) spread evenly
    order = np.arange(nch).reshape(nch // shards, shards).T.reshape(-1)
    tables = (
        jnp.asarray(order, jnp.int32),
        send.reshape(nch, c, w)[order],
        slot_ok.reshape(nch, c, w)[order],
        recv.reshape(nch, c)[order],
        rows_used,
        kv_mask,
    )
    f32 = jnp.float32
    qn = _node_head_major(q.astype(f32) * (1.0 / math.sqrt(dh)))
    kn, vn = _node_head_major(k.astype(f32)), _node_head_major(v.astype(f32))
    out = _grouped_core(qn, kn, vn, tables, h, w, c, nch, shards)  # [N*H, Lq, Dh]
    return jnp.swapaxes(out.reshape(n, h, lq, dv), 1, 2), deg


# ----------------------------------------------------------------------------- per edge


def _per_edge(q, k, v, senders, receivers, kv_mask, edge_valid, chunk):
    """Edges in chunks through :func:`jaxfm.ops.attention` (batch = edges)."""
    n, lq, h, _ = q.shape
    dv = v.shape[-1]
    e = senders.shape[0]
    c = max(1, min(chunk, e))
    nch = -(-e // c)
    pad = nch * c - e
    s = jnp.pad(senders.astype(jnp.int32), (0, pad)).reshape(nch, c)
    r = jnp.pad(receivers.astype(jnp.int32), (0, pad)).reshape(nch, c)
    ok = jnp.pad(edge_valid, (0, pad)).reshape(nch, c)

    @jax.checkpoint
    def step(out, xs):
        s_c, r_c, ok_c = xs
        km = None if kv_mask is None else kv_mask[s_c]
        qe, ke, ve = q[r_c], k[s_c], v[s_c]
        # cuDNN flash attention on GPU when the dtypes allow (a key mask becomes its bias)
        impl = "cudnn" if cudnn_supported(qe, ke, ve) else None
        m = attention(qe, ke, ve, kv_mask=km, implementation=impl)  # [C, Lq, H, Dh]
        m = jnp.where(ok_c[:, None, None, None], m.astype(jnp.float32), 0.0)
        return out.at[jnp.where(ok_c, r_c, n)].add(m, mode="drop"), None

    out, _ = lax.scan(step, jnp.zeros((n, lq, h, dv), jnp.float32), (s, r, ok))
    deg = jnp.zeros((n,), jnp.int32).at[receivers].add(edge_valid.astype(jnp.int32))
    return out, deg


# ----------------------------------------------------------------------------- public API


@functools.partial(
    jax.jit, static_argnames=("aggregation", "implementation", "chunk", "w", "shards")
)
def _cross_node(
    q, k, v, senders, receivers, kv_mask, edge_mask, *, aggregation, implementation, chunk, w,
    shards,
):  # fmt: skip
    e = senders.shape[0]
    n, lq, h, _ = q.shape
    if e == 0 or n == 0:
        return jnp.zeros((n, lq, h, v.shape[-1]), q.dtype)
    edge_valid = jnp.ones((e,), bool) if edge_mask is None else edge_mask
    if implementation == "grouped":
        out, deg = _grouped(q, k, v, senders, receivers, kv_mask, edge_valid, w, chunk, shards)
    else:
        out, deg = _per_edge(q, k, v, senders, receivers, kv_mask, edge_valid, chunk)
    if aggregation == "mean":
        out = out / jnp.maximum(deg, 1).astype(jnp.float32)[:, None, None, None]
    return out.astype(q.dtype)


def cross_node_attention(
    q,
    k,
    v,
    senders,
    receivers,
    *,
    kv_mask=None,
    edge_mask=None,
    num_nodes: int | None = None,
    aggregation: str = "mean",
    edge_chunk_size: int | None = None,
    implementation: str | None = None,
    row_width: int | None = None,
    cpu_shards: int | None = None,
):
    """Per-edge cross-attention between node token sequences, aggregated at the receivers.

    Implements FIMP's message creation and aggregation (eqs. 6-7): for every valid edge
    ``u -> v`` (``senders[i] = u``, ``receivers[i] = v``), the receiver's queries attend the
    sender's keys, ``m_{u->v} = softmax(Q_v K_u^T / sqrt(Dh)) V_u`` with one softmax per edge and
    head over the sender's valid keys, and ``M_v = AGG_u m_{u->v}`` token-wise.

    Args:
      q: queries of every node (already projected), ``[N, Lq, H, Dh]``.
      k: keys of every node, ``[N, Lk, H, Dh]``.
      v: values of every node, ``[N, Lk, H, Dh]``.
      senders: source node of each edge, ``[E]`` int in ``[0, N)`` (padding edges included).
      receivers: destination node of each edge, ``[E]`` int in ``[0, N)``.
      kv_mask: True for a node's valid key tokens, ``[N, Lk]`` bool. An edge whose sender has no
        valid key contributes a zero message (and still counts in the mean).
      edge_mask: True for real edges, ``[E]`` bool; padding edges are ignored.
      num_nodes: optional, must equal N (static; for symmetry with segment ops).
      aggregation: ``"mean"`` (over the receiver's valid incoming edges) or ``"sum"``. A node with
        no incoming valid edge gets zeros. Static.
      edge_chunk_size: edges (row slots for ``"grouped"``) attended per scan step; bounds memory
        to one chunk of ``[chunk, H, Lq, Lk]`` scores in both passes. ``"grouped"`` results are
        bitwise independent of it (``"per_edge"``: up to float32 rounding). Static; default
        ``DEFAULT_EDGE_CHUNK_SIZE``.
      implementation: ``None`` (``"per_edge"`` on GPU, else ``"grouped"``), ``"grouped"`` or
        ``"per_edge"`` (see the module docstring). Static.
      row_width: neighbour slots per row of ``"grouped"`` (static performance knob; default
        ``DEFAULT_ROW_WIDTH``).
      cpu_shards: CPU devices that ``"grouped"`` splits its row chunks over (a ``shard_map`` over
        a 1-D mesh of local CPU devices; q/k/v replicated, partial sums added with ``psum``).
        ``None``: ``$JAXFM_CPU_SHARDS`` (opt-in; ``all`` = every local CPU device) when the
        default backend is CPU and no mesh is active (no ``jax.set_mesh`` / enclosing
        ``shard_map``); else 1. XLA:CPU runs each device's program on its own thread, which is
        how both cores of a 2-core host can be used; it is opt-in until a benchmark on an idle
        host shows it faster (``experiments/benchmarks/cross_node_attention.py --grid shards``).
        Static.

    Returns:
      ``[N, Lq, H, Dh]`` aggregated messages in q's dtype (computed in float32).

    Shapes:
      q ``[N, Lq, H, Dh]``; k, v ``[N, Lk, H, Dh]``; senders, receivers, edge_mask ``[E]``;
      kv_mask ``[N, Lk]``; returns ``[N, Lq, H, Dh]``.

    Raises:
      ValueError: at trace time, naming the argument and the expected shape, for mismatched
        shapes or dtypes; and, when senders/receivers are concrete (not traced), for indices
        outside ``[0, N)``.

    Example:
      >>> import jax.numpy as jnp
      >>> q = jnp.ones((3, 2, 1, 4)); kv = jnp.arange(36.0).reshape(3, 3, 1, 4)
      >>> out = cross_node_attention(q, kv, kv, jnp.array([0, 1]), jnp.array([2, 2]),
      ...                            kv_mask=jnp.array([[True, False, False]] * 3))
      >>> out[2, 0, 0].tolist()  # mean of node 0's and node 1's first value token
      [6.0, 7.0, 8.0, 9.0]
      >>> out[0].sum().item()  # no incoming edge
      0.0
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    senders, receivers = _as_index(senders), _as_index(receivers)
    kv_mask = None if kv_mask is None else jnp.asarray(kv_mask)
    edge_mask = None if edge_mask is None else jnp.asarray(edge_mask)
    _validate(
        q,
        k,
        v,
        senders,
        receivers,
        kv_mask,
        edge_mask,
        num_nodes,
        extra=(
            ("edge_chunk_size", edge_chunk_size),
            ("row_width", row_width),
            ("cpu_shards", cpu_shards),
        ),
    )
    if aggregation not in _AGGREGATIONS:
        _fail(
            f"cross_node_attention: aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}"
        )
    if implementation not in _IMPLEMENTATIONS:
        _fail(
            f"cross_node_attention: implementation must be one of {_IMPLEMENTATIONS}, got "
            f"{implementation!r}"
        )
    if implementation is None:
        implementation = "per_edge" if jax.default_backend() == "gpu" else "grouped"
    shards = default_cpu_shards() if cpu_shards is None else int(cpu_shards)
    if shards > 1 and shards > len(jax.local_devices(backend="cpu")):
        _fail(
            f"cross_node_attention: cpu_shards={shards} exceeds the "
            f"{len(jax.local_devices(backend='cpu'))} local CPU devices"
        )
    return _cross_node(
        q,
        k,
        v,
        senders,
        receivers,
        kv_mask,
        edge_mask,
        aggregation=aggregation,
        implementation=implementation,
        chunk=int(edge_chunk_size or DEFAULT_EDGE_CHUNK_SIZE),
        w=int(row_width or DEFAULT_ROW_WIDTH),
        shards=shards if implementation == "grouped" else 1,
    )


def default_cpu_shards() -> int:
    """CPU devices ``cross_node_attention`` uses by default (see its ``cpu_shards`` argument)."""
    import os

    want = os.environ.get("JAXFM_CPU_SHARDS", "").strip()
    if not want or jax.default_backend() != "cpu" or not jax.sharding.get_abstract_mesh().empty:
        return 1
    devices = len(jax.local_devices(backend="cpu"))
    if want == "all":
        return devices
    try:
        return max(1, min(int(want), devices))
    except ValueError:
        raise ValueError(f"$JAXFM_CPU_SHARDS must be an integer or 'all', got {want!r}") from None


def _as_index(x):
    return x if isinstance(x, jax.Array | np.ndarray) else jnp.asarray(x)


# ----------------------------------------------------------------------------- reference


def cross_node_attention_reference(
    q,
    k,
    v,
    senders,
    receivers,
    *,
    kv_mask=None,
    edge_mask=None,
    num_nodes=None,
    aggregation="mean",
):
    """Per-edge Python loop in float64 numpy: the test oracle for :func:`cross_node_attention`.

    Same arguments and semantics (small inputs only); returns ``[N, Lq, H, Dh]`` float32.
    """
    del num_nodes
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
            continue  # zero message, still counted in the mean
        scores = np.einsum("qhd,khd->hqk", q[r], k[s]) / np.sqrt(dh)
        scores = np.where(valid[None, None, :], scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        out[r] += np.einsum("hqk,khd->qhd", p, v[s])
    if aggregation == "mean":
        out = out / np.maximum(count, 1)[:, None, None, None]
    return out.astype(np.float32)
