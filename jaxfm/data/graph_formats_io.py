"""Safe reading of ``.npz`` / ``.npy`` / pickle files for the graph dataset readers.

GraphData ``.npz`` files keep their adjacency and features as pickled ``scipy.sparse`` matrices,
Planetoid ``ind.*`` files are Python 2 pickles and LINKX splits are pickled dicts. Unpickling
runs code named by the file, so :class:`_RestrictedUnpickler` resolves only what numpy arrays,
scipy sparse matrices and plain containers need (numpy ``ndarray`` / ``dtype`` /
``_reconstruct`` / ``scalar``, ``scipy.sparse`` matrix and array classes, a few builtins,
``collections.defaultdict`` / ``OrderedDict``, ``copyreg._reconstructor``, ``_codecs.encode``);
any other global (``os.system``, ``numpy.load``, ``builtins.eval``, ...) is refused with a
:class:`~jaxfm.data.graph_validate.DatasetFormatError` naming the file. Non-object ``.npy``
members are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import scipy.sparse as sp

from jaxfm.data.graph_validate import DatasetFormatError

__all__ = ["load_restricted_pickle", "npz_member_shapes", "read_npy_bytes", "read_npz"]

PathLike = str | os.PathLike

_SPARSE_CLASSES = frozenset(
    f"{fmt}_{kind}"
    for fmt in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia")
    for kind in ("matrix", "array")
)
_BUILTINS = frozenset(
    "list dict set frozenset tuple int float complex bool str bytes bytearray slice range "
    "object".split()
)
_NUMPY = {
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
}
_OTHER = {
    ("collections", "defaultdict"),
    ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"),
    ("copy_reg", "_reconstructor"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals that numpy arrays, scipy sparse matrices and plain containers
    need; anything else (``os.system``, ``numpy.load``, ...) raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return super().find_class("builtins", name)
        if name in _NUMPY.get(module, ()):
            if module == "numpy.core.multiarray" and hasattr(np, "_core"):
                module = "numpy._core.multiarray"  # numpy >= 2 (avoids the deprecation shim)
            return super().find_class(module, name)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and (
            name in _SPARSE_CLASSES
        ):
            return getattr(sp, name)  # old private module paths (scipy.sparse.csr) may be gone
        if (module, name) in _OTHER:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_restricted_pickle(data: bytes | io.BufferedIOBase, where: str):
    """Unpickles ``data`` allowing only numpy / scipy.sparse / builtins / collections globals.

    Python 2 pickles (Planetoid) are read with ``encoding="latin1"`` as ``numpy.load`` does.

    Raises:
      DatasetFormatError: a forbidden global, or a truncated / corrupt stream.
    """
    fp = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        return _RestrictedUnpickler(fp, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DatasetFormatError(f"{where}: unsafe or corrupt pickle: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetFormatError(f"{where}: truncated or corrupt pickle ({e!r})") from e


def read_npy_bytes(data: bytes, where: str) -> np.ndarray:
    """One ``.npy`` payload -> array (object arrays through the restricted unpickler).

    Raises:
      DatasetFormatError: truncated / corrupt data or an unsafe pickle (``where`` names it).
    """
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(fp)
        if dtype.hasobject:
            arr = load_restricted_pickle(fp, where)
            if not isinstance(arr, np.ndarray):
                raise DatasetFormatError(f"{where}: object member is {type(arr).__name__}")
            return arr
        fp.seek(0)
        return np.lib.format.read_array(fp, allow_pickle=False)
    except DatasetFormatError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise DatasetFormatError(f"{where}: truncated or corrupt .npy data ({e})") from e


def _open_zip(path: PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{path}: file not found") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetFormatError(f"{path}: not a readable .npz (zip) archive ({e})") from e


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; pickled members go through the restricted unpickler.

    Raises:
      DatasetFormatError: missing file, not a zip, a truncated member or an unsafe pickle.
    """
    out = {}
    with _open_zip(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            where = f"{path} (member {info.filename})"
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise DatasetFormatError(f"{where}: truncated or corrupt ({e})") from e
            out[info.filename[:-4]] = read_npy_bytes(data, where)
    return out


def npz_member_shapes(path: PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` from the ``.npy`` headers only (cheap; no data is read)."""
    out = {}
    with _open_zip(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with zf.open(info) as fp:
                    head = io.BytesIO(fp.read(4096))
                version = np.lib.format.read_magic(head)
                reader = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(head)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                where = f"{path} (member {info.filename})"
                raise DatasetFormatError(f"{where}: bad .npy header ({e})") from e
            out[info.filename[:-4]] = (tuple(shape), dtype)
    return out
