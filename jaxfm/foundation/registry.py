"""Loading converted foundation models: dispatch a model directory to its family module."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import flax.linen as nn

from jaxfm.model_dir import CONFIG_FILE, PARAMS_FILE

__all__ = ["FAMILY_MODULES", "load_pretrained", "model_from_config"]

#: family name (``config["family"]``) -> module exposing ``model_from_config(config)``.
FAMILY_MODULES = {
    "vit": "jaxfm.foundation.vit",
    "scgpt": "jaxfm.foundation.scgpt",
    "brainlm": "jaxfm.foundation.brainlm",
}


def model_from_config(config: dict) -> nn.Module:
    """Builds the Flax module a ``config.json`` describes (dispatching on ``"family"``).

    Raises:
      ValueError: no/unknown family (lists the known ones).
    """
    family = config.get("family") if isinstance(config, dict) else None
    if family not in FAMILY_MODULES:
        raise ValueError(
            f"config family {family!r} is not a foundation model family; expected one of "
            f"{sorted(FAMILY_MODULES)}"
        )
    module = importlib.import_module(FAMILY_MODULES[family])
    return module.model_from_config(config)


def load_pretrained(path: str | os.PathLike, *, as_jax: bool = True) -> tuple[nn.Module, dict]:
    """Loads a converted model directory (``jaxfm convert ... OUT``).

    Args:
      path: the model directory (``params.safetensors`` + ``config.json``).
      as_jax: parameters as ``jax.Array`` on the default device (moved tensor by tensor, so
        peak host memory stays ~ one copy); ``False`` keeps numpy arrays.

    Returns:
      ``(model, variables)`` with ``variables = {"params": params}``, ready for
      ``model.apply(variables, ...)``.

    Raises:
      FileNotFoundError: the directory or one of its files is missing (named).
      ValueError: unreadable files or an unknown family.

    Example:
      >>> model, variables = load_pretrained("vit_out")  # doctest: +SKIP
    """
    from jaxfm.loading import load_model

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"pretrained model directory {path} does not exist (expected a directory with "
            f"{PARAMS_FILE} and {CONFIG_FILE}, as written by `jaxfm convert`)"
        )
    model, config, params = load_model(path, as_jax=as_jax)
    if config.get("family") not in FAMILY_MODULES:
        raise ValueError(
            f"model directory {path}: family {config.get('family')!r} is not a foundation model "
            f"family; expected one of {sorted(FAMILY_MODULES)}"
        )
    return model, {"params": params}
