"""Helpers for tests and benchmarks of jaxfm modules (like ``numpy.testing``)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

__all__ = ["random_params"]


def random_params(module: nn.Module, *args, seed: int = 0, scale: float = 0.3, **kwargs):
    """Random parameters of ``module`` made on the host (shapes from ``jax.eval_shape``), so no
    RNG code is compiled: LayerNorm scales ~ 1 + N(0, scale), everything else ~ N(0, scale).

    ``args``/``kwargs`` are what ``module.init`` takes after the RNG key.
    """
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        base = 1.0 if getattr(path[-1], "key", None) == "scale" else 0.0
        return (base + scale * rng.normal(size=s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)
