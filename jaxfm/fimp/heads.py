"""Task heads on FIMP outputs. Heads compute in float32 whatever the trunk's dtype."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "ClassificationHead",
    "MaskedValueHead",
    "NodeEmbeddingHead",
    "PatchReconstructionHead",
]


class MaskedValueHead(nn.Module):
    """Predicts one scalar per token (masked gene-expression values).

    Parameters: ``dense/{kernel [D, 1], bias}``.

    Shapes:
      outputs["tokens"] ``[N, L, D]`` -> ``[N, L]`` float32.
    """

    @nn.compact
    def __call__(self, outputs: Mapping[str, jax.Array]) -> jax.Array:
        x = outputs["tokens"].astype(jnp.float32)
        return nn.Dense(1, name="dense")(x)[..., 0]


class ClassificationHead(nn.Module):
    """Node classification from the pooled node embedding.

    Attributes:
      num_classes: C.

    Parameters: ``dense/{kernel [D, C], bias [C]}``.

    Shapes:
      outputs["node_embedding"] ``[N, D]`` -> logits ``[N, C]`` float32.
    """

    num_classes: int

    @nn.compact
    def __call__(self, outputs: Mapping[str, jax.Array]) -> jax.Array:
        x = outputs["node_embedding"].astype(jnp.float32)
        return nn.Dense(self.num_classes, name="dense")(x)


class PatchReconstructionHead(nn.Module):
    """Reconstructs each fMRI time patch from its token.

    Attributes:
      patch_size: timepoints per patch.

    Parameters: ``dense/{kernel [D, patch_size], bias}``.

    Shapes:
      outputs["tokens"] ``[N, P, D]`` -> ``[N, P, patch_size]`` float32.
    """

    patch_size: int

    @nn.compact
    def __call__(self, outputs: Mapping[str, jax.Array]) -> jax.Array:
        x = outputs["tokens"].astype(jnp.float32)
        return nn.Dense(self.patch_size, name="dense")(x)


class NodeEmbeddingHead(nn.Module):
    """The pooled node embedding (zero-shot use), optionally linearly projected.

    Attributes:
      features: output width; ``None`` returns the embedding unchanged (no parameters).

    Shapes:
      outputs["node_embedding"] ``[N, D]`` -> ``[N, features or D]`` float32.
    """

    features: int | None = None

    @nn.compact
    def __call__(self, outputs: Mapping[str, jax.Array]) -> jax.Array:
        x = outputs["node_embedding"].astype(jnp.float32)
        return x if self.features is None else nn.Dense(self.features, name="dense")(x)
