"""Nystrom attention math (Nystromformer, Xiong et al. 2021): landmarks, iterative pseudo-inverse.

Pure functions; :mod:`jaxfm.foundation.nystrom` owns the Flax modules that call them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["iterative_pinv", "nystrom_attention", "segment_means"]


def _fail(msg: str) -> None:
    raise ValueError(msg)


# ----------------------------------------------------------------------------- pure math


def segment_means(x: jax.Array, num_landmarks: int, segment_len: int) -> jax.Array:
    """Landmarks as means of consecutive token segments (Nystromformer's segment means).

    Args:
      x: per-head tokens.
      num_landmarks: m (static).
      segment_len: tokens per segment (static); the sequence must be exactly ``m * segment_len``.

    Shapes:
      x ``[B, S, H, Dh]`` -> ``[B, m, H, Dh]``.

    Raises:
      ValueError: if ``S != num_landmarks * segment_len``.
    """
    b, s, h, d = x.shape
    if s != num_landmarks * segment_len:
        _fail(
            f"segment_means: the Nystrom path needs sequence length == num_landmarks "
            f"({num_landmarks}) * (segment_means_seq_len // num_landmarks) ({segment_len}) = "
            f"{num_landmarks * segment_len}, got {s}"
        )
    return x.reshape(b, num_landmarks, segment_len, h, d).mean(axis=2)  # [B, m, H, Dh]


def iterative_pinv(
    mat: jax.Array,
    *,
    n_iter: int = 6,
    init_option: str = "original",
    batch_valid: jax.Array | None = None,
) -> jax.Array:
    """Iterative Moore-Penrose pseudo-inverse of row-stochastic matrices (Nystromformer eq. 16).

    ``Z_0 = A^T / c``; ``Z_{j+1} = 1/4 Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j)))``.
    ``init_option="original"`` takes ``c`` as the largest column sum over the **whole batch and
    all heads** (as transformers does: the result of one matrix depends on the others);
    ``"exact"`` takes ``c = ||A||_1`` per matrix.

    Args:
      mat: matrices to invert (softmax outputs).
      n_iter: iterations (static; transformers uses 6).
      init_option: ``"original"`` or ``"exact"`` (static).
      batch_valid: optional ``[B]`` bool; rows marked False are left out of the global
        ``"original"`` maximum (padding edges in cross-node form).

    Shapes:
      mat ``[B, H, m, m]`` -> ``[B, H, m, m]``.
    """
    if init_option not in ("original", "exact"):
        _fail(f"iterative_pinv: init_option must be 'original' or 'exact', got {init_option!r}")
    eye = jnp.eye(mat.shape[-1], dtype=mat.dtype)
    col_sums = jnp.sum(mat, axis=-2)  # [B, H, m]
    if init_option == "original":
        if batch_valid is not None:
            col_sums = jnp.where(batch_valid[:, None, None], col_sums, -jnp.inf)
        coef = 1.0 / jnp.max(col_sums)
    else:
        coef = (1.0 / jnp.max(col_sums, axis=-1))[..., None, None]  # [B, H, 1, 1]
    z = coef * jnp.swapaxes(mat, -1, -2)
    for _ in range(n_iter):
        az = mat @ z
        z = (0.25 * z) @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    num_landmarks: int,
    segment_len: int,
    init_option: str = "original",
    n_iter: int = 6,
    batch_valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Nystrom approximation of softmax attention (transformers' non-exact path).

    Q and K are taken *before* scaling; each is divided by ``Dh ** 0.25`` here.

    Returns:
      ``(context, probs)``: context ``[B, S, H, Dh]`` and the attention factor
      ``softmax(Q K~^T) pinv(softmax(Q~ K~^T))`` ``[B, H, S, m]`` (what transformers returns as
      attention probabilities on this path).

    Shapes:
      q, k, v ``[B, S, H, Dh]``; batch_valid ``[B]`` bool.
    """
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    q, k = q * scale, k * scale
    q_land = segment_means(q, num_landmarks, segment_len)  # [B, m, H, Dh]
    k_land = segment_means(k, num_landmarks, segment_len)
    kernel_1 = jax.nn.softmax(jnp.einsum("bshd,bmhd->bhsm", q, k_land), axis=-1)
    kernel_2 = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q_land, k_land), axis=-1)
    kernel_3 = jax.nn.softmax(jnp.einsum("bmhd,bshd->bhms", q_land, k), axis=-1)
    probs = kernel_1 @ iterative_pinv(
        kernel_2, n_iter=n_iter, init_option=init_option, batch_valid=batch_valid
    )  # [B, H, S, m]
    new_v = jnp.einsum("bhms,bshd->bhmd", kernel_3, v)  # [B, H, m, Dh]
    context = jnp.einsum("bhsm,bhmd->bshd", probs, new_v)  # [B, S, H, Dh]
    return context, probs


# ----------------------------------------------------------------------------- modules
