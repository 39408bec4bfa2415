"""GraphFM node tokens: ``z_i = [ MLP_dataset(x_i) ⊕ SignNet(PE_i) ]`` (paper §2.2).

Per-dataset feature MLPs: every dataset has its own two-layer MLP ``F -> hidden -> D - P``
(GELU). The weights of all S datasets are stacked (``[S, F, hidden]``, ``[S, hidden, D - P]``) and
applied to the dataset-sorted rows of a packed batch with ONE grouped matmul,
:func:`jax.lax.ragged_dot` with ``group_sizes`` = rows per dataset. Each row costs one dataset's
matmul, not S of them, and no ``[T, F, hidden]`` weight gather is materialized.

Rows past ``sum(group_sizes)`` are padding. On jax 0.10.2 (CPU) ``ragged_dot`` returns zeros
for them even when their inputs are NaN, but that is not a documented guarantee on every backend,
so they are explicitly zeroed (``jnp.where``, which also stops any NaN from reaching gradients).

The ``gather`` implementation (each row gathers its dataset's weights, ``[T, F, hidden]``) gives
the same numbers; it exists as the obviously-correct comparison for tests and the benchmark.

Measured on XLA:CPU (jax 0.10.2, ``experiments/benchmarks/graphfm_encoder.py`` (c), T=4096,
F=128, hidden 32): ``ragged_dot`` is lowered there as one masked matmul per group, so its time and
memory grow with S like a per-dataset loop (16 / 85 / 393 ms for S = 4 / 16 / 64), while
``gather`` stays flat (~70 ms, 79 MiB) at the price of a ``[T, F, hidden]`` temporary. On GPU/TPU
``ragged_dot`` is a grouped matmul; ``feature_mlp="gather"`` is the CPU choice for many datasets
with small F x hidden.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.graphfm.config import FEATURE_MLP_PATHS
from jaxfm.graphfm.signnet import SignNet, pe_column_mask

__all__ = ["FeatureMLPs", "NodeTokenizer", "row_datasets"]


def row_datasets(group_sizes: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
    """Dataset index of every row of a dataset-sorted packed batch, and the real-row mask.

    Args:
      group_sizes: rows per dataset (rows sorted by dataset; the tail is padding).
      num_rows: T (static).

    Returns:
      ``(dataset [T] int32, valid [T] bool)``; padding rows get dataset ``S - 1`` and
      ``valid=False``.

    Shapes:
      group_sizes ``[S]`` -> ``[T]``, ``[T]``.

    >>> ds, ok = row_datasets(jnp.array([2, 0, 1]), 4)
    >>> ds.tolist(), ok.tolist()
    ([0, 0, 2, 2], [True, True, True, False])
    """
    s = group_sizes.shape[0]
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))  # [S]
    ds = jnp.searchsorted(ends, jnp.arange(num_rows, dtype=jnp.int32), side="right")
    return jnp.minimum(ds, s - 1).astype(jnp.int32), ds < s


class FeatureMLPs(nn.Module):
    """S stacked two-layer MLPs, each row through its own dataset's MLP.

    Attributes:
      num_datasets: S.
      hidden: hidden width.
      out: output width.
      implementation: ``"ragged"`` (grouped matmul) or ``"gather"`` (per-row weight gather).
      dtype: compute dtype (parameters are float32).

    Parameters (dataset-specific, leading axis S): ``kernel_0 [S, F, hidden]``,
    ``bias_0 [S, hidden]``, ``kernel_1 [S, hidden, out]``, ``bias_1 [S, out]``.

    Shapes:
      x ``[T, F]`` rows sorted by dataset; group_sizes ``[S]`` -> ``[T, out]`` (zeros on rows
      past ``sum(group_sizes)``).
    """

    num_datasets: int
    hidden: int
    out: int
    implementation: str = "ragged"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        if self.implementation not in FEATURE_MLP_PATHS:
            raise ValueError(
                f"FeatureMLPs.implementation must be one of {FEATURE_MLP_PATHS}, "
                f"got {self.implementation!r}"
            )
        s, (t, f) = self.num_datasets, x.shape
        if group_sizes.shape != (s,):
            raise ValueError(
                f"FeatureMLPs: group_sizes must have shape ({s},), got {group_sizes.shape}"
            )
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        k0 = self.param("kernel_0", init, (s, f, self.hidden))
        b0 = self.param("bias_0", nn.initializers.zeros, (s, self.hidden))
        k1 = self.param("kernel_1", init, (s, self.hidden, self.out))
        b1 = self.param("bias_1", nn.initializers.zeros, (s, self.out))
        dtype = self.dtype or x.dtype
        k0, b0, k1, b1 = (p.astype(dtype) for p in (k0, b0, k1, b1))
        group_sizes = group_sizes.astype(jnp.int32)
        ds, valid = row_datasets(group_sizes, t)
        x = jnp.where(valid[:, None], x.astype(dtype), jnp.zeros((), dtype))

        if self.implementation == "ragged":
            h = jax.lax.ragged_dot(x, k0, group_sizes) + b0[ds]  # [T, hidden]
            h = nn.gelu(h, approximate=False)
            y = jax.lax.ragged_dot(h, k1, group_sizes) + b1[ds]  # [T, out]
        else:
            h = jnp.einsum("tf,tfh->th", x, k0[ds]) + b0[ds]  # gathers [T, F, hidden]
            h = nn.gelu(h, approximate=False)
            y = jnp.einsum("th,tho->to", h, k1[ds]) + b1[ds]
        return jnp.where(valid[:, None], y, jnp.zeros((), y.dtype))


class NodeTokenizer(nn.Module):
    """Tokens ``[FeatureMLP_dataset(x) ⊕ SignNet(pe)]`` of width D; zero on padding rows.

    Attributes:
      num_datasets: S.
      dim: D.
      pe_width: P, channels from SignNet (the feature MLP gives ``D - P``).
      feature_hidden: hidden width of the feature MLPs.
      signnet_hidden: hidden width of SignNet.
      feature_mlp: ``"ragged"`` or ``"gather"`` (see :class:`FeatureMLPs`).
      dtype: compute dtype.

    Parameters: ``feature_mlp/*`` (dataset-specific, leading axis S), ``signnet/*`` (shared).

    Shapes:
      features ``[T, F]``, pe ``[T, k]``, group_sizes ``[S]``, segment_ids ``[T]`` ->
      ``[T, D]``.
    """

    num_datasets: int
    dim: int
    pe_width: int
    feature_hidden: int
    signnet_hidden: int
    feature_mlp: str = "ragged"
    dtype: Any = None

    @nn.compact
    def __call__(self, features, pe, group_sizes, segment_ids, *, num_graphs: int):
        """``num_graphs`` (G, static) sizes the per-graph PE column mask."""
        x = FeatureMLPs(
            self.num_datasets,
            self.feature_hidden,
            self.dim - self.pe_width,
            self.feature_mlp,
            self.dtype,
            name="feature_mlp",
        )(features, group_sizes)
        mask = pe_column_mask(pe, segment_ids, num_graphs)
        p = SignNet(self.signnet_hidden, self.pe_width, self.dtype, name="signnet")(pe, mask)
        z = jnp.concatenate([x, p.astype(x.dtype)], axis=-1)  # [T, D]
        return jnp.where((segment_ids > 0)[:, None], z, jnp.zeros((), z.dtype))
