"""Flax BrainLM: ``BrainLMForPretraining`` of github.com/vandijklab/BrainLM (Caro et al., 2024).

A recording is ``signal_vectors [B, V, T]`` (V brain regions / voxels, T time points) with region
coordinates ``xyz_vectors [B, V, 3]``. The model is a masked autoencoder:

1. **Embeddings** (``vit/embeddings``): each region's signal is cut into ``T/P`` patches of
   ``P = timepoint_patching_size`` consecutive time points; token ``(v, t)`` is
   ``signal_embedding_projection(patch_{v,t}) + xyz_embedding_projection(xyz_v) + pe[t]`` with
   BrainLM's *interleaved* sinusoidal encoding of the time-patch index (``pe[t, 2i] = sin(t w_i)``,
   ``pe[t, 2i+1] = cos(t w_i)``, ``w_i = 10000^(-2i/H)``; no learned position embedding); tokens
   are flattened voxel-major (token ``v * T/P + t``).
2. **Masking** from ``noise [B, S]``: ``ids_shuffle = argsort(noise)`` (ascending, stable), the
   first ``len_keep = int(S * (1 - mask_ratio))`` are kept *in that shuffled order*,
   ``ids_restore = argsort(ids_shuffle)``, ``mask`` = 1 for removed tokens (original order).
   The CLS token is prepended after masking (no PE / xyz).
3. **Encoder** (``vit/encoder/layer_i``): transformers' ``NystromformerLayer`` (post-norm, exact
   GELU, LayerNorm eps 1e-12, depthwise value convolution along the token order as fed, see
   :mod:`jaxfm.foundation.nystrom`), then ``vit/layernorm``.
4. **Decoder** (``decoder``): ``decoder_embed`` on every encoder token, ``mask_token`` for the
   removed ones, unshuffled with ``ids_restore``, ``+ decoder_xyz_projection(xyz) + pe[t]``,
   CLS prepended, Nystromformer layers, ``decoder_norm``, ``decoder_pred1`` -> LeakyReLU(0.1) ->
   ``decoder_pred2`` (-> tanh), CLS dropped: ``logits [B, V, T/P, P]``.
5. **Loss**: MSE (or MAE) over the masked patches, ``sum(err * mask) / sum(mask)`` with the mask
   repeated over the P time points of a patch.

Parameter tree (names follow the PyTorch state dict): ``vit/embeddings/{cls_token,
signal_embedding_projection, xyz_embedding_projection}``, ``vit/encoder/layer_i/...``,
``vit/layernorm``, ``decoder/{mask_token, decoder_embed, decoder_layers_i/..., decoder_norm,
decoder_xyz_projection, decoder_pred1, decoder_pred2}``. The ``(5000, H)`` PE buffers of the
checkpoint are recomputed, not stored.

FIMP-BrainLM uses :meth:`BrainLM.embed_tokens` (one node per region, ``T/P`` tokens each) and
:meth:`BrainLM.cross_node` (the encoder layers in cross-node form).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfm.foundation.family_config import checked_fields
from jaxfm.foundation.nystrom import HF_ACTIVATIONS, NystromformerLayer

__all__ = [
    "FAMILY",
    "LOSS_FNS",
    "BrainLM",
    "BrainLMConfig",
    "BrainLMDecoder",
    "BrainLMEmbeddings",
    "BrainLMModel",
    "masked_loss",
    "model_from_config",
    "random_masking",
    "temporal_encoding",
]

FAMILY = "brainlm"
LOSS_FNS = ("mse", "mae")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BrainLMConfig:
    """Architecture of ``BrainLMForPretraining`` (field names and defaults of its config.json).

    Attributes:
      hidden_size: encoder width H.
      num_hidden_layers: encoder layers.
      num_attention_heads: encoder heads.
      intermediate_size: encoder feed-forward width.
      hidden_act: transformers activation name (``"gelu"`` = exact erf GELU).
      hidden_dropout_prob: dropout after the dense projections of every layer.
      layer_norm_eps: every LayerNorm (layers, ``vit.layernorm``, ``decoder_norm``).
      decoder_hidden_size: decoder width; must equal ``hidden_size`` (the reference sizes the
        decoder's xyz projection and PE with ``hidden_size`` and crashes otherwise).
      decoder_num_hidden_layers: decoder layers.
      decoder_num_attention_heads: decoder heads.
      decoder_intermediate_size: decoder feed-forward width.
      num_brain_voxels: V of the training data (informational: V is read from the inputs).
      num_timepoints_per_voxel: T of the training data (informational).
      timepoint_patching_size: P, time points per token.
      mask_ratio: fraction of tokens removed; ``len_keep = int(S * (1 - mask_ratio))``.
      use_tanh_decoder: tanh on the predictions.
      loss_fn: ``"mse"`` or ``"mae"``.
      segment_means_seq_len: Nystromformer constant; exact softmax iff == ``num_landmarks``.
      num_landmarks: Nystrom landmarks.
      conv_kernel_size: odd kernel of the depthwise value convolution, or ``None``.
      inv_coeff_init_option: pinv initialisation: False = transformers' ``"original"`` (global
        max column sum), True = the exact per-matrix ``1 / ||A||_1`` (transformers intends this
        but its ``config[...]`` lookup fails; no released config sets it).
      pe_max_len: rows of the sinusoidal PE buffer (limits T/P).
      pe_dropout: dropout after adding the PE (``PositionalEncoding``'s fixed 0.1).
    """

    hidden_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 4
    decoder_num_attention_heads: int = 8
    decoder_intermediate_size: int = 1024
    num_brain_voxels: int = 424
    num_timepoints_per_voxel: int = 490
    timepoint_patching_size: int = 49
    mask_ratio: float = 0.5
    use_tanh_decoder: bool = False
    loss_fn: str = "mse"
    segment_means_seq_len: int = 64
    num_landmarks: int = 64
    conv_kernel_size: int | None = 65
    inv_coeff_init_option: bool = False
    pe_max_len: int = 5000
    pe_dropout: float = 0.1

    def __post_init__(self):
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"BrainLMConfig: {msg}")

        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "decoder_hidden_size",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
            "num_brain_voxels",
            "num_timepoints_per_voxel",
            "timepoint_patching_size",
            "segment_means_seq_len",
            "num_landmarks",
            "pe_max_len",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive int, got {value!r}",
            )
        need(
            isinstance(self.decoder_num_hidden_layers, int) and self.decoder_num_hidden_layers >= 0,
            f"decoder_num_hidden_layers must be an int >= 0, got "
            f"{self.decoder_num_hidden_layers!r}",
        )
        need(
            self.hidden_size % self.num_attention_heads == 0,
            f"hidden_size {self.hidden_size} must be divisible by num_attention_heads "
            f"{self.num_attention_heads}",
        )
        need(
            self.decoder_hidden_size % self.decoder_num_attention_heads == 0,
            f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by "
            f"decoder_num_attention_heads {self.decoder_num_attention_heads}",
        )
        need(
            self.decoder_hidden_size == self.hidden_size,
            f"decoder_hidden_size ({self.decoder_hidden_size}) must equal hidden_size "
            f"({self.hidden_size}): BrainLM adds hidden_size-wide xyz/PE terms to decoder tokens",
        )
        need(self.hidden_size % 2 == 0, f"hidden_size must be even (PE), got {self.hidden_size}")
        need(self.decoder_hidden_size >= 2, "decoder_hidden_size must be >= 2 (pred1 is Hd // 2)")
        need(
            self.hidden_act in HF_ACTIVATIONS,
            f"hidden_act must be one of {sorted(HF_ACTIVATIONS)}, got {self.hidden_act!r}",
        )
        need(self.loss_fn in LOSS_FNS, f"loss_fn must be one of {LOSS_FNS}, got {self.loss_fn!r}")
        need(0.0 <= self.mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        need(
            self.conv_kernel_size is None
            or (isinstance(self.conv_kernel_size, int) and self.conv_kernel_size % 2 == 1),
            f"conv_kernel_size must be an odd int or None, got {self.conv_kernel_size!r}",
        )
        need(
            self.num_timepoints_per_voxel % self.timepoint_patching_size == 0,
            f"num_timepoints_per_voxel ({self.num_timepoints_per_voxel}) must be a multiple of "
            f"timepoint_patching_size ({self.timepoint_patching_size})",
        )
        for name in ("hidden_dropout_prob", "pe_dropout"):
            value = getattr(self, name)
            need(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")

    @property
    def inv_init_option(self) -> str:
        """The Nystromformer pinv initialisation name."""
        return "exact" if self.inv_coeff_init_option else "original"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict including ``"family": "brainlm"`` (the ``config.json`` of a model dir)."""
        return {"family": FAMILY, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BrainLMConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
          ValueError: for another family or a key that is not a config field (named).
        """
        return cls(**checked_fields(cls, config, FAMILY))


# ----------------------------------------------------------------------------- pure functions


def temporal_encoding(length: int, dim: int) -> np.ndarray:
    """BrainLM's sinusoidal time-patch encoding (interleaved sin/cos), float32 like its buffer.

    ``pe[t, 2i] = sin(t w_i)``, ``pe[t, 2i+1] = cos(t w_i)``, ``w_i = exp(-2i ln(10000) / dim)``
    (the angle ``t * w_i`` rounded to float32 as PyTorch computes it).

    Shapes:
      returns ``[length, dim]`` (numpy; a constant under ``jit``).
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"temporal_encoding: dim must be a positive even number, got {dim}")
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim))
    angle = np.arange(length, dtype=np.float32)[:, None] * div.astype(np.float32)  # [T, dim/2]
    pe = np.zeros((length, dim), np.float32)
    pe[:, 0::2] = np.sin(angle.astype(np.float64))
    pe[:, 1::2] = np.cos(angle.astype(np.float64))
    return pe


