"""Masked losses and metrics (pure, jit-able).

Every function takes an explicit validity ``mask`` (True = counts) and returns a float32 scalar
that is 0 (never NaN) when nothing is valid; masked entries may hold anything, including NaN-free
garbage from padding. Under ``jit`` only ``num_classes`` (or the logits' last dim) must be static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "accuracy",
    "macro_f1",
    "masked_mean",
    "masked_mse",
    "r2_score",
    "softmax_cross_entropy",
]


def _mask_like(mask, x) -> jax.Array:
    """``mask`` broadcast (trailing dims appended) to ``x``'s shape, as float32."""
    mask = jnp.asarray(mask).astype(bool)
    mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.broadcast_to(mask, x.shape)


def _safe_div(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def masked_mean(x, mask) -> jax.Array:
    """Mean of ``x`` over valid entries (0 if none).

    Shapes:
      x ``[...]``; mask a prefix of x's shape (trailing dims broadcast) -> scalar.
    """
    x = jnp.asarray(x, jnp.float32)
    m = _mask_like(mask, x)
    return _safe_div(jnp.sum(jnp.where(m, x, 0.0)), jnp.sum(m, dtype=jnp.float32))


def masked_mse(predictions, targets, mask) -> jax.Array:
    """Mean squared error over valid entries (0 if none).

    Shapes:
      predictions, targets ``[...]``; mask a prefix of their shape (e.g. ``[N, P]`` for
      ``[N, P, patch]``) -> scalar.

    Example:
      >>> float(masked_mse(jnp.array([1.0, 5.0]), jnp.array([0.0, 0.0]), jnp.array([True, False])))
      1.0
    """
    p = jnp.asarray(predictions, jnp.float32)
    t = jnp.asarray(targets, jnp.float32)
    m = _mask_like(mask, p)
    return masked_mean(jnp.where(m, (p - t) ** 2, 0.0), m)


def r2_score(predictions, targets, mask) -> jax.Array:
    """Coefficient of determination ``1 - SS_res / SS_tot`` over valid entries (pooled).

    ``SS_tot`` is taken around the masked mean of the targets. As in scikit-learn
    (``force_finite``): constant targets give 1.0 for a perfect fit, else 0.0; no valid entry
    gives 0.0.

    Shapes:
      predictions, targets ``[...]``; mask a prefix of their shape -> scalar.
    """
    p = jnp.asarray(predictions, jnp.float32)
    t = jnp.asarray(targets, jnp.float32)
    m = _mask_like(mask, p)
    count = jnp.sum(m, dtype=jnp.float32)
    mean_t = _safe_div(jnp.sum(jnp.where(m, t, 0.0)), count)
    ss_res = jnp.sum(jnp.where(m, (t - p) ** 2, 0.0))
    ss_tot = jnp.sum(jnp.where(m, (t - mean_t) ** 2, 0.0))
    r2 = 1.0 - ss_res / jnp.where(ss_tot > 0, ss_tot, 1.0)
    constant = jnp.where(ss_res == 0, 1.0, 0.0)
    return jnp.where(count > 0, jnp.where(ss_tot > 0, r2, constant), 0.0)


def softmax_cross_entropy(logits, labels, mask) -> jax.Array:
    """Mean softmax cross-entropy over valid rows (0 if none).

    Shapes:
      logits ``[N, C]``; labels ``[N]`` int in ``[0, C)``; mask ``[N]`` -> scalar.
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.where(mask, labels, 0)  # padding labels may be out of range
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return masked_mean(nll, mask)


def accuracy(logits, labels, mask) -> jax.Array:
    """Fraction of valid rows whose argmax equals the label (0 if none).

    Shapes:
      logits ``[N, C]``; labels ``[N]`` int; mask ``[N]`` -> scalar.
    """
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return masked_mean(correct, mask)


def macro_f1(logits, labels, mask, *, num_classes: int | None = None) -> jax.Array:
    """Macro-averaged F1 over the classes present among valid labels or predictions.

    Per class ``F1_c = 2 TP / (2 TP + FP + FN)``; classes that occur in neither the valid labels
    nor the valid predictions are left out of the average (scikit-learn's ``average="macro"``
    over the observed labels). 0 if nothing is valid.

    Args:
      logits: class scores (argmax = prediction).
      labels: int labels.
      mask: True for rows that count.
      num_classes: C (static); default ``logits.shape[-1]``.

    Shapes:
      logits ``[N, C]``; labels ``[N]``; mask ``[N]`` -> scalar.
    """
    c = logits.shape[-1] if num_classes is None else num_classes
    m = jnp.asarray(mask).astype(bool)
    pred = jax.nn.one_hot(jnp.argmax(logits, axis=-1), c, dtype=jnp.float32)  # [N, C]
    true = jax.nn.one_hot(labels, c, dtype=jnp.float32)  # [N, C]
    pred = pred * m[:, None]
    true = true * m[:, None]
    tp = jnp.sum(pred * true, axis=0)
    fp = jnp.sum(pred * (1.0 - true), axis=0)
    fn = jnp.sum((1.0 - pred) * true, axis=0)
    f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)  # [C]
    present = (jnp.sum(pred, axis=0) + jnp.sum(true, axis=0)) > 0
    return _safe_div(jnp.sum(jnp.where(present, f1, 0.0)), jnp.sum(present, dtype=jnp.float32))
