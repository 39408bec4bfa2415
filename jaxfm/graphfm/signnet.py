"""SignNet on Laplacian eigenvector positional encodings (Lim et al. 2022; GraphFM §2.3).

The PE of node i is its row ``v_i = (v_i1, ..., v_ik)`` of the first k eigenvectors of the
normalized Laplacian ``I - D^-1/2 A D^-1/2``. An eigenvector is only defined up to sign, so the
encoder must not care about ``v_{:,j} -> -v_{:,j}``. The exact form used here:

    phi(s, j)  = W2 gelu(W1 s + e_j + b1) + b2           scalar entry s of eigenvector j -> [H]
    h_i        = sum_j  m_ij [ phi(v_ij, j) + phi(-v_ij, j) ]                               [H]
    SignNet_i  = R2 gelu(R1 h_i + c1) + c2   (= rho(h_i))                                 [P]

``phi`` is one small MLP shared by all eigenvectors; ``e_j`` (a learned embedding of the
eigenvector index) tells it which eigenvector an entry comes from. ``phi(s) + phi(-s)`` is even in
s, so flipping the sign of any eigenvector leaves every output unchanged. (This is the per-node
"DeepSets over eigenvectors" form of SignNet: phi sees one node's entry, not the whole
eigenvector through a GNN, so it is sign- but not basis-invariant for repeated eigenvalues.)

Padding columns: a graph with n < k nodes (or a subgraph) has only n eigenvectors; the pipeline
zero-pads the rest. ``m_ij`` masks them: column j is padding for graph g when it is zero on every
row of g (a real eigenvector has unit norm, so it is never all-zero). Without the mask a zero
column would add the constant ``2 phi(0, j)``, i.e. leak "how many eigenvectors exist" into every
token. :func:`pe_column_mask` computes ``m`` from the segment ids; it is itself sign-invariant.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["SignNet", "pe_column_mask"]


def pe_column_mask(pe: jax.Array, segment_ids: jax.Array, num_graphs: int) -> jax.Array:
    """True where eigenvector column j exists in the row's graph (is not zero padding).

    Args:
      pe: Laplacian PE rows of a packed batch.
      segment_ids: graph slot + 1 per row (0 = padding row).
      num_graphs: G, the number of graph slots (static).

    Returns:
      ``bool [T, k]``; False on padding rows.

    Shapes:
      pe ``[T, k]``, segment_ids ``[T]`` -> ``[T, k]``.
    """
    colmax = jax.ops.segment_max(jnp.abs(pe), segment_ids, num_segments=num_graphs + 1)  # [G+1, k]
    real = (colmax > 0).at[0].set(False)  # empty segments give -inf; slot 0 is padding
    return real[segment_ids]


class SignNet(nn.Module):
    """Sign-invariant encoder of Laplacian eigenvectors (see the module docstring for the form).

    Attributes:
      hidden: H, width of phi and of rho's hidden layer.
      out: P, output channels.
      dtype: compute dtype.

    Parameters: ``eig_index [k, H]`` (e_j), ``phi_in`` (W1, b1; Dense 1 -> H), ``phi_out`` (W2,
    b2), ``rho_in`` (R1, c1), ``rho_out`` (R2, c2).

    Shapes:
      pe ``[T, k]``, column_mask ``[T, k]`` (optional) -> ``[T, P]``.
    """

    hidden: int
    out: int
    dtype: Any = None

    @nn.compact
    def __call__(self, pe: jax.Array, column_mask: jax.Array | None = None) -> jax.Array:
        k = pe.shape[-1]
        dtype = self.dtype or pe.dtype
        index = self.param("eig_index", nn.initializers.normal(0.02), (k, self.hidden))
        phi_in = nn.Dense(self.hidden, dtype=self.dtype, name="phi_in")
        phi_out = nn.Dense(self.hidden, dtype=self.dtype, name="phi_out")

        def phi(v):  # [T, k] -> [T, k, H]
            h = phi_in(v[..., None]) + index.astype(dtype)
            return phi_out(nn.gelu(h, approximate=False))

        pe = pe.astype(dtype)
        both = phi(pe) + phi(-pe)  # [T, k, H], even in every v_ij
        if column_mask is not None:
            both = jnp.where(column_mask[..., None], both, jnp.zeros((), both.dtype))
        h = both.sum(axis=-2)  # [T, H]
        h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="rho_in")(h), approximate=False)
        return nn.Dense(self.out, dtype=self.dtype, name="rho_out")(h)