def random_masking(x: jax.Array, noise: jax.Array, mask_ratio: float):
    """MAE masking by sorting ``noise`` (BrainLM ``random_masking``).

    Args:
      x: token sequence.
      noise: per-token scores; the ``len_keep = int(S * (1 - mask_ratio))`` smallest are kept,
        in ascending-noise order (stable sort: ties keep token order; PyTorch's argsort is not
        stable, so compare implementations on tie-free noise).
      mask_ratio: static.

    Returns:
      ``(kept [B, K, D], mask [B, S] float32 (1 = removed), ids_restore [B, S] int32)``.
    """
    s = x.shape[1]
    len_keep = int(s * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(noise, axis=1, stable=True)  # [B, S]
    ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True)  # [B, S]
    kept = jnp.take_along_axis(x, ids_shuffle[:, :len_keep, None], axis=1)  # [B, K, D]
    mask = (ids_restore >= len_keep).astype(jnp.float32)  # [B, S]
    return kept, mask, ids_restore.astype(jnp.int32)


def masked_loss(logits: jax.Array, target: jax.Array, mask: jax.Array, loss_fn: str = "mse"):
    """``sum(err * mask) / sum(mask)`` with the patch mask repeated over the P time points.

    Shapes:
      logits, target ``[B, V, T/P, P]``; mask ``[B, V, T/P]`` -> ``()``.
    """
    if loss_fn not in LOSS_FNS:
        raise ValueError(f"masked_loss: loss_fn must be one of {LOSS_FNS}, got {loss_fn!r}")
    m = jnp.broadcast_to(mask[..., None], logits.shape).astype(logits.dtype)
    diff = logits - target
    err = diff**2 * m if loss_fn == "mse" else jnp.abs(diff * m)
    return err.sum() / m.sum()


