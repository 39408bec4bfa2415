"""The one attention entry point of jaxfm, and its dense reference.

Every module that attends (FIMP message creators, the GraphFM Perceiver, foundation-model layers)
goes through :func:`attention`. Segment ids, key masks and sequence lengths are turned into whatever
the chosen implementation wants. Implementations (``implementation=``):

* ``"xla"``: :func:`jax.nn.dot_product_attention` with a dense boolean ``[B, 1, Tq, Tk]`` mask.
* ``"cudnn"``: its cuDNN flash path; sequence lengths stay lengths, other masks become a bias.
  Auto on GPU when dtype/head dim allow and no dense mask is needed (the ``bucketed`` layout).
* ``"splash"``: the TPU splash kernel with separate q and kv segment ids
  (:mod:`jaxfm.ops.splash`); auto on TPU whenever supported (no bias, f32/bf16). Off TPU it runs in
  Pallas interpret mode (for tests).
* ``"cudnn_packed"``: packed (THD) cuDNN attention through JAX's private cuDNN function
  (:mod:`jaxfm.ops.cudnn_packed`); explicit opt-in only (Hopper or newer, contiguous segments).
* ``"reference"``: the dense float32 oracle :func:`attention_reference`.

Each call runs inside a ``jax.named_scope`` naming its call number and implementation
(``jaxfm_attention_<i>_<impl>``), which :mod:`jaxfm.ops.explain` finds again in the compiled HLO.

Two behaviours differ on purpose from ``jax.nn.dot_product_attention``:

* a query row with no valid key returns **zeros** (XLA would return the mean of V), and its
  gradient is zero;
* ``return_weights=True`` returns the attention probabilities ``[B, H, Tq, Tk]`` as well (computed
  by the reference path, which is the only one that materializes them).
"""

from __future__ import annotations

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxfm.ops import cudnn_packed as _cudnn_packed
from jaxfm.ops.splash import splash_attention, splash_supported

__all__ = [
    "IMPLEMENTATIONS",
    "attention",
    "attention_reference",
    "build_mask",
    "cudnn_supported",
    "resolve_implementation",
]

#: Accepted values of ``implementation`` (``None`` = choose by backend).
IMPLEMENTATIONS = (None, "xla", "cudnn", "splash", "cudnn_packed", "reference")
_IMPLEMENTATIONS = IMPLEMENTATIONS
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _validate(q, k, v, q_segment_ids, kv_segment_ids, kv_mask, q_seq_lengths, kv_seq_lengths):
    _check(q.ndim == 4, f"attention: q must be [B, Tq, H, Dh], got shape {q.shape}")
    _check(k.ndim == 4, f"attention: k must be [B, Tk, H, Dh], got shape {k.shape}")
    _check(v.ndim == 4, f"attention: v must be [B, Tk, H, Dh], got shape {v.shape}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(
            jnp.issubdtype(x.dtype, jnp.floating),
            f"attention: {name} must be a floating array, got dtype {x.dtype}",
        )
    b, tq, h, dh = q.shape
    _check(
        k.shape[0] == b and k.shape[2] == h and k.shape[3] == dh,
        f"attention: k must be [B={b}, Tk, H={h}, Dh={dh}] to match q {q.shape}, got {k.shape}",
    )
    tk = k.shape[1]
    _check(
        v.shape == k.shape,
        f"attention: v must be [B={b}, Tk={tk}, H={h}, Dh={dh}] like k, got {v.shape}",
    )
    _check(
        (q_segment_ids is None) == (kv_segment_ids is None),
        "attention: pass both q_segment_ids and kv_segment_ids or neither",
    )
    for name, arr, shape in (
        ("q_segment_ids", q_segment_ids, (b, tq)),
        ("kv_segment_ids", kv_segment_ids, (b, tk)),
    ):
        if arr is not None:
            _check(
                tuple(arr.shape) == shape,
                f"attention: {name} must have shape {shape}, got {tuple(arr.shape)}",
            )
            _check(
                jnp.issubdtype(arr.dtype, jnp.integer),
                f"attention: {name} must be an integer array, got dtype {arr.dtype}",
            )
    if kv_mask is not None:
        _check(
            tuple(kv_mask.shape) == (b, tk),
            f"attention: kv_mask must have shape {(b, tk)}, got {tuple(kv_mask.shape)}",
        )
        _check(kv_mask.dtype == jnp.bool_, f"attention: kv_mask must be bool, got {kv_mask.dtype}")
    for name, arr, size in (
        ("q_seq_lengths", q_seq_lengths, tq),
        ("kv_seq_lengths", kv_seq_lengths, tk),
    ):
        if arr is not None:
            _check(
                tuple(arr.shape) == (b,) and jnp.issubdtype(arr.dtype, jnp.integer),
                f"attention: {name} must be an int array of shape {(b,)}, got "
                f"{tuple(arr.shape)} {arr.dtype}",
            )
            if not isinstance(arr, jax.core.Tracer) and b > 0:
                a = np.asarray(arr)
                lo, hi = int(a.min()), int(a.max())
                _check(
                    lo >= 0 and hi <= size,
                    f"attention: {name} must lie in [0, {size}], got values in [{lo}, {hi}]",
                )


