"""Packed (THD) cuDNN attention: ``implementation="cudnn_packed"`` (explicit opt-in only).

``jax.nn.dot_product_attention(implementation="cudnn")`` cannot pack several sequences into one
row: it only takes per-row lengths. Packed attention exists in JAX only in the private
``jax._src.cudnn.fused_attention_stablehlo.dot_product_attention`` (``q_offsets`` /
``kv_offsets`` with per-segment ``q_seqlen`` / ``kv_seqlen``). That function needs a Hopper
(compute capability 9.0) or newer GPU, and upstream tests it only with q offsets equal to kv
offsets; jaxfm uses it for cross attention (latents -> nodes), where they differ, and tests that
against the XLA reference on GPU (``tests/ops/test_cudnn_packed.py``).

Because the function is private, :func:`load_private_api` checks that it exists and still takes
the arguments used here, and fails with a clear error naming the installed jax otherwise.

Segment-id contract (checked when the ids are concrete): in each batch row every nonzero id's
positions are contiguous, on both sides, and ids lie in ``[0, M]``, ``M = max(2, min(Tq, Tk))``;
id ``m`` on the q side attends id ``m`` on the kv side; 0 is padding. Query rows whose id has no
key, and padding rows, get zeros, and their gradients are masked to zero (cuDNN does not write
rows outside every segment).
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cudnn_packed_attention", "load_private_api", "segment_offsets"]

_MODULE = "jax._src.cudnn.fused_attention_stablehlo"
_REQUIRED = ("query", "key", "value", "q_seqlen", "kv_seqlen", "q_offsets", "kv_offsets",
             "scale", "mask_type", "qkv_layout")  # fmt: skip


class PrivateApiError(RuntimeError):
    """The private cuDNN packed-attention function is absent or changed its signature."""


def load_private_api(module=None):
    """Returns ``(dot_product_attention, MaskType)`` of JAX's private cuDNN module, checked.

    Args:
      module: the module to inspect (default: import ``jax._src.cudnn.fused_attention_stablehlo``;
        tests pass a stand-in).

    Raises:
      PrivateApiError: when the module, the function, ``MaskType.PADDING`` or one of the
        keyword arguments used here (``q_offsets``, ``kv_offsets``, ``q_seqlen``, ``kv_seqlen``,
        ``scale``, ``mask_type``, ``qkv_layout``) is missing.
    """
    where = f"jax {jax.__version__}"
    if module is None:
        try:
            import importlib

            module = importlib.import_module(_MODULE)
        except ImportError as e:
            raise PrivateApiError(
                f"implementation='cudnn_packed' needs the private module {_MODULE}, which {where} "
                f"does not have ({e}); use the 'bucketed' layout with implementation='cudnn'"
            ) from e
    fn = getattr(module, "dot_product_attention", None)
    mask_type = getattr(module, "MaskType", None)
    if fn is None or mask_type is None or not hasattr(mask_type, "PADDING"):
        raise PrivateApiError(
            f"implementation='cudnn_packed': {_MODULE}.dot_product_attention / MaskType.PADDING "
            f"are absent in {where}; use the 'bucketed' layout with implementation='cudnn'"
        )
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as e:  # pragma: no cover - builtins only
        raise PrivateApiError(f"cannot inspect {_MODULE}.dot_product_attention: {e}") from e
    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise PrivateApiError(
            f"implementation='cudnn_packed': {_MODULE}.dot_product_attention in {where} changed "
            f"its signature (missing {missing}; has {list(params)}); this jaxfm supports the jax "
            "0.10-0.11 form. Use the 'bucketed' layout with implementation='cudnn'"
        )
    return fn, mask_type


def segment_offsets(q_segment_ids, kv_segment_ids, max_segments: int):
    """Per-segment offsets and lengths in the form of the private cuDNN function.

    Segment ``m`` (id ``m + 1``) of each batch row is active when it has both queries and keys.
    Active segments keep their first position and length; inactive entries and the trailing
    column of the offsets are -1 (the private function compacts them away).

    Returns:
      ``(q_offsets [B, M+1], kv_offsets [B, M+1], q_seqlen [B, M], kv_seqlen [B, M])`` int32,
      ``active_q [B, Tq]`` and ``active_kv [B, Tk]`` bool: the rows inside an active segment.

    Shapes:
      q_segment_ids ``[B, Tq]``, kv_segment_ids ``[B, Tk]`` int; M = ``max_segments`` (static).
    """

    def one(ids, m):
        ids = ids.astype(jnp.int32)
        pos = jnp.arange(ids.shape[0], dtype=jnp.int32)
        seg = jnp.where((ids > 0) & (ids <= m), ids, 0)
        length = jax.ops.segment_sum(jnp.ones_like(pos), seg, num_segments=m + 1)[1:]
        start = jax.ops.segment_min(pos, seg, num_segments=m + 1)[1:]
        return start, length, seg

    q_start, q_len, q_seg = jax.vmap(lambda x: one(x, max_segments))(q_segment_ids)
    kv_start, kv_len, kv_seg = jax.vmap(lambda x: one(x, max_segments))(kv_segment_ids)
    active = (q_len > 0) & (kv_len > 0)  # [B, M]
    neg = jnp.full_like(q_len, -1)
    tail = jnp.full((q_len.shape[0], 1), -1, jnp.int32)
    q_off = jnp.concatenate([jnp.where(active, q_start, neg), tail], axis=1)
    kv_off = jnp.concatenate([jnp.where(active, kv_start, neg), tail], axis=1)
    q_sl, kv_sl = jnp.where(active, q_len, neg), jnp.where(active, kv_len, neg)
    active_pad = jnp.concatenate([jnp.zeros_like(active[:, :1]), active], axis=1)  # id 0 inactive
    active_q = jnp.take_along_axis(active_pad, q_seg, axis=1)
    active_kv = jnp.take_along_axis(active_pad, kv_seg, axis=1)
    return q_off, kv_off, q_sl, kv_sl, active_q, active_kv


def _check_contiguous(name: str, ids, max_segments: int) -> None:
    """Concrete ids only: each nonzero id contiguous per row, ids in ``[0, M]``."""
    if isinstance(ids, jax.core.Tracer):
        return
    a = np.asarray(ids)
    if a.size == 0:
        return
    if a.min() < 0 or a.max() > max_segments:
        raise ValueError(
            f"attention(implementation='cudnn_packed'): {name} must lie in [0, {max_segments}] "
            f"(min(Tq, Tk)), got values in [{a.min()}, {a.max()}]"
        )
    for row in a:
        starts = np.flatnonzero(np.diff(row, prepend=row[0] - 1) != 0)
        runs = row[starts]
        runs = runs[runs != 0]
        if len(runs) != len(set(runs.tolist())):
            raise ValueError(
                f"attention(implementation='cudnn_packed'): {name} must keep each segment "
                f"contiguous (packed THD layout); row {row.tolist()[:32]} splits a segment"
            )


@functools.partial(jax.custom_vjp, nondiff_argnums=())
def _mask_grad(x, keep):
    return x


def _mask_grad_fwd(x, keep):
    return x, keep


def _mask_grad_bwd(keep, g):
    return jnp.where(keep[:, :, None, None], g, jnp.zeros((), g.dtype)), None


_mask_grad.defvjp(_mask_grad_fwd, _mask_grad_bwd)


def cudnn_packed_attention(q, k, v, q_segment_ids, kv_segment_ids):
    """Cross attention between packed segments with cuDNN's THD layout (zeros for empty rows).

    Args:
      q: queries (bf16/fp16, head dim a multiple of 8, <= 256 on Hopper).
      k: keys.
      v: values.
      q_segment_ids: contiguous segment ids of the queries (0 = padding).
      kv_segment_ids: contiguous segment ids of the keys.

    Returns:
      ``[B, Tq, H, Dh]`` in q's dtype.

    Shapes:
      q ``[B, Tq, H, Dh]``; k, v ``[B, Tk, H, Dh]``; ids ``[B, Tq]`` / ``[B, Tk]``.

    Raises:
      PrivateApiError: the private function is absent or changed signature.
      ValueError: off GPU, on a GPU older than Hopper, for dtypes or head dims cuDNN rejects, or
        for concrete ids that break the contract in the module docstring.
    """
    fn, mask_type = load_private_api()
    if jax.default_backend() != "gpu":
        raise ValueError("attention(implementation='cudnn_packed') needs a CUDA GPU")
    cc = getattr(jax.devices()[0], "compute_capability", "0.0")
    if tuple(int(x) for x in str(cc).split(".")[:2]) < (9, 0):
        raise ValueError(
            f"attention(implementation='cudnn_packed') needs Hopper (sm90) or newer, got sm{cc}"
        )
    if q.dtype not in (jnp.bfloat16, jnp.float16) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            "attention(implementation='cudnn_packed') needs bf16 or fp16 q/k/v of one dtype, "
            f"got {q.dtype}/{k.dtype}/{v.dtype}"
        )
    dh = q.shape[-1]
    if dh % 8 or dh > 256:
        raise ValueError(
            f"attention(implementation='cudnn_packed') needs a head dim that is a multiple of 8 "
            f"and <= 256, got {dh}"
        )
    m = max(2, min(q.shape[1], k.shape[1]))  # M > 1 selects the packed form of the kernel
    _check_contiguous("q_segment_ids", q_segment_ids, m)
    _check_contiguous("kv_segment_ids", kv_segment_ids, m)
    q_off, kv_off, q_len, kv_len, active_q, active_kv = segment_offsets(
        q_segment_ids, kv_segment_ids, m
    )
    q = _mask_grad(q, active_q)  # rows outside every segment are not written by cuDNN
    k, v = _mask_grad(k, active_kv), _mask_grad(v, active_kv)
    out = fn(
        query=q,
        key=k,
        value=v,
        q_seqlen=q_len,
        kv_seqlen=kv_len,
        q_offsets=q_off,
        kv_offsets=kv_off,
        scale=1.0 / math.sqrt(dh),
        mask_type=mask_type.PADDING,
        qkv_layout="BTNH",
    )
    return jnp.where(active_q[:, :, None, None], out, jnp.zeros((), out.dtype))