def _patch_count(signal_shape, patch: int, max_len: int) -> int:
    if len(signal_shape) != 3:
        raise ValueError(f"BrainLM: signal_vectors must be [B, V, T], got shape {signal_shape}")
    t = signal_shape[2]
    if t % patch:
        raise ValueError(
            f"BrainLM: signal_vectors time axis ({t}) must be a multiple of "
            f"timepoint_patching_size ({patch})"
        )
    if t // patch > max_len:
        raise ValueError(f"BrainLM: {t // patch} time patches exceed pe_max_len ({max_len})")
    return t // patch


# ----------------------------------------------------------------------------- modules


def _dense(features: int, name: str | None = None, **kw) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.xavier_uniform(), name=name, **kw)


def _layers(cfg: BrainLMConfig, n: int, heads: int, intermediate: int, **kw):
    return [
        NystromformerLayer(
            num_heads=heads,
            intermediate_size=intermediate,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
            num_landmarks=cfg.num_landmarks,
            segment_means_seq_len=cfg.segment_means_seq_len,
            conv_kernel_size=cfg.conv_kernel_size,
            inv_init_option=cfg.inv_init_option,
            hidden_dropout=cfg.hidden_dropout_prob,
            **kw,
        )
        for _ in range(n)
    ]


class BrainLMEmbeddings(nn.Module):
    """Patch + xyz + temporal-PE tokens, masking, CLS (``vit/embeddings``).

    Shapes:
      ``tokens``: signal ``[B, V, T]``, xyz ``[B, V, 3]`` -> ``[B, V, T/P, H]``.
      ``__call__``: + noise ``[B, V*T/P]`` -> embeddings ``[B, 1+K, H]``.
    """

    config: BrainLMConfig
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.cls_token = self.param(
            "cls_token", nn.initializers.normal(0.02), (1, 1, cfg.hidden_size), self.param_dtype
        )
        self.signal_embedding_projection = _dense(cfg.hidden_size, **kw)
        self.xyz_embedding_projection = _dense(cfg.hidden_size, **kw)
        self.pe_dropout = nn.Dropout(cfg.pe_dropout)

    def tokens(self, signal_vectors, xyz_vectors, *, deterministic: bool = True) -> jax.Array:
        """Token embeddings before flattening and masking (FIMP-BrainLM's per-region tokens)."""
        cfg = self.config
        signal_vectors, xyz_vectors = jnp.asarray(signal_vectors), jnp.asarray(xyz_vectors)
        b, v, _ = signal_vectors.shape
        n_patch = _patch_count(signal_vectors.shape, cfg.timepoint_patching_size, cfg.pe_max_len)
        if xyz_vectors.shape != (b, v, 3):
            raise ValueError(f"BrainLM: xyz_vectors must be {(b, v, 3)}, got {xyz_vectors.shape}")
        patches = signal_vectors.reshape(b, v, n_patch, cfg.timepoint_patching_size)  # [B,V,T/P,P]
        x = self.signal_embedding_projection(patches)  # [B, V, T/P, H]
        x = x + self.xyz_embedding_projection(xyz_vectors)[:, :, None, :]
        x = x + jnp.asarray(temporal_encoding(n_patch, cfg.hidden_size), x.dtype)
        return self.pe_dropout(x, deterministic=deterministic)

    def __call__(self, signal_vectors, xyz_vectors, noise, *, deterministic: bool = True):
        """Returns ``(embeddings [B, 1+K, H], flat [B, S, H], mask [B, S], ids_restore [B, S])``."""
        x = self.tokens(signal_vectors, xyz_vectors, deterministic=deterministic)
        b, v, n_patch, h = x.shape
        flat = x.reshape(b, v * n_patch, h)  # [B, S, H] voxel-major
        noise = jnp.asarray(noise)
        if noise.shape != (b, v * n_patch):
            raise ValueError(f"BrainLM: noise must be {(b, v * n_patch)}, got {noise.shape}")
        kept, mask, ids_restore = random_masking(flat, noise, self.config.mask_ratio)
        cls = jnp.broadcast_to(self.cls_token.astype(kept.dtype), (b, 1, h))
        return jnp.concatenate([cls, kept], axis=1), flat, mask, ids_restore