def build_mask(
    tq: int,
    tk: int,
    *,
    batch: int,
    q_segment_ids=None,
    kv_segment_ids=None,
    kv_mask=None,
    q_seq_lengths=None,
    kv_seq_lengths=None,
):
    """Combines every masking argument into one boolean mask, or ``None`` if nothing masks.

    Shapes:
      returns ``[B, 1, Tq, Tk]`` bool (broadcast over heads): True where query i may attend key j.
    """
    mask = None

    def _and(m, new):
        return new if m is None else m & new

    if q_segment_ids is not None:
        same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
        same &= (q_segment_ids != 0)[:, :, None] & (kv_segment_ids != 0)[:, None, :]
        mask = _and(mask, same[:, None])
    if kv_mask is not None:
        mask = _and(mask, kv_mask[:, None, None, :])
    if kv_seq_lengths is not None:
        valid_k = jnp.arange(tk)[None, :] < kv_seq_lengths[:, None]  # [B, Tk]
        mask = _and(mask, valid_k[:, None, None, :])
    if q_seq_lengths is not None:
        valid_q = jnp.arange(tq)[None, :] < q_seq_lengths[:, None]  # [B, Tq]
        mask = _and(mask, valid_q[:, None, :, None])
    if mask is not None:
        mask = jnp.broadcast_to(mask, (batch, 1, tq, tk))
    return mask


def attention_reference(q, k, v, *, mask=None, bias=None, return_weights=False):
    """Obviously-correct dense attention in float32 (the test oracle).

    Shapes:
      q ``[B, Tq, H, Dh]``, k ``[B, Tk, H, Dh]``, v ``[B, Tk, H, Dv]``; ``mask`` broadcastable to
      ``[B, H, Tq, Tk]`` (True = attend); ``bias`` broadcastable to ``[B, H, Tq, Tk]``.
      Returns ``[B, Tq, H, Dv]`` in q's dtype (and ``[B, H, Tq, Tk]`` float32 weights on request).
    Rows with no valid key give zero output and zero weights.
    """
    dtype = q.dtype
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones((1, 1, 1, 1), bool)
    mask = jnp.broadcast_to(mask, scores.shape)
    scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.where(mask, jnp.exp(scores - jax.lax.stop_gradient(row_max)), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v).astype(dtype)
    return (out, p) if return_weights else out


def _backend() -> str:
    """The default backend's platform (one place, so tests can pose as a TPU host)."""
    return jax.default_backend()


def cudnn_supported(q, k, v, *, bias=None) -> bool:
    """Whether the cuDNN flash path can run these arguments on the current default backend."""
    if _backend() != "gpu":
        return False
    if q.dtype not in _CUDNN_DTYPES or not (q.dtype == k.dtype == v.dtype):
        return False
    dh, dv = q.shape[-1], v.shape[-1]
    if dh != dv or dh % 8 or dh > 128:
        return False
    return bias is None or bias.dtype == q.dtype


def resolve_implementation(
    q, k, v, *, bias=None, dense_masking: bool = False, implementation: str | None = None
) -> str:
    """The implementation :func:`attention` uses for these arguments (``None`` = auto).

    Auto: ``"splash"`` on TPU when :func:`~jaxfm.ops.splash.splash_supported`; ``"cudnn"`` on GPU
    when :func:`cudnn_supported` and nothing needs a dense mask (segment ids, ``kv_mask``);
    ``"xla"`` otherwise. An explicit choice passes through.
    """
    if implementation is not None:
        return implementation
    backend = _backend()
    if backend == "tpu" and splash_supported(q, k, v, bias=bias):
        return "splash"
    if backend == "gpu" and not dense_masking and cudnn_supported(q, k, v, bias=bias):
        return "cudnn"
    return "xla"


