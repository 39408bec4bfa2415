"""Fixed sinusoidal position encodings (1-D for time patches, 2-D for image patch grids).

The layout follows the MAE convention: for ``dim`` channels and frequencies
``omega_k = 1 / 10000^(2k / dim)``, ``k = 0 .. dim/2 - 1``, a position ``p`` is encoded as
``[sin(p w_0), ..., sin(p w_{dim/2-1}), cos(p w_0), ..., cos(p w_{dim/2-1})]`` (``w = omega``)
(sines first, then cosines; not interleaved). The 2-D encoding spends the first half of the
channels on the row index and the second half on the column index.

These are the ``p_i`` of FIMP eq. 5 for images (2-D, concatenated or summed with the patch
projection) and the temporal part of jaxfm's own fMRI tokenizer (1-D, summed). BrainLM's
pretrained model interleaves sines and cosines instead (``pe[:, 0::2] = sin``,
``pe[:, 1::2] = cos``); its port uses :func:`jaxfm.foundation.brainlm.temporal_encoding`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sinusoidal_1d", "sinusoidal_2d", "sinusoidal_from_positions"]


def sinusoidal_from_positions(positions, dim: int, *, max_timescale: float = 10000.0) -> np.ndarray:
    """Sinusoidal encoding of arbitrary (possibly fractional) positions.

    Args:
      positions: position values.
      dim: number of channels; must be even.
      max_timescale: the base of the geometric frequency progression.

    Returns:
      float32 array, sines in the first ``dim/2`` channels and cosines in the rest.

    Shapes:
      positions ``[...]`` -> ``[..., dim]``.

    Raises:
      ValueError: if ``dim`` is not a positive even number.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal encoding: dim must be a positive even number, got {dim}")
    pos = np.asarray(positions, np.float64)
    omega = 1.0 / max_timescale ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = pos[..., None] * omega  # [..., dim/2]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def sinusoidal_1d(length: int, dim: int, *, max_timescale: float = 10000.0) -> np.ndarray:
    """Fixed 1-D sinusoidal encoding of positions ``0 .. length-1``.

    Args:
      length: number of positions (static).
      dim: number of channels (static, even).
      max_timescale: the base of the frequency progression.

    Returns:
      float32 numpy array (a constant under ``jit``).

    Shapes:
      returns ``[length, dim]``.

    Example:
      >>> pe = sinusoidal_1d(3, 4)
      >>> pe.shape, float(pe[0, 0]), float(pe[0, 2])
      ((3, 4), 0.0, 1.0)
    """
    return sinusoidal_from_positions(np.arange(length), dim, max_timescale=max_timescale)


def sinusoidal_2d(
    grid_h: int, grid_w: int, dim: int, *, max_timescale: float = 10000.0
) -> np.ndarray:
    """Fixed 2-D sinusoidal encoding of a ``grid_h x grid_w`` patch grid, row-major order.

    Patch ``(i, j)`` (row ``i``, column ``j``) is token ``i * grid_w + j``; its encoding is
    ``concat(sinusoidal(i, dim/2), sinusoidal(j, dim/2))``.

    Args:
      grid_h: number of patch rows (static).
      grid_w: number of patch columns (static).
      dim: number of channels (static); must be divisible by 4.
      max_timescale: the base of the frequency progression.

    Returns:
      float32 numpy array.

    Shapes:
      returns ``[grid_h * grid_w, dim]``.

    Raises:
      ValueError: if ``dim`` is not a positive multiple of 4.
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"sinusoidal_2d: dim must be a positive multiple of 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")  # [gh, gw]
    emb_rows = sinusoidal_from_positions(rows.reshape(-1), dim // 2, max_timescale=max_timescale)
    emb_cols = sinusoidal_from_positions(cols.reshape(-1), dim // 2, max_timescale=max_timescale)
    return np.concatenate([emb_rows, emb_cols], axis=-1)  # [gh * gw, dim]