class BrainLMEncoder(nn.Module):
    """``vit/encoder``: the Nystromformer layers ``layer_i``."""

    config: BrainLMConfig
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.layer = _layers(
            cfg,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(
        self, x, *, deterministic=True, output_attentions=False, output_intermediates=False
    ):
        return _run_layers(self.layer, x, deterministic, output_attentions, output_intermediates)


def _run_layers(layers, x, deterministic, output_attentions, output_intermediates):
    """Runs a layer stack; returns ``(out, hidden_states [L+1, ...], per-layer aux list)``."""
    hidden, aux = [x], []
    for layer in layers:
        res = layer(
            x,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_intermediates=output_intermediates,
        )
        x, a = res if (output_attentions or output_intermediates) else (res, {})
        hidden.append(x)
        aux.append(a)
    return x, jnp.stack(hidden), aux


class BrainLMModel(nn.Module):
    """``vit``: embeddings, encoder and the final ``layernorm``."""

    config: BrainLMConfig
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = BrainLMEmbeddings(self.config, **kw)
        self.encoder = BrainLMEncoder(self.config, **kw)
        self.layernorm = nn.LayerNorm(epsilon=self.config.layer_norm_eps, **kw)

    def __call__(self, signal_vectors, xyz_vectors, noise, **kw):
        emb, flat, mask, ids_restore = self.embeddings(
            signal_vectors, xyz_vectors, noise, deterministic=kw["deterministic"]
        )
        out, hidden, aux = self.encoder(emb, **kw)
        return {
            "embeddings_before_masking": flat,
            "mask": mask,
            "ids_restore": ids_restore,
            "hidden_states": hidden,
            "last_hidden_state": self.layernorm(out),
            "_aux": aux,
        }


class BrainLMDecoder(nn.Module):
    """``decoder``: unshuffle with mask tokens, xyz + PE, Nystromformer layers, prediction head.

    Shapes:
      latent ``[B, 1+K, H]``, xyz ``[B, V, 3]``, ids_restore ``[B, S]`` -> logits
      ``[B, V, S/V, P]``.
    """

    config: BrainLMConfig
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hd = cfg.decoder_hidden_size
        self.mask_token = self.param(
            "mask_token", nn.initializers.normal(0.02), (1, 1, hd), self.param_dtype
        )
        self.decoder_embed = _dense(hd, **kw)
        self.decoder_xyz_projection = _dense(cfg.hidden_size, **kw)
        self.pe_dropout = nn.Dropout(cfg.pe_dropout)
        self.decoder_layers = _layers(
            cfg,
            cfg.decoder_num_hidden_layers,
            cfg.decoder_num_attention_heads,
            cfg.decoder_intermediate_size,
            **kw,
        )
        self.decoder_norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, **kw)
        self.decoder_pred1 = _dense(hd // 2, **kw)
        self.decoder_pred2 = _dense(cfg.timepoint_patching_size, **kw)

    def __call__(
        self,
        latent,
        xyz_vectors,
        ids_restore,
        *,
        deterministic=True,
        output_attentions=False,
        output_intermediates=False,
    ):
        cfg = self.config
        x = self.decoder_embed(latent)  # [B, 1+K, Hd]
        b, _, hd = x.shape
        s = ids_restore.shape[1]
        v = xyz_vectors.shape[1]
        if s % v:
            raise ValueError(f"BrainLM decoder: {s} tokens are not a multiple of {v} voxels")
        n_patch = s // v
        masked = jnp.broadcast_to(self.mask_token.astype(x.dtype), (b, s - x.shape[1] + 1, hd))
        x_ = jnp.concatenate([x[:, 1:], masked], axis=1)  # [B, S, Hd] shuffled order
        x_ = jnp.take_along_axis(x_, ids_restore[:, :, None], axis=1)  # unshuffle
        x_ = x_.reshape(b, v, n_patch, hd)  # [B, V, T/P, Hd]
        x_ = x_ + self.decoder_xyz_projection(xyz_vectors)[:, :, None, :]
        x_ = x_ + jnp.asarray(temporal_encoding(n_patch, cfg.hidden_size), x_.dtype)
        x_ = self.pe_dropout(x_, deterministic=deterministic)
        x = jnp.concatenate([x[:, :1], x_.reshape(b, s, hd)], axis=1)  # [B, 1+S, Hd]
        out, hidden, aux = _run_layers(
            self.decoder_layers, x, deterministic, output_attentions, output_intermediates
        )
        y = self.decoder_pred2(nn.leaky_relu(self.decoder_pred1(self.decoder_norm(out)), 0.1))
        if cfg.use_tanh_decoder:
            y = jnp.tanh(y)
        logits = y[:, 1:].reshape(b, v, n_patch, cfg.timepoint_patching_size)  # drop CLS
        return logits, hidden, aux


class BrainLM(nn.Module):
    """``BrainLMForPretraining``: encoder (``vit``) + decoder + masked reconstruction loss.

    Attributes:
      config: the architecture.
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Shapes:
      signal_vectors ``[B, V, T]``; xyz_vectors ``[B, V, 3]``; noise ``[B, S]`` with
      ``S = V * T/P`` tokens, ``K = int(S * (1 - mask_ratio))`` kept.
    """

    config: BrainLMConfig
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.vit = BrainLMModel(self.config, **kw)
        self.decoder = BrainLMDecoder(self.config, **kw)

    def __call__(
        self,
        signal_vectors: jax.Array,
        xyz_vectors: jax.Array,
        noise: jax.Array | None = None,
        *,
        deterministic: bool = True,
        output_attentions: bool = False,
        output_intermediates: bool = False,
    ) -> dict[str, jax.Array]:
        """Masked-autoencoder forward pass.

        Args:
          signal_vectors: fMRI signals (robust-scaled per region in BrainLM's data).
          xyz_vectors: region coordinates (raw atlas mm, as BrainLM's training feeds them).
          noise: masking scores in ``[0, 1)``; ``None`` draws uniform noise from the
            ``"masking"`` rng stream. Ties are broken by token index (stable sort).
          deterministic: disables dropout when True (rng stream ``"dropout"`` otherwise).
          output_attentions: add ``attentions_layer{i}`` ``[B, H, 1+K, 1+K]`` and
            ``decoder_attentions_layer{i}`` ``[B, Hd_heads, 1+S, 1+S]`` (Nystrom path:
            ``[..., m]``). Static.
          output_intermediates: add ``layer{i}_{query,key,value}`` ``[B, 1+K, H]`` (Linear
            outputs before scaling) and ``layer{i}_value_conv`` ``[B, heads, 1+K, Dh]`` for every
            encoder layer. Static.

        Returns:
          dict with ``last_hidden_state [B, 1+K, H]`` (after ``vit.layernorm``),
          ``hidden_states [L+1, B, 1+K, H]`` (input to each layer and the last output, before
          the final LayerNorm), ``embeddings_before_masking [B, S, H]``, ``mask [B, S]`` float32
          (1 = removed), ``ids_restore [B, S]`` int32, ``decoder_hidden_states
          [Ld+1, B, 1+S, Hd]``, ``logits [B, V, T/P, P]``, ``reconstruction [B, V, T]``,
          ``loss ()`` — names as in the golden files.
        """
        signal_vectors = jnp.asarray(signal_vectors)
        if noise is None:
            b, v, t = signal_vectors.shape
            s = v * (t // self.config.timepoint_patching_size)
            noise = jax.random.uniform(self.make_rng("masking"), (b, s))
        flags = dict(
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_intermediates=output_intermediates,
        )
        out = self.vit(signal_vectors, xyz_vectors, noise, **flags)
        enc_aux = out.pop("_aux")
        logits, dec_hidden, dec_aux = self.decoder(
            out["last_hidden_state"], jnp.asarray(xyz_vectors), out["ids_restore"], **flags
        )
        target = signal_vectors.reshape(logits.shape)
        mask = out["mask"].reshape(logits.shape[:-1])
        out.update(
            decoder_hidden_states=dec_hidden,
            logits=logits,
            reconstruction=logits.reshape(signal_vectors.shape),
            loss=masked_loss(logits, target, mask, self.config.loss_fn),
        )
        for i, a in enumerate(enc_aux):
            for name, value in a.items():
                key = f"attentions_layer{i}" if name == "attentions" else f"layer{i}_{name}"
                out[key] = value
        for i, a in enumerate(dec_aux):
            if "attentions" in a:
                out[f"decoder_attentions_layer{i}"] = a["attentions"]
        return out

    def embed_tokens(self, signal_vectors, xyz_vectors, *, deterministic: bool = True):
        """Unmasked token embeddings per region (FIMP-BrainLM: a region is a node).

        Shapes:
          signal ``[B, V, T]``, xyz ``[B, V, 3]`` -> ``[B, V, T/P, H]``.
        """
        return self.vit.embeddings.tokens(signal_vectors, xyz_vectors, deterministic=deterministic)

    def encode(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """The encoder layers + ``vit.layernorm`` on given token sequences (no masking, no CLS).

        Shapes:
          tokens ``[B, S, H]`` -> ``[B, S, H]``.
        """
        out, _, _ = self.vit.encoder(tokens, deterministic=deterministic)
        return self.vit.layernorm(out)

    def cross_node(
        self,
        x: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        *,
        kv_mask: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        aggregation: str = "mean",
        edge_chunk_size: int | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Every encoder layer in FIMP cross-node form (same parameters; no final LayerNorm).

        See :meth:`jaxfm.foundation.nystrom.NystromformerLayer.cross_node` (the value convolution
        runs over each source node's token axis). With self-loops only this equals the encoder
        stack applied to each node's stream.

        Shapes:
          x ``[N, L, H]``; senders, receivers ``[E]``; kv_mask ``[N, L]``; edge_mask ``[E]`` ->
          ``[N, L, H]``.
        """
        for layer in self.vit.encoder.layer:
            x = layer.cross_node(
                x,
                senders,
                receivers,
                kv_mask=kv_mask,
                edge_mask=edge_mask,
                aggregation=aggregation,
                edge_chunk_size=edge_chunk_size,
                deterministic=deterministic,
            )
        return x


def model_from_config(config: Mapping[str, Any]) -> BrainLM:
    """Builds :class:`BrainLM` from a ``config.json`` dict (``BrainLMConfig.to_dict`` form)."""
    return BrainLM(config=BrainLMConfig.from_dict(config))