# ----------------------------------------------------------------------------- call records

_CALL_IDS = itertools.count()
_RECORDERS: list[list[dict]] = []


@contextlib.contextmanager
def record_attention_calls():
    """Collects one dict per :func:`attention` call traced inside the block.

    Each record has ``tag`` (the ``jax.named_scope`` of the call), ``implementation``,
    ``requested``, ``q``/``k`` shapes, ``dtype`` and ``masking`` (which arguments masked). Used by
    :func:`jaxfm.ops.explain.explain_attention`.
    """
    records: list[dict] = []
    _RECORDERS.append(records)
    try:
        yield records
    finally:
        _RECORDERS.remove(records)


def _record(impl, requested, q, k, masking) -> str:
    tag = f"jaxfm_attention_{next(_CALL_IDS)}_{impl}"
    for records in _RECORDERS:
        records.append(
            dict(
                tag=tag,
                implementation=impl,
                requested=requested,
                q=tuple(q.shape),
                k=tuple(k.shape),
                dtype=str(q.dtype),
                masking=masking,
            )
        )
    return tag


def attention(
    q,
    k,
    v,
    *,
    q_segment_ids=None,
    kv_segment_ids=None,
    kv_mask=None,
    bias=None,
    q_seq_lengths=None,
    kv_seq_lengths=None,
    implementation: str | None = None,
    return_weights: bool = False,
):
    """Multi-head scaled dot-product attention with segment ids and masks.

    Args:
      q: queries (floating).
      k: keys (floating).
      v: values (floating).
      q_segment_ids: int ids of the query tokens; query i attends key j only where
        ``q_segment_ids[b, i] == kv_segment_ids[b, j] != 0`` (0 marks padding).
      kv_segment_ids: int ids of the key tokens (pass with ``q_segment_ids``).
      kv_mask: True for valid keys.
      bias: additive logits bias, broadcastable to ``[B, H, Tq, Tk]``.
      q_seq_lengths: number of valid (leading) query rows per batch element, in ``[0, Tq]``.
      kv_seq_lengths: number of valid (leading) keys per batch element, in ``[0, Tk]``. On GPU
        these reach cuDNN as its sequence-length arguments; prefer them to ``kv_mask`` when valid
        keys are a prefix.
      implementation: ``None`` (auto, see :func:`resolve_implementation`), ``"xla"``,
        ``"cudnn"``, ``"splash"``, ``"cudnn_packed"`` (opt-in, see
        :func:`jaxfm.ops.cudnn_packed.cudnn_packed_attention`) or ``"reference"`` (the dense
        float32 oracle). Static.
      return_weights: also return the attention probabilities (uses the reference path). Static.

    Returns:
      ``[B, Tq, H, Dh]`` in q's dtype; with ``return_weights`` a tuple ``(out, weights)`` where
      weights is ``[B, H, Tq, Tk]`` float32. A query with no valid key gets zeros.

    Shapes:
      q ``[B, Tq, H, Dh]``; k and v ``[B, Tk, H, Dh]``; segment ids ``[B, Tq]`` /
      ``[B, Tk]`` int; kv_mask ``[B, Tk]`` bool; seq lengths ``[B]`` int.

    Raises:
      ValueError: before compilation, naming the argument, for mismatched shapes, non-floating
        q/k/v, non-integer ids or lengths, sequence lengths outside ``[0, T]`` (when concrete),
        an unknown implementation, or arguments the chosen implementation cannot express.

    Example:
      >>> import jax.numpy as jnp
      >>> q = jnp.ones((1, 2, 1, 4)); kv = jnp.arange(12.0).reshape(1, 3, 1, 4)
      >>> out = attention(q, kv, kv, kv_mask=jnp.array([[True, False, False]]))
      >>> out[0, :, 0].tolist()
      [[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]
    """
    _check(
        implementation in _IMPLEMENTATIONS,
        f"attention: implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}",
    )
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    q_segment_ids, kv_segment_ids, kv_mask, q_seq_lengths, kv_seq_lengths = (
        None if x is None else jnp.asarray(x)
        for x in (q_segment_ids, kv_segment_ids, kv_mask, q_seq_lengths, kv_seq_lengths)
    )
    _validate(q, k, v, q_segment_ids, kv_segment_ids, kv_mask, q_seq_lengths, kv_seq_lengths)
    dense_masking = q_segment_ids is not None or kv_mask is not None
    requested = implementation
    impl = "reference" if return_weights else implementation
    impl = resolve_implementation(q, k, v, bias=bias, dense_masking=dense_masking,
                                  implementation=impl)  # fmt: skip
    masking = tuple(
        name
        for name, x in (
            ("segment_ids", q_segment_ids),
            ("kv_mask", kv_mask),
            ("bias", bias),
            ("q_seq_lengths", q_seq_lengths),
            ("kv_seq_lengths", kv_seq_lengths),
        )
        if x is not None
    )
    if impl == "splash":
        _check(
            splash_supported(q, k, v, bias=bias),
            "attention: implementation='splash' needs float32/bfloat16 q/k/v of one dtype, "
            f"equal head dims and no bias; got {q.dtype}/{k.dtype}/{v.dtype}, bias "
            f"{'set' if bias is not None else 'None'}",
        )
    if impl == "cudnn_packed":
        _check(
            q_segment_ids is not None,
            "attention: implementation='cudnn_packed' needs q_segment_ids and kv_segment_ids",
        )
        _check(
            not {"kv_mask", "bias", "q_seq_lengths", "kv_seq_lengths"} & set(masking),
            "attention: implementation='cudnn_packed' takes segment ids only (no kv_mask, bias "
            "or seq lengths: fold padding into segment id 0)",
        )
    tag = _record(impl, requested, q, k, masking)
    with jax.named_scope(tag):
        return _dispatch(
            impl, q, k, v, q_segment_ids, kv_segment_ids, kv_mask, bias, q_seq_lengths,
            kv_seq_lengths, return_weights,
        )  # fmt: skip


