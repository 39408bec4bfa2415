"""Vision Transformer (Dosovitskiy et al., 2021) in Flax, matching HF ``ViTModel`` and timm.

One module reproduces both checkpoint families (``converters/vit.py`` maps their key layouts
onto this one parameter tree):

* Hugging Face ``ViTModel``: LayerNorm eps 1e-12, final ``layernorm``, ``pooler`` (Dense + tanh
  on token 0) -> ``pooler_output``; ``ViTForImageClassification`` adds a ``head`` on token 0.
* timm ``VisionTransformer``: LayerNorm eps 1e-6, fused ``qkv`` in the checkpoint (split by the
  converter), token or average pooling with optional ``fc_norm`` -> ``pre_logits`` and a
  ``head`` -> ``logits``.

Both are pre-norm encoders with exact (erf) GELU: ``h = x + Attn(LN1(x))``,
``y = h + MLP(LN2(h))``. Every encoder layer is a :class:`jaxfm.nn.TransformerLayer`, so the
same parameters also run in FIMP cross-node form (``TransformerLayer.cross_node``; see
:func:`layer_module`). Images are NHWC (``pixel_values [B, H, W, C]``).

Parameters::

    embeddings/cls_token [1, 1, D]          embeddings/position_embeddings [1, T, D]
    embeddings/patch_embeddings/projection/{kernel [p, p, C, D], bias [D]}
    encoder/layer_{i}/{attention/{query,key,value,out}, norm1, norm2, mlp/{fc1,fc2}}
    layernorm/{scale,bias}     (final norm; absent when ``final_norm=False``)
    fc_norm/{scale,bias}       (timm, optional)
    pooler/dense/{kernel,bias} (HF, optional)
    head/{kernel,bias}         (classifier, optional)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfm.foundation.family_config import checked_fields
from jaxfm.nn import ACTIVATIONS, TransformerLayer

__all__ = [
    "GLOBAL_POOLS",
    "VARIANTS",
    "ViT",
    "ViTConfig",
    "layer_module",
    "model_from_config",
    "vit_config",
]

LAYOUTS = ("hf", "timm")
GLOBAL_POOLS = ("token", "avg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """ViT architecture.

    Attributes:
      layout: ``"hf"`` or ``"timm"``: names the optional outputs (HF ``layer0_query`` ... vs
        timm ``layer0_qkv``) and is recorded for provenance.
      image_size: ``(H, W)`` the position embeddings were trained for.
      patch_size: square patch side p (conv kernel = stride).
      num_channels: input channels C.
      hidden_size: D.
      num_layers: encoder layers.
      num_heads: attention heads H.
      mlp_dim: MLP hidden width.
      layer_norm_eps: LayerNorm epsilon (HF 1e-12, timm 1e-6).
      activation: MLP activation (a key of :data:`jaxfm.nn.ACTIVATIONS`; ``"gelu"`` is exact).
      class_token: prepend a learned class token.
      no_embed_class: position embeddings cover the patches only (timm ``no_embed_class``).
      final_norm: LayerNorm after the last layer (``layernorm``).
      pooler: HF pooler (Dense + tanh on token 0) -> ``pooler_output``.
      pooler_output_size: pooler width (``None`` = D).
      global_pool: ``"token"`` (token 0) or ``"avg"`` (mean of the non-class tokens) for
        ``pre_logits``.
      fc_norm: LayerNorm after pooling (timm ``fc_norm``).
      num_classes: classifier ``head`` width (0 = no head).
    """

    layout: str = "hf"
    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    class_token: bool = True
    no_embed_class: bool = False
    final_norm: bool = True
    pooler: bool = False
    pooler_output_size: int | None = None
    global_pool: str = "token"
    fc_norm: bool = False
    num_classes: int = 0

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        if self.layout not in LAYOUTS:
            raise ValueError(f"ViTConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("patch_size", "num_channels", "hidden_size", "num_layers", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ViTConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.image_size) != 2 or any(s % self.patch_size for s in self.image_size):
            raise ValueError(
                f"ViTConfig.image_size {self.image_size} must be 2 sides divisible by "
                f"patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"ViTConfig.activation must be one of {sorted(ACTIVATIONS)}, got "
                f"{self.activation!r}"
            )
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(
                f"ViTConfig.global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}"
            )
        if not self.class_token and (self.global_pool == "token" or self.pooler):
            raise ValueError("ViTConfig: global_pool='token' and the pooler need class_token=True")
        if self.num_classes < 0 or self.layer_norm_eps <= 0:
            raise ValueError("ViTConfig: num_classes must be >= 0 and layer_norm_eps > 0")

    @property
    def num_patches(self) -> int:
        return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        """Sequence length T = patches (+1 with a class token)."""
        return self.num_patches + int(self.class_token)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with ``"family": "vit"`` (the ``config.json`` of a model dir)."""
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return {"family": "vit", **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViTConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
          ValueError: unknown keys or a family other than ``"vit"``.
        """
        d = checked_fields(cls, d, "vit")
        if "image_size" in d and not isinstance(d["image_size"], int):
            d["image_size"] = tuple(d["image_size"])
        return cls(**d)


#: Size presets (ViT-Ti/S/B with 16x16 patches at 224x224, HF layout).
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "small": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
}


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """A preset from :data:`VARIANTS` with ``overrides`` applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ViT variant {name!r}; expected one of {sorted(VARIANTS)}")
    return ViTConfig(**{**VARIANTS[name], **overrides})


def layer_module(config: ViTConfig, name: str | None = None) -> TransformerLayer:
    """The encoder layer of ``config`` as a standalone module.

    Apply it with ``{"params": params["encoder"][f"layer_{i}"]}``, as ``__call__`` (self
    attention) or ``method=TransformerLayer.cross_node`` (FIMP message creation).
    """
    return TransformerLayer(
        num_heads=config.num_heads,
        mlp_dim=config.mlp_dim,
        norm="pre",
        activation=config.activation,
        layer_norm_eps=config.layer_norm_eps,
        name=name,
    )


class _Embeddings(nn.Module):
    """Patch projection, class token and position embeddings.

    Shapes:
      pixel_values ``[B, H, W, C]`` -> (tokens ``[B, T, D]``, patches ``[B, N, D]``).
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        d = cfg.hidden_size
        patches = _PatchEmbeddings(d, cfg.patch_size, name="patch_embeddings")(pixel_values)
        b = patches.shape[0]
        init = nn.initializers.normal(0.02)
        pos_len = cfg.num_patches if cfg.no_embed_class else cfg.num_tokens
        pos = self.param("position_embeddings", init, (1, pos_len, d))
        x = patches
        if cfg.no_embed_class:
            x = x + pos
        if cfg.class_token:
            cls = self.param("cls_token", init, (1, 1, d))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
        if not cfg.no_embed_class:
            x = x + pos
        return x, patches  # [B, T, D], [B, N, D]


class _PatchEmbeddings(nn.Module):
    """Conv(kernel = stride = p) on NHWC images, flattened row-major over the patch grid."""

    features: int
    patch_size: int

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        p = self.patch_size
        conv = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", name="projection")
        y = conv(pixel_values)  # [B, H/p, W/p, D]
        return y.reshape(y.shape[0], -1, y.shape[-1])  # [B, N, D]


class _Encoder(nn.Module):
    """The stack of :class:`TransformerLayer` (named ``layer_{i}``)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, return_intermediates: bool = False):
        cfg = self.config
        hidden, extras = [x], {}
        for i in range(cfg.num_layers):
            layer = layer_module(cfg, name=f"layer_{i}")
            if return_intermediates:
                extras[f"attentions_layer{i}"] = layer.attention_map(x)  # [B, H, T, T]
                if i == 0:
                    extras.update(_layer0_projections(layer, x, cfg))
            x = layer(x)
            hidden.append(x)
        return x, jnp.stack(hidden), extras  # [L+1, B, T, D]


