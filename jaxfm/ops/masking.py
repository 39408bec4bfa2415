"""The one value-masking rule of masked prediction (FIMP's genes and fMRI patches).

Per row, exactly ``floor(rate * n_valid + 0.5)`` valid tokens are masked (round half up), and at
least one when the row has any valid token; padding is never masked. Which tokens: those with the
smallest random keys. The same function runs on numpy (host-side fixed evaluation masks) and
inside ``jit`` (fresh training masks every step): only the source of the keys differs.

Example:
  >>> import numpy as np
  >>> keys = np.array([[0.9, 0.1, 0.5, 0.3]])
  >>> rank_mask(keys, np.array([[True, True, True, False]]), 0.5).tolist()
  [[False, True, True, False]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["rank_mask"]


def rank_mask(keys, token_mask, rate: float):
    """Which tokens to mask, given uniform random ``keys`` (numpy in, numpy out; jax in, jax out).

    Shapes:
      keys: ``[N, L]`` floats in ``[0, 1)``; token_mask: ``[N, L]`` bool. Returns ``[N, L]``
      bool, a subset of ``token_mask``.

    Raises:
      ValueError: ``rate`` outside ``(0, 1]``.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    xp = jnp if isinstance(keys, jax.Array) or isinstance(token_mask, jax.Array) else np
    token_mask = xp.asarray(token_mask, bool)
    keys = xp.where(token_mask, keys, 2.0)  # padding sorts last
    ranks = xp.argsort(xp.argsort(keys, axis=-1), axis=-1)
    n_valid = token_mask.sum(-1)
    n_mask = xp.floor(rate * n_valid + 0.5).astype(n_valid.dtype)
    n_mask = xp.minimum(xp.maximum(n_mask, (n_valid > 0).astype(n_valid.dtype)), n_valid)
    return ranks < n_mask[..., None]