def _dispatch(
    impl, q, k, v, q_segment_ids, kv_segment_ids, kv_mask, bias, q_seq_lengths, kv_seq_lengths,
    return_weights,
):  # fmt: skip
    b, tq, _, _ = q.shape
    tk = k.shape[1]
    if impl == "splash":
        q_valid = kv_valid = None
        if q_seq_lengths is not None:
            q_valid = jnp.arange(tq)[None, :] < q_seq_lengths[:, None]  # [B, Tq]
        if kv_seq_lengths is not None:
            kv_valid = jnp.arange(tk)[None, :] < kv_seq_lengths[:, None]  # [B, Tk]
        if kv_mask is not None:
            kv_valid = kv_mask if kv_valid is None else kv_valid & kv_mask
        return splash_attention(
            q,
            k,
            v,
            q_segment_ids=q_segment_ids,
            kv_segment_ids=kv_segment_ids,
            q_valid=q_valid,
            kv_valid=kv_valid,
        )
    if impl == "cudnn_packed":
        return _cudnn_packed.cudnn_packed_attention(q, k, v, q_segment_ids, kv_segment_ids)

    mask = build_mask(
        tq,
        tk,
        batch=b,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask,
        q_seq_lengths=q_seq_lengths,
        kv_seq_lengths=kv_seq_lengths,
    )
    if impl == "reference":
        return attention_reference(q, k, v, mask=mask, bias=bias, return_weights=return_weights)

    if impl == "cudnn":
        if q_segment_ids is not None or kv_mask is not None:
            # cuDNN takes masks as an additive bias; lengths stay lengths.
            seg_mask = build_mask(
                tq,
                tk,
                batch=b,
                q_segment_ids=q_segment_ids,
                kv_segment_ids=kv_segment_ids,
                kv_mask=kv_mask,
            )
            neg = jnp.asarray(jnp.finfo(q.dtype).min, q.dtype)
            mask_bias = jnp.where(seg_mask, jnp.zeros((), q.dtype), neg)
            bias = mask_bias if bias is None else bias.astype(q.dtype) + mask_bias
        out = jax.nn.dot_product_attention(
            q,
            k,
            v,
            bias=bias,
            query_seq_lengths=q_seq_lengths,
            key_value_seq_lengths=kv_seq_lengths,
            implementation="cudnn",
        )
    else:
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla")

    if mask is not None:
        # XLA (and cuDNN) give a row with no valid key the mean of V: force zeros instead.
        row_valid = jnp.any(mask, axis=-1)[:, 0, :]  # [B, Tq]
        out = jnp.where(row_valid[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out
