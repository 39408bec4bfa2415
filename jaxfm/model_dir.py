"""Model directories: a Flax parameter tree as safetensors (flattened `/` paths) + config.json.

This is the format converters write and trained FIMP models are saved in. Writing is atomic: the
files go to a temporary sibling directory that is renamed into place only when complete, so a
crash never leaves a half-written model directory (an existing one is replaced only at the end).
A directory may also carry extra files (e.g. a tokenizer vocabulary) written in the same atomic
step (``save_model_dir(..., extra_files=...)``, read back with :func:`load_extra_file`).

The parameter file is written tensor by tensor (no second in-memory copy of the whole tree),
in the standard safetensors layout that ``safetensors.numpy.load_file`` reads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "CONFIG_FILE",
    "PARAMS_FILE",
    "flatten_params",
    "list_extra_files",
    "load_extra_file",
    "load_model_dir",
    "save_model_dir",
    "unflatten_params",
    "write_json_atomic",
]

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


def flatten_params(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict (or ``FrozenDict``) of arrays -> ``{"a/b/c": array}``."""
    flat = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"flatten_params: parameter name {key!r} must not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
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


_SAFETENSORS_DTYPES = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint64"): "U64",
    np.dtype("uint32"): "U32",
    np.dtype("uint16"): "U16",
    np.dtype("uint8"): "U8",
    np.dtype(bool): "BOOL",
}


def _write_safetensors(path: Path, flat: dict[str, Any]) -> None:
    """Writes ``flat`` as safetensors, one tensor at a time (bounded extra memory)."""
    header: dict[str, Any] = {}
    offset = 0
    arrays = {}
    for name in sorted(flat):
        arr = np.asarray(flat[name])
        dtype = _SAFETENSORS_DTYPES.get(arr.dtype.newbyteorder("="))
        if dtype is None:
            raise ValueError(
                f"save_model_dir: parameter {name!r} has unsupported dtype {arr.dtype}"
            )
        nbytes = math.prod(arr.shape) * arr.dtype.itemsize
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        arrays[name] = arr
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in arrays.values():
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))  # per-tensor copy
            f.write(arr.reshape(-1).view(np.uint8).data)


def _check_extra_name(name: str) -> None:
    parts = Path(name).parts
    if (
        not parts
        or Path(name).is_absolute()
        or any(p in ("..", ".") for p in parts)
        or name in (PARAMS_FILE, CONFIG_FILE)
    ):
        raise ValueError(
            f"save_model_dir: extra file name {name!r} must be a relative path inside the "
            f"directory, other than {PARAMS_FILE} and {CONFIG_FILE}"
        )


def save_model_dir(
    path: str | os.PathLike,
    params: dict,
    config: dict,
    *,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Atomically writes ``params`` (nested dict) and ``config`` (JSON-able) to dir ``path``.

    Args:
      path: the model directory (replaced as a whole if it exists).
      params: nested dict of arrays.
      config: JSON-able dict, written to ``config.json``.
      extra_files: ``{relative name: text or bytes}`` written beside them (e.g. a vocabulary).

    Raises:
      ValueError: a bad extra file name or parameter dtype; TypeError: ``config`` is not
        JSON-able. On any error ``path`` is left as it was.
    """
    path = Path(path)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        _check_extra_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        config_text = json.dumps(config, indent=2, sort_keys=True)
        _write_safetensors(tmp / PARAMS_FILE, flatten_params(params))
        (tmp / CONFIG_FILE).write_text(config_text)
        for name, content in extra_files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            elif isinstance(content, bytes | bytearray):
                target.write_bytes(bytes(content))
            else:
                raise TypeError(
                    f"save_model_dir: extra file {name!r} must be str or bytes, "
                    f"got {type(content).__name__}"
                )
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


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Writes JSON to ``path`` via a temporary file + rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def load_model_dir(path: str | os.PathLike, *, as_jax: bool = False) -> tuple[dict, dict]:
    """Reads a model directory written by :func:`save_model_dir`: ``(params, config)``.

    Tensors are read one at a time (peak memory ~ one copy of the parameters).

    Args:
      path: the model directory.
      as_jax: return ``jax.Array`` leaves (each tensor is moved to the default device as it is
        read, so host and device copies of the whole tree never coexist) instead of numpy.

    Raises:
      FileNotFoundError: a missing file (named); ValueError: an unreadable one.
    """
    path = Path(path)
    for name in (PARAMS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"model directory {path}: missing {name}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"model directory {path}: {CONFIG_FILE} is not valid JSON ({e})") from e
    put = _device_put if as_jax else (lambda a: a)
    try:
        flat = {k: put(a) for k, a in _read_safetensors(path / PARAMS_FILE)}
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ValueError(f"model directory {path}: {PARAMS_FILE} is unreadable ({e})") from e
    return unflatten_params(flat), config


def _read_safetensors(file: Path):
    """Yields ``(name, array)`` reading each tensor with ``readinto`` (no mmap, no full-file
    buffer: resident memory grows by exactly the tensors kept)."""
    dtypes = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("truncated header")
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            raise ValueError(f"header of {n} bytes exceeds the file ({size} bytes)")
        header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = dtypes[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            if end - begin != math.prod(shape) * dtype.itemsize or 8 + n + end > size:
                raise ValueError(f"tensor {name!r} is truncated or inconsistent")
            array = np.empty(shape, dtype)
            f.seek(8 + n + begin)
            if array.size and f.readinto(array.reshape(-1).view(np.uint8)) != end - begin:
                raise ValueError(f"tensor {name!r} is truncated")
            yield name, array


def _device_put(array: np.ndarray):
    import jax

    return jax.device_put(array)


def list_extra_files(path: str | os.PathLike) -> list[str]:
    """Relative names of the extra files in a model directory (sorted)."""
    path = Path(path)
    return sorted(
        str(p.relative_to(path))
        for p in path.rglob("*")
        if p.is_file() and p.name not in (PARAMS_FILE, CONFIG_FILE)
    )


def load_extra_file(path: str | os.PathLike, name: str, *, text: bool = False) -> str | bytes:
    """Reads extra file ``name`` of a model directory (bytes, or str with ``text=True``).

    Raises:
      FileNotFoundError: naming the directory and the file.
    """
    _check_extra_name(name)
    file = Path(path) / name
    if not file.is_file():
        raise FileNotFoundError(f"model directory {path}: missing extra file {name}")
    return file.read_text(encoding="utf-8") if text else file.read_bytes()
