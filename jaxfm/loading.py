"""The one model loader: any jaxfm model directory (or hub id) -> ``(model, config, params)``.

Every model directory is ``params.safetensors`` + ``config.json``, and every ``config.json`` names
its ``"family"``: ``graphfm`` (``jaxfm pretrain``), ``fimp`` (``jaxfm fimp train --save``), or a
converted foundation model ``vit`` / ``scgpt`` / ``brainlm`` (``jaxfm convert``).

Example:
  >>> model, config, params = load_model("runs/pretrain/model")  # doctest: +SKIP
  >>> out = model.apply({"params": params}, batch)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import flax.linen as nn

from jaxfm.model_dir import CONFIG_FILE, PARAMS_FILE, load_model_dir

__all__ = ["FAMILIES", "family_of", "load_model", "model_from_config", "resolve_model_dir"]

FAMILIES = ("graphfm", "fimp", "vit", "scgpt", "brainlm")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def family_of(config: dict, source: str = "config.json") -> str:
    """The ``"family"`` of a model directory's config (older GraphFM dirs: their ``graphfm`` key).

    Raises:
      ValueError: no or an unknown family (naming the known ones).
    """
    family = config.get("family") if isinstance(config, dict) else None
    if family is None and isinstance(config, dict) and "graphfm" in config:
        family = "graphfm"  # written by jaxfm < 0.2, before every config named its family
    if family not in FAMILIES:
        raise ValueError(
            f"{source}: family {family!r} is not a jaxfm model family; expected one of {FAMILIES}"
        )
    return family


def model_from_config(config: dict, source: str = "config.json") -> nn.Module:
    """The Flax module a model directory's ``config.json`` describes."""
    family = family_of(config, source)
    if family == "graphfm":
        from jaxfm.graphfm import GraphFM, GraphFMConfig

        return GraphFM(GraphFMConfig.from_dict(config["graphfm"]))
    if family == "fimp":
        from jaxfm.fimp.serialization import config_from_dict
        from jaxfm.fimp.tasks import FIMPTaskModel

        return FIMPTaskModel(
            config_from_dict(config["fimp"]), config["task"], config["num_classes"]
        )
    from jaxfm.foundation.registry import model_from_config as foundation_model

    return foundation_model(config)


def resolve_model_dir(path_or_id: str | os.PathLike) -> Path:
    """A local model directory, or a hub id (``owner/name``) fetched through huggingface_hub.

    A run's workdir (``jaxfm pretrain --workdir DIR``) is understood: a directory without
    ``config.json`` whose ``model/`` subfolder is a model directory resolves to that subfolder.
    A local path winss over a hub id of the same spelling. huggingface_hub caches downloads and,
    with ``HF_HUB_OFFLINE=1``, serves a cached snapshot without the network.

    Raises:
      FileNotFoundError: neither a local directory nor a reachable (or cached) hub id.
    """
    path = Path(path_or_id)
    if path.is_dir():
        if (path / CONFIG_FILE).exists():
            return path
        if (path / "model" / CONFIG_FILE).exists():
            return path / "model"  # a run's workdir: its final model
        inside = sorted(str(c.parent) for c in path.glob(f"*/{CONFIG_FILE}"))
        hint = f"; model directories inside it: {', '.join(inside)}" if inside else ""
        raise FileNotFoundError(
            f"model {path}: not a model directory (no {CONFIG_FILE}); pass the folder that "
            f"holds {PARAMS_FILE} and {CONFIG_FILE}, e.g. WORKDIR/model of a training run{hint}"
        )
    text = str(path_or_id)
    if not _HUB_ID.match(text) or path.exists():
        raise FileNotFoundError(
            f"model {text}: no such directory (expected a folder with {PARAMS_FILE} and "
            f"{CONFIG_FILE}, or a hub id owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=[PARAMS_FILE, CONFIG_FILE, "*.json"]))
    except Exception as e:
        raise FileNotFoundError(
            f"model {text}: not a local directory, and the hub could not provide it "
            f"({type(e).__name__}: {str(e)[:200]}). Offline, download it first on a connected "
            f"machine (`hf download {text}`) and set HF_HUB_OFFLINE=1, or pass a local folder"
        ) from None


def load_model(
    path_or_id: str | os.PathLike, *, as_jax: bool = True
) -> tuple[nn.Module, dict, Any]:
    """Loads any jaxfm model directory.

    Args:
      path_or_id: a model directory, or a hub id ``owner/name`` (huggingface_hub, cached).
      as_jax: parameters as ``jax.Array`` (moved tensor by tensor); False keeps numpy.

    Returns:
      ``(model, config, params)``: the Flax module, the ``config.json`` dict and the parameter
      tree, ready for ``model.apply({"params": params}, ...)``.

    Raises:
      FileNotFoundError: no such directory / id, or a missing file (named).
      ValueError: an unknown family or an invalid config (naming the directory).
    """
    path = resolve_model_dir(path_or_id)
    params, config = load_model_dir(path, as_jax=as_jax)
    try:
        model = model_from_config(config, source=str(path / CONFIG_FILE))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path / CONFIG_FILE}: invalid config ({type(e).__name__}: {e})") from e
    return model, config, params
