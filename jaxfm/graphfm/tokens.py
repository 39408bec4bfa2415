"""GraphFM node tokens: ``z_i = [ MLP_dataset(x_i) ⊕ SignNet(PE_i) ]``.

Per-dataset feature MLPs: the weights of all S datasets are stacked (``[S, F, hidden]``,
``[S, hidden, D_x]``) and applied to the dataset-sorted rows of a packed batch with ONE grouped
matmul, ``jax.lax.ragged_dot`` (``group_sizes`` = rows per dataset): each row costs one
dataset's matmul, not S of them. Rows past ``sum(group_sizes)`` (padding) come out zero.

SignNet (Lim et al. 2022): eigenvectors are only defined up to sign, so each eigenvector's
entry ``v_ij`` goes through ``phi(v) + phi(-v)`` (a small MLP on the scalar, with the
eigenvector index as a learned embedding), the k results are summed, and ``rho`` maps the sum to
``pe_width`` channels. Flipping the sign of any eigenvector leaves the token unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["FeatureMLPs", "NodeTokenizer", "SignNet"]


class FeatureMLPs(nn.Module):
    """S stacked two-layer MLPs applied per dataset group with ``ragged_dot``.

    Parameters (dataset-specific, leading axis S): ``kernel_0 [S, F, hidden]``,
    ``bias_0 [S, hidden]``, ``kernel_1 [S, hidden, out]``, ``bias_1 [S, out]``.

    Shapes:
      x ``[T, F]`` rows sorted by dataset; group_sizes ``[S]`` -> ``[T, out]``.
    """

    num_datasets: int
    hidden: int
    out: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x, group_sizes):
        s, f = self.num_datasets, x.shape[-1]
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        k0 = self.param("kernel_0", init, (s, f, self.hidden))
        b0 = self.param("bias_0", nn.initializers.zeros, (s, self.hidden))
        k1 = self.param("kernel_1", init, (s, self.hidden, self.out))
        b1 = self.param("bias_1", nn.initializers.zeros, (s, self.out))
        dtype = self.dtype or x.dtype
        group_sizes = group_sizes.astype(jnp.int32)
        # Dataset id of every row (padding rows past the groups get id S -> zero bias below).
        row_ds = jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(x.shape[0]), side="right")
        valid = row_ds < s
        row_ds = jnp.minimum(row_ds, s - 1)

        def bias(b):
            return jnp.where(valid[:, None], b[row_ds], 0).astype(dtype)

        h = jax.lax.ragged_dot(x.astype(dtype), k0.astype(dtype), group_sizes) + bias(b0)
        h = nn.gelu(h, approximate=False)
        return jax.lax.ragged_dot(h, k1.astype(dtype), group_sizes) + bias(b1)


class SignNet(nn.Module):
    """Sign-invariant encoder of Laplacian eigenvectors: ``rho(sum_j phi(v_j) + phi(-v_j))``.

    Shapes: pe ``[T, k]`` -> ``[T, out]``.
    """

    hidden: int
    out: int
    dtype: Any = None

    @nn.compact
    def __call__(self, pe):
        k = pe.shape[1]
        index = self.param("eig_index", nn.initializers.normal(0.02), (k, self.hidden))
        phi_in = nn.Dense(self.hidden, dtype=self.dtype, name="phi_in")
        phi_out = nn.Dense(self.hidden, dtype=self.dtype, name="phi_out")

        def phi(v):  # [T, k] -> [T, k, hidden]
            h = phi_in(v[..., None]) + index.astype(phi_in.dtype or v.dtype)
            return phi_out(nn.gelu(h, approximate=False))

        pe = pe.astype(self.dtype or pe.dtype)
        h = (phi(pe) + phi(-pe)).sum(axis=1)  # [T, hidden], invariant to v_j -> -v_j
        h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="rho_in")(h), approximate=False)
        return nn.Dense(self.out, dtype=self.dtype, name="rho_out")(h)


class NodeTokenizer(nn.Module):
    """Tokens ``[FeatureMLP_dataset(x) ⊕ SignNet(pe)]`` of width D; zero on padding rows."""

    num_datasets: int
    dim: int
    pe_width: int
    feature_hidden: int
    signnet_hidden: int
    dtype: Any = None

    @nn.compact
    def __call__(self, features, pe, group_sizes, row_mask):
        x = FeatureMLPs(
            self.num_datasets,
            self.feature_hidden,
            self.dim - self.pe_width,
            self.dtype,
            name="feature_mlp",
        )(features, group_sizes)
        p = SignNet(self.signnet_hidden, self.pe_width, self.dtype, name="signnet")(pe)
        z = jnp.concatenate([x, p.astype(x.dtype)], axis=-1)
        return jnp.where(row_mask[:, None], z, 0)
