"""Model directories: a Flax parameter tree as safetensors (flattened `/` paths) + config.json.

This is the format converters write and trained FIMP models are saved in. Writing is atomic: the
files go to a temporary sibling directory that is renamed into place only when complete, so a
crash never leaves a half-written model directory (an existing one is replaced only at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

__all__ = ["flatten_params", "load_model_dir", "save_model_dir", "unflatten_params"]

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


def flatten_params(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> ``{"a/b/c": array}``."""
    flat = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"flatten_params: parameter name {key!r} must not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_params(flat: dict[str, Any]) -> dict:
    """``{"a/b/c": array}`` -> nested dict."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_model_dir(path: str | os.PathLike, params: dict, config: dict) -> Path:
    """Atomically writes ``params`` (nested dict) and ``config`` (JSON-able) to dir ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        flat = {k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}
        save_file(flat, str(tmp / PARAMS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_model_dir(path: str | os.PathLike) -> tuple[dict, dict]:
    """Reads a model directory written by :func:`save_model_dir`: ``(params, config)``."""
    path = Path(path)
    for name in (PARAMS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"model directory {path}: missing {name}")
    try:
        flat = load_file(str(path / PARAMS_FILE))
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        raise ValueError(f"model directory {path}: {PARAMS_FILE} is unreadable ({e})") from e
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"model directory {path}: {CONFIG_FILE} is not valid JSON ({e})") from e
    return unflatten_params(flat), config
