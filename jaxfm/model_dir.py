"""Model directories: a Flax parameter tree as safetensors (flattened `/` paths) + config.json.

This is the format converters write and trained FIMP models are saved in. Writing is atomic: the
files go to a temporary sibling directory that is renamed into place only when complete, so a
crash never leaves a half-written model directory (an existing one is replaced only at the end).
A directory may also carry extra files (e.g. a tokenizer vocabulary) written in the same atomic
step (``save_model_dir(..., extra_files=...)``, read back with :func:`load_extra_file`). Every
directory gets a ``README.md`` model card (:func:`model_card`: family, config summary, training
data or source checkpoint, jaxfm version, how to load it) unless the caller supplies its own.

The parameter file is written and read with the safetensors library (``save_file`` writes
contiguous arrays without copying them; ``safe_open`` reads one tensor at a time and validates
the header: no overlapping or out-of-order tensors, integer shapes). Its ``__metadata__`` holds
``format`` (``jaxfm``), ``jaxfm_version`` and, when the config names one, ``family``.

Outputs honour the umask like any file the user writes (``mkdtemp`` / ``mkstemp`` would leave
them 0700 / 0600, unreadable to collaborators on a shared file system). A failed write (a full
disk, say) raises :class:`OutputWriteError` naming the output and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxfm.params import flatten, unflatten

__all__ = [
    "CONFIG_FILE",
    "PARAMS_FILE",
    "OutputWriteError",
    "check_output_file",
    "list_extra_files",
    "load_extra_file",
    "load_model_dir",
    "model_card",
    "save_model_dir",
    "write_json_atomic",
    "write_npy_atomic",
]

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"

# config keys shown in the card's summary table, per family (nested under the family's key)
_CARD_FIELDS = {
    "graphfm": ("dim", "num_latents", "encoder_depth", "decoder_depth", "feature_dim", "pe_dim",
                "num_neighbors", "dtype"),
    "fimp": ("dim", "num_layers", "aggregation", "separate_self", "dtype"),
    "vit": ("layout", "hidden_size", "num_layers", "num_heads", "patch_size", "image_size"),
    "scgpt": ("d_model", "nlayers", "nhead", "ntoken"),
    "brainlm": ("hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_timepoints_per_voxel"),
}  # fmt: skip


class OutputWriteError(OSError, ValueError):
    """An output could not be written (disk full, no permission, ...); nothing partial is left.

    An ``OSError`` (keeps ``errno``) that is also a ``ValueError``, so command-line front ends
    report it as a usage-level error (exit status 2) rather than a traceback.
    """


def _umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence the /proc path above
    os.umask(mask)
    return mask


def _honour_umask(path: Path) -> None:
    """Gives ``path`` (a file, or a directory tree) the mode a plain ``open`` / ``mkdir`` would."""
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _write_failed(path: Path, error: OSError) -> OutputWriteError:
    reason = getattr(error, "reason", None) or error.strerror or str(error)
    failed = OutputWriteError(error.errno, f"could not write {path}: {reason}")
    failed.reason = reason
    return failed


def check_output_file(path: str | os.PathLike, *, what: str = "--out") -> Path:
    """Checks, before any work is done, that ``path`` can be written as a file.

    Raises:
      ValueError: ``path`` is an existing directory, or its parent is an existing file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name inside it instead")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is a file, not a directory")
    return path


def _safetensors_metadata(config: Mapping) -> dict[str, str]:
    from jaxfm import __version__

    meta = {"format": "jaxfm", "jaxfm_version": str(__version__)}
    if isinstance(config.get("family"), str):
        meta["family"] = config["family"]
    return meta


_SAFETENSORS_DTYPE_NAMES = frozenset(
    "float64 float32 float16 bfloat16 int64 int32 int16 int8 uint64 uint32 uint16 uint8 bool "
    "complex64".split()
)