def _layer0_projections(layer: TransformerLayer, x: jax.Array, cfg: ViTConfig) -> dict:
    """Layer-0 q/k/v projections named as in the golden files of the ``cfg.layout``."""
    q, k, v = layer.attention.project_qkv(layer.norm1(x))  # [B, T, H, Dh]
    flat = [a.reshape(*a.shape[:2], -1) for a in (q, k, v)]  # [B, T, D] (head-major)
    if cfg.layout == "timm":
        return {"layer0_qkv": jnp.concatenate(flat, axis=-1)}  # [B, T, 3D] = [q | k | v]
    return dict(zip(("layer0_query", "layer0_key", "layer0_value"), flat, strict=True))


class ViT(nn.Module):
    """Vision Transformer encoder with optional pooler / classifier head.

    Attributes:
      config: the architecture.

    Shapes:
      pixel_values ``[B, H, W, C]`` (NHWC; HF/timm NCHW inputs need
      ``.transpose(0, 2, 3, 1)``) -> outputs dict:

      * ``last_hidden_state`` ``[B, T, D]`` (after the final norm);
      * ``hidden_states`` ``[L+1, B, T, D]`` (embeddings, then each layer's output);
      * ``pooler_output`` ``[B, D']`` with ``config.pooler``;
      * ``pre_logits`` ``[B, D]`` (pooled, ``fc_norm``-ed) and ``logits`` ``[B, classes]``
        with a head;
      * with ``return_intermediates``: ``patch_embeddings [B, N, D]``,
        ``attentions_layer{i} [B, H, T, T]`` and ``layer0_query|key|value [B, T, D]`` (HF
        layout) or ``layer0_qkv [B, T, 3D]`` (timm layout).
    """

    config: ViTConfig

    def setup(self):
        cfg = self.config
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        ln = lambda: nn.LayerNorm(epsilon=cfg.layer_norm_eps)
        if cfg.final_norm:
            self.layernorm = ln()
        if cfg.fc_norm:
            self.fc_norm = ln()
        if cfg.pooler:
            self.pooler = _Pooler(cfg.pooler_output_size or cfg.hidden_size)
        if cfg.num_classes:
            self.head = nn.Dense(cfg.num_classes)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """Patch + class-token + position embeddings (the FIMP-ViT tokenizer).

        Shapes:
          pixel_values ``[B, H, W, C]`` -> ``[B, T, D]``.
        """
        return self.embeddings(self._check_input(pixel_values))[0]

    def _check_input(self, pixel_values: jax.Array) -> jax.Array:
        cfg = self.config
        expected = (*cfg.image_size, cfg.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"ViT: pixel_values must be NHWC [B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}], got {tuple(pixel_values.shape)} (NCHW inputs need "
                ".transpose(0, 2, 3, 1))"
            )
        return pixel_values

    def __call__(
        self, pixel_values: jax.Array, *, return_intermediates: bool = False
    ) -> dict[str, jax.Array]:
        """Runs the encoder (see the class docstring for the outputs).

        Args:
          pixel_values: NHWC images.
          return_intermediates: also return patch embeddings, attention probabilities and the
            layer-0 projections. Static.
        """
        cfg = self.config
        x, patches = self.embeddings(self._check_input(pixel_values))
        x, hidden, extras = self.encoder(x, return_intermediates=return_intermediates)
        last = self.layernorm(x) if cfg.final_norm else x
        out = {"last_hidden_state": last, "hidden_states": hidden}
        if cfg.pooler:
            out["pooler_output"] = self.pooler(last[:, 0])
        if cfg.num_classes or cfg.layout == "timm":
            prefix = int(cfg.class_token)
            pooled = last[:, 0] if cfg.global_pool == "token" else last[:, prefix:].mean(axis=1)
            pooled = self.fc_norm(pooled) if cfg.fc_norm else pooled
            out["pre_logits"] = pooled
            if cfg.num_classes:
                out["logits"] = self.head(pooled)
        if return_intermediates:
            out["patch_embeddings"] = patches
            out.update(extras)
        return out


class _Pooler(nn.Module):
    """HF ``ViTPooler``: ``tanh(dense(token_0))``."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(nn.Dense(self.features, name="dense")(x))


def model_from_config(config: Mapping[str, Any]) -> ViT:
    """Builds :class:`ViT` from a ``config.json`` dict (:meth:`ViTConfig.to_dict` form)."""
    return ViT(config=ViTConfig.from_dict(config))
