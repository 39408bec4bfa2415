"""Two-layer feed-forward block (the transformer MLP) and the activation registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "Mlp", "get_activation"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # Exact (erf) GELU: ViT (HF), BrainLM, PyTorch's nn.GELU() default.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # tanh approximation: big_vision / flax ViT, nn.GELU(approximate="tanh").
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    # scGPT's (PyTorch TransformerEncoderLayer) default.
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function registered under ``name``.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


class Mlp(nn.Module):
    """``fc2(dropout(act(fc1(x))))`` followed by dropout, applied token-wise.

    Attributes:
      hidden: width of ``fc1``.
      out: width of ``fc2``; ``None`` keeps the input width.
      activation: a key of :data:`ACTIVATIONS` (``"gelu"`` is the exact erf form).
      dropout: dropout rate after the activation and after ``fc2`` (rng stream ``"dropout"``).
      use_bias: whether ``fc1``/``fc2`` have biases.
      dtype: computation dtype (``None``: inferred from inputs and params).
      param_dtype: parameter dtype.
      kernel_init: initializer of both kernels.

    Parameters: ``fc1/{kernel,bias}`` ``[D, hidden]``, ``fc2/{kernel,bias}`` ``[hidden, out]``.

    Shapes:
      x ``[..., D]`` -> ``[..., out or D]``.
    """

    hidden: int
    out: int | None = None
    activation: str = "gelu"
    dropout: float = 0.0
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        act = get_activation(self.activation)
        dense = lambda features, name: nn.Dense(
            features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name=name,
        )
        out = self.out if self.out is not None else x.shape[-1]
        h = act(dense(self.hidden, "fc1")(x))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        y = dense(out, "fc2")(h)
        return nn.Dropout(self.dropout)(y, deterministic=deterministic)