def _write_safetensors(path: Path, flat: dict[str, Any], metadata: dict[str, str]) -> None:
    """Writes ``flat`` with ``safetensors.numpy.save_file``.

    The library writes each array's buffer as is, so every array must be C-contiguous: a
    strided view would be written as the wrong bytes. Contiguous arrays are not copied.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    tensors = {}
    for name in sorted(flat):
        arr = np.asarray(flat[name])
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            arr = arr.copy(order="C")
        if arr.dtype.newbyteorder("=").name not in _SAFETENSORS_DTYPE_NAMES:
            raise ValueError(
                f"save_model_dir: parameter {name!r} has unsupported dtype {arr.dtype}"
            )
        tensors[name] = arr
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        if m := re.search(r"os error (\d+)", str(e)):  # an I/O error (a full disk, ...)
            code = int(m.group(1))
            raise OSError(code, os.strerror(code)) from e
        raise ValueError(f"save_model_dir: cannot write the parameters ({e})") from e


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


def _card_value(value) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def model_card(config: Mapping, *, num_params: int | None = None, source: str | None = None) -> str:
    """The ``README.md`` of a model directory, built from its ``config.json`` dict.

    Args:
      config: the directory's config (``"family"`` plus the family's fields).
      num_params: parameter count, if known.
      source: training data or source checkpoint (default: what the config records).

    Example:
      >>> card = model_card({"family": "vit", "hidden_size": 8}, num_params=10, source="x.bin")
      >>> print(card.splitlines()[0])
      # jaxfm model: vit
      >>> "jaxfm.load_model" in card and "| hidden_size | 8 |" in card
      True
    """
    from jaxfm import __version__

    family = str(config.get("family") or ("graphfm" if "graphfm" in config else "unknown"))
    body = config.get(family) if isinstance(config.get(family), Mapping) else config
    rows = [(k, body[k]) for k in _CARD_FIELDS.get(family, ()) if k in body]
    if family == "fimp":
        rows = [("task", config.get("task")), ("num_classes", config.get("num_classes")), *rows]
    if num_params is not None:
        rows.append(("parameters", f"{num_params:,}"))
    if source is None:
        if family == "graphfm":
            names = [d.get("name", "?") for d in body.get("datasets", ())]
            source = f"{len(names)} pretraining datasets: {', '.join(names)}" if names else None
        elif family == "fimp":
            source = f"{config.get('data')}" if config.get("data") else None
    lines = [
        f"# jaxfm model: {family}",
        "",
        f"Written by jaxfm {__version__}. Files: `{PARAMS_FILE}` (the Flax parameter tree, "
        f"`/`-joined paths) and `{CONFIG_FILE}` (the full config).",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {_card_value(v)} |" for k, v in rows),
        "",
        f"**Training data / source checkpoint:** {source or 'not recorded'}",
        "",
        "## Load it",
        "",
        "```python",
        "import jaxfm",
        "",
        'model, config, params = jaxfm.load_model("path/to/this/directory")  # or a hub id',
        'out = model.apply({"params": params}, ...)',
        "```",
        "",
    ]
    return "\n".join(lines)


def save_model_dir(
    path: str | os.PathLike,
    params: dict,
    config: dict,
    *,
    extra_files: dict[str, str | bytes] | None = None,
    source: str | None = None,
) -> Path:
    """Atomically writes ``params`` (nested dict) and ``config`` (JSON-able) to dir ``path``.

    A ``README.md`` model card (:func:`model_card`) is written too, unless ``extra_files`` has one.

    Args:
      path: the model directory (replaced as a whole if it exists).
      params: nested dict of arrays.
      config: JSON-able dict, written to ``config.json``.
      extra_files: ``{relative name: text or bytes}`` written beside them (e.g. a vocabulary).
      source: training data or source checkpoint named in the model card (default: what the
        config records).

    The directory and its files get the modes the umask gives (not ``mkdtemp``'s 0700), and
    ``params.safetensors`` carries ``__metadata__`` (``format``, ``jaxfm_version``, ``family``).

    Raises:
      ValueError: a bad extra file name or parameter dtype; TypeError: ``config`` is not
        JSON-able; OutputWriteError: the write failed (disk full, ...). On any error ``path`` is
        left as it was and no temporary directory remains.
    """
    path = Path(path)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        _check_extra_name(name)
    config_text = json.dumps(config, indent=2, sort_keys=True)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    if CARD_FILE not in extra_files:
        num_params = int(sum(v.size for v in flat.values()))
        extra_files[CARD_FILE] = model_card(config, num_params=num_params, source=source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise _write_failed(path, e) from e
    try:
        _write_safetensors(tmp / PARAMS_FILE, flat, _safetensors_metadata(config))
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
        _honour_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Writes JSON to ``path`` via a temporary file + rename (never a half-written file).

    Raises:
      ValueError: ``path`` is a directory; TypeError: ``obj`` is not JSON-able;
      OutputWriteError: the write failed (disk full, ...); no temporary file is left.
    """
    path = check_output_file(path, what="output")
    text = json.dumps(obj, indent=2)  # TypeError before anything is created
    _write_atomic(path, lambda f: f.write(text.encode()))


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` (``.npy``, no pickles) atomically, honouring the umask.

    Raises:
      ValueError: ``path`` is a directory; OutputWriteError: the write failed (no file left).
    """
    path = check_output_file(path, what="output")
    array = np.asarray(array)
    _write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))


def _write_atomic(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_failed(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        _honour_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_failed(path, e) from e
        raise


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
    return unflatten(flat), config


def _read_safetensors(file: Path):
    """Yields ``(name, array)`` one tensor at a time with ``safe_open`` (which validates the
    header: in-file, non-overlapping, in-order offsets and integer shapes)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy", backend="pread") as f:
            for name in f.offset_keys():
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise ValueError(str(e)) from e


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
