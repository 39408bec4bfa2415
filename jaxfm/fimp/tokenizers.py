"""Node tokenizers (FIMP eq. 5): ``T(x_v) = [ W x_{v,i}  ⊕  p_i ]_{i=1..F}``.

Each tokenizer turns one node's raw features into a sequence of feature tokens and returns
``(tokens [N, L, D], token_mask [N, L])``; tokens at invalid positions are zero.

* :class:`GeneTokenizer`: ``W x`` projects a gene's scalar expression value, ``p_i`` is a learned
  gene-identity embedding (``gene_embedding``, loadable from scGPT / GenePT); concat or sum.
* :class:`ImageTokenizer`: ViT patches, ``W`` = ``patch_projection``, ``p_i`` = fixed 2-D sinusoid.
* :class:`FMRITokenizer`: BrainLM patches of 20 timepoints, ``W`` = ``patch_projection``, position =
  learned projection of the scaled XYZ (spatial) + fixed 1-D sinusoid (temporal), summed as in
  BrainLM.

Pretrained variants reuse a foundation model's own embedding layer (weights grafted in by
:mod:`jaxfm.fimp.pretrained`); the wrapped model keeps its parameter names under one submodule:

* :class:`ViTPatchTokenizer` (FIMP-ViT): ``ViT.embed`` (patch conv + CLS + position embeddings),
  parameters ``vit/embeddings/...``.
* :class:`ScGPTTokenizer` (FIMP-scGPT): scGPT's gene encoder + value encoder (summed),
  parameters ``scgpt/{encoder,value_encoder}/...``.
* :class:`BrainLMTokenizer` (FIMP-BrainLM): BrainLM's patch + xyz projections + temporal PE per
  region, parameters ``brainlm/vit/embeddings/...`` and a new ``mask_token``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.fimp.config import FMRITokenizerConfig, GeneTokenizerConfig, ImageTokenizerConfig
from jaxfm.foundation.brainlm import BrainLM, BrainLMConfig
from jaxfm.foundation.scgpt import ScGPT, ScGPTConfig
from jaxfm.foundation.vit import ViT, ViTConfig
from jaxfm.nn.mlp import Mlp
from jaxfm.nn.posenc import sinusoidal_1d, sinusoidal_2d

__all__ = [
    "SCGPT_MASK_VALUE",
    "BrainLMTokenizer",
    "FMRITokenizer",
    "GeneTokenizer",
    "ImageTokenizer",
    "ScGPTTokenizer",
    "ViTPatchTokenizer",
    "patchify_image",
    "patchify_signal",
]

#: The expression value scGPT feeds for a masked gene (its ``mask_value`` default, -1).
SCGPT_MASK_VALUE = -1.0

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
        spatial = dense("xyz_projection")(xyz * cfg.xyz_scale)[:, None, :]  # [N, 1, D]
        temporal = jnp.asarray(sinusoidal_1d(cfg.num_patches, dim), emb.dtype)  # [P, D]
        tokens = emb + spatial + temporal
        return tokens, jnp.ones(tokens.shape[:2], bool)


class ViTPatchTokenizer(nn.Module):
    """FIMP-ViT tokens: the pretrained ViT's embeddings (patch conv + CLS + position).

    Attributes:
      config: the ViT architecture (image size, patch, channels, width).

    Parameters: ``vit/embeddings/{cls_token, position_embeddings, patch_embeddings/...}``.

    Shapes:
      images ``[N, H, W, C]`` (NHWC, the ViT's size) -> tokens ``[N, T, D]`` (T = patches + CLS),
      token_mask all True.
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images, *, deterministic: bool = True):
        del deterministic  # the ViT embeddings have no dropout
        tokens = ViT(self.config, name="vit").embed(jnp.asarray(images))  # [N, T, D]
        return tokens, jnp.ones(tokens.shape[:2], bool)


