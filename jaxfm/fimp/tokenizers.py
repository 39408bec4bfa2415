"""Node tokenizers (FIMP eq. 5): ``T(x_v) = [ W x_{v,i}  ⊕  p_i ]_{i=1..F}``.

Each tokenizer turns one node's raw features into a sequence of feature tokens and returns
``(tokens [N, L, D], token_mask [N, L])``; tokens at invalid positions are zero.

* :class:`GeneTokenizer`: ``W x`` projects a gene's scalar expression value, ``p_i`` is a learned
  gene-identity embedding (``gene_embedding``, loadable from scGPT / GenePT); concat or sum.
* :class:`ImageTokenizer`: ViT patches, ``W`` = ``patch_projection``, ``p_i`` = fixed 2-D sinusoid.
* :class:`FMRITokenizer`: BrainLM patches of 20 timepoints, ``W`` = ``patch_projection``, position =
  learned XYZ projection (spatial) + fixed 1-D sinusoid (temporal), summed as in BrainLM.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.fimp.config import FMRITokenizerConfig, GeneTokenizerConfig, ImageTokenizerConfig
from jaxfm.nn.mlp import Mlp
from jaxfm.nn.posenc import sinusoidal_1d, sinusoidal_2d

__all__ = ["FMRITokenizer", "GeneTokenizer", "ImageTokenizer", "patchify_image", "patchify_signal"]

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def _resolve_dim(config, dim: int | None) -> int:
    d = dim if dim is not None else config.dim
    if d is None:
        raise ValueError(f"{type(config).__name__}: no token dim (set config.dim or pass dim=)")
    if config.dim is not None and d != config.dim:
        raise ValueError(f"{type(config).__name__}: dim={d} != config.dim={config.dim}")
    return d


def patchify_image(images: jax.Array, patch_size: int) -> jax.Array:
    """Cuts NHWC images into non-overlapping ``p x p`` patches in row-major patch order.

    Patch ``(i, j)`` is token ``i * (W // p) + j`` and holds pixels
    ``images[:, i*p:(i+1)*p, j*p:(j+1)*p, :]`` flattened in ``(row, col, channel)`` order, the
    order of a flattened ``[p, p, C, D]`` conv kernel (ViT patch embedding as a Dense).

    Shapes:
      images ``[N, H, W, C]`` -> ``[N, (H/p) * (W/p), p * p * C]``.
    """
    n, h, w, c = images.shape
    p = patch_size
    x = images.reshape(n, h // p, p, w // p, p, c)  # [N, gh, p, gw, p, C]
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [N, gh, gw, p, p, C]
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def patchify_signal(signal: jax.Array, patch_size: int) -> jax.Array:
    """Cuts ``[N, T]`` signals into consecutive patches: ``[N, T / patch_size, patch_size]``."""
    n, t = signal.shape
    return signal.reshape(n, t // patch_size, patch_size)


class GeneTokenizer(nn.Module):
    """Gene tokens: value embedding ⊕ gene embedding (eq. 5 for expression profiles).

    Attributes:
      config: the tokenizer config.
      dim: token width D (``None``: ``config.dim``).
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Parameters: ``gene_embedding/embedding [num_genes, De]``, optional
    ``gene_projection`` (De -> gene share), optional ``gene_norm``, ``value_encoder`` (a Dense, or
    an :class:`~jaxfm.nn.Mlp` with ``fc1``/``fc2``), optional ``value_norm``,
    ``mask_value_embedding [value share]``. Shares: concat D/2 + D/2, sum D + D.

    Shapes:
      gene_ids ``[N, L]`` int; values ``[N, L]`` float; token_mask ``[N, L]`` bool; value_mask
      ``[N, L]`` bool (True = value hidden, replaced by the learned mask embedding) ->
      tokens ``[N, L, D]``, token_mask ``[N, L]``.
    """

    config: GeneTokenizerConfig
    dim: int | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, gene_ids, values, token_mask, value_mask=None):
        cfg = self.config
        dim = _resolve_dim(cfg, self.dim)
        if cfg.combine == "concat":
            d_gene, d_value = dim // 2, dim - dim // 2
        else:
            d_gene = d_value = dim
        token_mask = jnp.asarray(token_mask, bool)
        dense = lambda f, name: nn.Dense(
            f, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        norm = lambda name: nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        # p_i: gene identity embedding (padding ids clipped to 0, then zeroed below).
        ids = jnp.where(token_mask, gene_ids, 0)
        table_dim = cfg.gene_embedding_dim or d_gene
        gene = nn.Embed(
            cfg.num_genes,
            table_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=_EMBED_INIT,
            name="gene_embedding",
        )(ids)  # [N, L, De]
        if table_dim != d_gene:
            gene = dense(d_gene, "gene_projection")(gene)
        if cfg.embedding_norm:
            gene = norm("gene_norm")(gene)

        # W x_{v,i}: projection of the scalar expression value.
        x = values[..., None].astype(self.dtype or jnp.float32)  # [N, L, 1]
        if cfg.value_hidden is None:
            val = dense(d_value, "value_encoder")(x)
        else:
            val = Mlp(
                hidden=cfg.value_hidden,
                out=d_value,
                activation="relu",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="value_encoder",
            )(x)
        if cfg.embedding_norm:
            val = norm("value_norm")(val)
        # Created unconditionally so one parameter tree serves masked and unmasked calls.
        mask_emb = self.param("mask_value_embedding", _EMBED_INIT, (d_value,), self.param_dtype)
        if value_mask is not None:
            # Masked value prediction: the hidden value is replaced by a learned embedding.
            val = jnp.where(value_mask[..., None], mask_emb.astype(val.dtype), val)

        # Eq. 5: concatenation (paper) or sum (scGPT).
        tokens = jnp.concatenate([val, gene], -1) if cfg.combine == "concat" else val + gene
        tokens = jnp.where(token_mask[..., None], tokens, jnp.zeros((), tokens.dtype))
        return tokens, token_mask


class ImageTokenizer(nn.Module):
    """ViT patch tokens with a fixed 2-D sinusoidal position encoding (eq. 5 for images).

    Attributes:
      config: the tokenizer config.
      dim: token width D (``None``: ``config.dim``).
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Parameters: ``patch_projection/{kernel [p*p*C, Dp], bias}`` where ``Dp = D - pe_dim``
    (concat) or ``D`` (sum). Patch flattening order: see :func:`patchify_image`.

    Shapes:
      images ``[N, H, W, C]`` (NHWC) -> tokens ``[N, (H/p)(W/p), D]``, token_mask all True.
    """

    config: ImageTokenizerConfig
    dim: int | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        dim = _resolve_dim(cfg, self.dim)
        expected = (*cfg.image_size, cfg.channels)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"ImageTokenizer: images must be [N, {expected}], got {images.shape}")
        pe_dim = cfg.resolved_pe_dim(dim)
        d_patch = dim if cfg.combine == "sum" else dim - pe_dim
        patches = patchify_image(images, cfg.patch_size)  # [N, P, p*p*C]
        emb = nn.Dense(
            d_patch, dtype=self.dtype, param_dtype=self.param_dtype, name="patch_projection"
        )(patches)  # [N, P, Dp]
        pe = jnp.asarray(sinusoidal_2d(*cfg.grid, pe_dim), emb.dtype)  # [P, pe_dim]
        pe = jnp.broadcast_to(pe, (*emb.shape[:2], pe_dim))
        tokens = jnp.concatenate([emb, pe], -1) if cfg.combine == "concat" else emb + pe
        return tokens, jnp.ones(tokens.shape[:2], bool)


class FMRITokenizer(nn.Module):
    """BrainLM tokens of one brain region: patch projection + spatial + temporal encodings.

    Attributes:
      config: the tokenizer config.
      dim: token width D (``None``: ``config.dim``).
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Parameters: ``patch_projection`` (patch_size -> D), ``xyz_projection`` (3 -> D),
    ``mask_token [D]``.

    Shapes:
      signal ``[N, T]`` with ``T = patch_size * num_patches``; xyz ``[N, 3]``; patch_mask
      ``[N, P]`` bool (True = masked, its projection replaced by ``mask_token``) ->
      tokens ``[N, P, D]``, token_mask all True.
    """

    config: FMRITokenizerConfig
    dim: int | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, signal, xyz, patch_mask=None):
        cfg = self.config
        dim = _resolve_dim(cfg, self.dim)
        if signal.ndim != 2 or signal.shape[1] != cfg.num_timepoints:
            raise ValueError(
                f"FMRITokenizer: signal must be [N, {cfg.num_timepoints}], got {signal.shape}"
            )
        dense = lambda name: nn.Dense(
            dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        patches = patchify_signal(signal, cfg.patch_size)  # [N, P, patch_size]
        emb = dense("patch_projection")(patches)  # [N, P, D]
        mask_token = self.param("mask_token", _EMBED_INIT, (dim,), self.param_dtype)
        if patch_mask is not None:
            emb = jnp.where(patch_mask[..., None], mask_token.astype(emb.dtype), emb)
        spatial = dense("xyz_projection")(xyz)[:, None, :]  # [N, 1, D]
        temporal = jnp.asarray(sinusoidal_1d(cfg.num_patches, dim), emb.dtype)  # [P, D]
        tokens = emb + spatial + temporal
        return tokens, jnp.ones(tokens.shape[:2], bool)