class ScGPTTokenizer(nn.Module):
    """FIMP-scGPT tokens: ``GeneEncoder(gene) + ValueEncoder(value)`` (scGPT's input embedding).

    Dataset gene ids are mapped to checkpoint vocabulary ids through ``gene_vocab_ids``; a masked
    value (``value_mask``) is fed as scGPT's mask value (-1), as in its masked-value pretraining
    (no new parameters).

    Attributes:
      config: the scGPT architecture.
      gene_vocab_ids: dataset gene index -> vocabulary id (``None``: ids already are).
      mask_value: the value fed for masked genes.

    Parameters: ``scgpt/encoder/{embedding, enc_norm}``, ``scgpt/value_encoder/...``.

    Shapes:
      gene_ids ``[N, L]`` int; values ``[N, L]``; token_mask ``[N, L]`` bool; value_mask
      ``[N, L]`` bool -> tokens ``[N, L, D]`` (zero at invalid positions), token_mask.
    """

    config: ScGPTConfig
    gene_vocab_ids: tuple[int, ...] | None = None
    mask_value: float = SCGPT_MASK_VALUE

    @nn.compact
    def __call__(self, gene_ids, values, token_mask, value_mask=None, *, deterministic=True):
        cfg = self.config
        token_mask = jnp.asarray(token_mask, bool)
        ids = jnp.where(token_mask, jnp.asarray(gene_ids), 0)
        if self.gene_vocab_ids is not None:
            table = jnp.asarray(self.gene_vocab_ids, jnp.int32)  # [G] dataset -> vocab
            ids = table[ids]
        ids = jnp.where(token_mask, ids, cfg.pad_token_id)
        values = jnp.asarray(values, jnp.float32)
        if value_mask is not None:
            values = jnp.where(value_mask, jnp.float32(self.mask_value), values)
        values = jnp.where(token_mask, values, jnp.float32(cfg.pad_value))
        emb = ScGPT(cfg, name="scgpt").embed(ids, values, deterministic=deterministic)
        tokens = emb["input_embeddings"]  # [N, L, D]
        tokens = jnp.where(token_mask[..., None], tokens, jnp.zeros((), tokens.dtype))
        return tokens, token_mask


class BrainLMTokenizer(nn.Module):
    """FIMP-BrainLM tokens of one region: BrainLM's patch + xyz projections + temporal PE.

    A masked patch (``patch_mask``) has its signal zeroed before the projection and a learned
    ``mask_token`` added (BrainLM drops masked tokens instead, which a per-region node sequence
    cannot), so its token carries position (xyz, time) but no signal.

    Attributes:
      config: the BrainLM architecture.

    Parameters: ``brainlm/vit/embeddings/{signal_embedding_projection, xyz_embedding_projection,
    cls_token}`` (the CLS token is unused), ``mask_token [H]``.

    Shapes:
      signal ``[N, T]`` (T a multiple of the patch size); xyz ``[N, 3]``; patch_mask ``[N, T/P]``
      bool -> tokens ``[N, T/P, H]``, token_mask all True.
    """

    config: BrainLMConfig

    @nn.compact
    def __call__(self, signal, xyz, patch_mask=None, *, deterministic: bool = True):
        cfg = self.config
        signal, xyz = jnp.asarray(signal, jnp.float32), jnp.asarray(xyz, jnp.float32)
        p = cfg.timepoint_patching_size
        if signal.ndim != 2 or signal.shape[1] % p:
            raise ValueError(
                f"BrainLMTokenizer: signal must be [N, T] with T a multiple of the checkpoint's "
                f"timepoint_patching_size {p}, got {signal.shape}"
            )
        mask_token = self.param("mask_token", _EMBED_INIT, (cfg.hidden_size,))
        if patch_mask is not None:
            keep = ~jnp.repeat(jnp.asarray(patch_mask, bool), p, axis=1)  # [N, T]
            signal = jnp.where(keep, signal, 0.0)
        brainlm = BrainLM(cfg, name="brainlm")
        # One node per region: B = N recordings of V = 1 region each.
        tokens = brainlm.embed_tokens(signal[:, None], xyz[:, None], deterministic=deterministic)
        tokens = tokens[:, 0]  # [N, T/P, H]
        if patch_mask is not None:
            tokens = tokens + jnp.where(patch_mask[..., None], mask_token, 0.0)
        return tokens, jnp.ones(tokens.shape[:2], bool)
