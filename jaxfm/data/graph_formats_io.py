"""Safe reading of ``.npz`` / ``.npy`` / pickle files for the graph dataset readers.

GraphData ``.npz`` files keep their adjacency and features as pickled ``scipy.sparse`` matrices,
Planetoid ``ind.*`` files are Python 2 pickles and LINKX splits are pickled dicts. Unpickling
runs code named by the file, so :func:`load_restricted_pickle` resolves only what numpy arrays,
scipy sparse matrices and plain containers need (numpy ``ndarray`` / ``dtype`` /
``_reconstruct`` / ``scalar``, ``scipy.sparse`` matrix and array classes, a few builtins,
``collections.defaultdict`` / ``OrderedDict``, ``copyreg._reconstructor``, ``_codecs.encode``);
any other global (``os.system``, ``numpy.load``, ``builtins.eval``, ...) is refused with a
:class:`~jaxfm.data.graph_validate.DatasetFormatError` naming the file. Calls go through guards
that bound every allocation, and nothing the pickle did not create is ever modified (see
:mod:`jaxfm.data.restricted_pickle`). Non-object ``.npy`` members are read with
``allow_pickle=False``.

``.npz`` members are bounded like a checkpoint's: their declared sizes may not inflate beyond
``JAXFM_MAX_INFLATION`` (default 10) times the file's size in all, or
:data:`NPZ_MIN_INFLATED_BYTES` (64 MiB) if that is more, checked before anything is inflated,
and no member is inflated past its declared size: a deflate bomb of a few hundred KB is refused
without allocating its hundreds of MiB.
"""

from __future__ import annotations

import codecs
import collections
import copyreg
import io
import os
import pickle
import zipfile
import zlib

import numpy as np
import scipy.sparse as sp

from jaxfm.data import restricted_pickle as rp
from jaxfm.data.graph_validate import DatasetFormatError

__all__ = [
    "NPZ_MIN_INFLATED_BYTES",
    "check_sparse_tree",
    "load_restricted_pickle",
    "npz_member_shapes",
    "read_npy_bytes",
    "read_npz",
    "read_plain_npz",
]

PathLike = str | os.PathLike

_SPARSE_CLASSES = frozenset(
    f"{fmt}_{kind}"
    for fmt in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia")
    for kind in ("matrix", "array")
)
_BUILTINS = (
    list, dict, set, frozenset, tuple, int, float, complex, bool, str, bytes, bytearray, slice,
    range, object,
)  # fmt: skip
_DEFAULTDICT_FACTORIES = (None, list, dict, set, int, float, str, tuple)

#: However small an ``.npz``, its members may inflate to this many bytes in all: dense 0/1
#: features compress 100-250x (heterophilous-graphs' squirrel.npz: 0.7 MB holding 45 MiB).
NPZ_MIN_INFLATED_BYTES = 64 * 2**20


def _multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


class _Policy:
    """The globals a dataset pickle may use (numpy arrays, scipy sparse matrices, containers)
    and the guard through which each may be called (see :mod:`jaxfm.data.restricted_pickle`)."""

    def __init__(self, limit: int):
        budget = rp.Budget(limit)
        self.globals: dict[tuple[str, str], object] = {}
        self.guards: dict[int, object] = {}
        self.newobj: dict[int, object] = {}
        ma = _multiarray()
        sparse = tuple(getattr(sp, n) for n in sorted(_SPARSE_CLASSES) if hasattr(sp, n))
        self.build_types = (np.ndarray, np.dtype, collections.OrderedDict, *sparse)

        def new_builtin(cls, *args):
            for a in args:
                rp.check_nbytes(rp.arg_nbytes(a, cls.__name__), budget, f"{cls.__name__}.__new__")
            return cls.__new__(cls, *args)

        for cls in _BUILTINS:
            self._allow(("builtins", "__builtin__"), cls.__name__, cls, rp.guard_call(cls, budget))
            self.newobj[id(cls)] = new_builtin

        def new_sparse(cls, *args):
            if args:
                raise rp.PickleRefused(f"{cls.__name__}.__new__ with arguments")
            return object.__new__(cls)

        for cls in sparse:
            self._allow(("scipy.sparse",), cls.__name__, cls, None)
            self.newobj[id(cls)] = new_sparse

        def reconstruct(subtype, shape, dtype):
            if subtype is not np.ndarray:
                raise rp.PickleRefused("numpy _reconstruct of a type other than ndarray")
            rp.check_nbytes(rp.array_nbytes(shape, dtype, "_reconstruct"), budget, "_reconstruct")
            return ma._reconstruct(np.ndarray, shape, dtype)

        def scalar(dtype, obj=None):
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise rp.PickleRefused("numpy scalar of an object or non-dtype type")
            budget.check(dtype.itemsize, "numpy scalar")
            if not isinstance(obj, bytes) or len(obj) != dtype.itemsize:
                raise rp.PickleRefused(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes")
            return ma.scalar(dtype, obj)

        def new_ndarray(cls, shape=(0,), dtype=float, *args):
            if cls is not np.ndarray or args:
                raise rp.PickleRefused("ndarray.__new__ with buffer arguments")
            rp.check_nbytes(rp.array_nbytes(shape, dtype, "ndarray"), budget, "ndarray.__new__")
            return np.ndarray.__new__(cls, shape, dtype)

        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._allow((mod,), "_reconstruct", ma._reconstruct, reconstruct)
            self._allow((mod,), "scalar", ma.scalar, scalar)
        self._allow(("numpy",), "ndarray", np.ndarray, None)
        self.newobj[id(np.ndarray)] = new_ndarray
        self._allow(("numpy",), "dtype", np.dtype, rp.dtype_guard(budget))

        def reconstructor(cls, base, state):  # copyreg._reconstructor (protocols 0 and 1)
            if base is object and state is None and id(cls) in self.newobj:
                return self.newobj[id(cls)](cls)
            if cls is base and base in _BUILTINS:
                return rp.guard_call(base, budget)(state)
            raise rp.PickleRefused(f"copyreg._reconstructor({cls!r}, {base!r}) is not allowed")

        for mod in ("copyreg", "copy_reg"):
            self._allow((mod,), "_reconstructor", copyreg._reconstructor, reconstructor)

        def defaultdict(factory=None):
            if not any(factory is f for f in _DEFAULTDICT_FACTORIES):
                raise rp.PickleRefused(f"defaultdict with the factory {factory!r}")
            return collections.defaultdict(factory)

        self._allow(("collections",), "defaultdict", collections.defaultdict, defaultdict)
        self._allow(
            ("collections",),
            "OrderedDict",
            collections.OrderedDict,
            rp.guard_call(collections.OrderedDict, budget),
        )

        def encode(obj, encoding="utf-8", errors="strict"):
            if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
                raise rp.PickleRefused(f"_codecs.encode with encoding {encoding!r}")
            return codecs.encode(obj, "latin1", errors)

        self._allow(("_codecs",), "encode", codecs.encode, encode)

    def _allow(self, modules, name, obj, guard) -> None:
        for mod in modules:
            self.globals[(mod, name)] = obj
        if guard is not None:
            self.guards[id(obj)] = guard


class _SparseModules(dict):
    """``(module, name)`` lookups: any ``scipy.sparse.*`` module path finds the sparse classes
    (old private paths such as ``scipy.sparse.csr`` may be gone)."""

    def __missing__(self, key):
        module, name = key
        if module.startswith("scipy.sparse.") and name in _SPARSE_CLASSES:
            return self[("scipy.sparse", name)]
        raise KeyError(key)


def load_restricted_pickle(
    data: bytes | io.BufferedIOBase, where: str, *, budget: int | None = None
):
    """Unpickles ``data`` allowing only numpy / scipy.sparse / builtins / collections globals.

    Python 2 pickles (Planetoid) are read with ``encoding="latin1"`` as ``numpy.load`` does.
    Nothing the pickle names can be modified (BUILD and SETITEMS apply only to objects the
    pickle created) and its constructors may allocate at most ``budget`` bytes in all (default:
    twice the pickle's size, at least :data:`~jaxfm.data.restricted_pickle.DEFAULT_BUDGET`).

    Raises:
      DatasetFormatError: a forbidden global, call or mutation, an oversized constructor, or a
        truncated / corrupt stream (the message names ``where``).
    """
    fp = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    if budget is None:  # twice the pickle's size, at least DEFAULT_BUDGET
        size = fp.getbuffer().nbytes if isinstance(fp, io.BytesIO) else 0
        budget = max(rp.DEFAULT_BUDGET, 2 * size)
    policy = _Policy(budget)
    try:
        obj = rp.RestrictedUnpickler(
            fp,
            globals_=_SparseModules(policy.globals),
            guards=policy.guards,
            newobj=policy.newobj,
            build_types=policy.build_types,
            encoding="latin1",
        ).load()
    except pickle.UnpicklingError as e:
        raise DatasetFormatError(f"{where}: unsafe or corrupt pickle: {e}") from e
    except (Exception, RecursionError) as e:  # the stack machine fails in many ways on bad input
        raise DatasetFormatError(f"{where}: truncated or corrupt pickle ({e!r})") from e
    check_sparse_tree(obj, where)
    return obj


def check_sparse_tree(obj, where: str, _depth: int = 0) -> None:
    """Validates every scipy sparse matrix inside ``obj`` (containers, object arrays).

    An unpickled matrix never went through its constructor's checks, and scipy's compiled
    routines do not bounds-check indices: an out-of-range index must be refused here.

    Raises:
      DatasetFormatError: naming ``where`` and the problem (e.g. an index out of range).
    """
    if _depth > 8:
        return
    if sp.issparse(obj):
        try:
            if obj.format in ("csr", "csc", "bsr"):
                obj.check_format(full_check=True)
            elif obj.format == "coo":
                obj._check()
            else:
                obj.tocsr().check_format(full_check=True)
        except Exception as e:
            raise DatasetFormatError(
                f"{where}: malformed {obj.format.upper()} sparse matrix of shape "
                f"{getattr(obj, '_shape', '?')} ({e})"
            ) from e
    elif isinstance(obj, dict):
        for v in obj.values():
            check_sparse_tree(v, where, _depth + 1)
    elif isinstance(obj, list | tuple):
        for v in obj:
            check_sparse_tree(v, where, _depth + 1)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        for v in obj.ravel():
            check_sparse_tree(v, where, _depth + 1)


def read_plain_npz(path: PathLike, *, max_inflation: float | None = None) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` holding plain (non-object) arrays, with errors naming the file.

    Unlike ``np.load``, a file that is not an ``.npz`` archive (e.g. a text file) is reported as
    such, not with advice to enable pickles.

    Args:
      max_inflation: bound on what the members may inflate to, relative to the file size
        (default ``JAXFM_MAX_INFLATION``, else 10; at least :data:`NPZ_MIN_INFLATED_BYTES`).

    Raises:
      DatasetFormatError: missing file, not an ``.npz`` archive, a corrupt member, a member
        holding pickled objects, or members inflating beyond the limit (a deflate bomb).
    """
    out = {}
    with _open_zip(path) as zf:
        for info, where in _claimed_members(path, zf, max_inflation):
            try:
                with rp.open_member(zf, info, where) as fp:
                    out[info.filename[:-4]] = np.lib.format.read_array(fp, allow_pickle=False)
            except rp.InflationLimitError as e:
                raise DatasetFormatError(str(e)) from e
            except ValueError as e:
                if "pickle" in str(e).lower():
                    raise DatasetFormatError(
                        f"{where}: holds pickled Python objects; store plain numeric arrays"
                    ) from e
                raise DatasetFormatError(f"{where}: truncated or corrupt ({e})") from e
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise DatasetFormatError(f"{where}: truncated or corrupt ({e})") from e
    return out


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
    except IsADirectoryError as e:
        raise DatasetFormatError(f"{path}: is a directory, not an .npz file") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetFormatError(
            f"{path}: not a readable .npz archive (a zip of .npy arrays, as numpy.savez writes); "
            f"it may be a text file or truncated ({e})"
        ) from e


def _claimed_members(
    path: PathLike, zf: zipfile.ZipFile, max_inflation: float | None
) -> list[tuple[zipfile.ZipInfo, str]]:
    """The ``.npy`` members of ``zf`` with the names messages give them, after checking that
    their declared sizes stay within the inflation limit (before anything is inflated)."""
    members = [i for i in zf.infolist() if i.filename.endswith(".npy")]
    try:
        inflation = rp.ZipInflation(
            str(path), os.stat(path).st_size, max_inflation, min_bytes=NPZ_MIN_INFLATED_BYTES
        )
        for info in members:
            inflation.claim(info)
    except rp.InflationLimitError as e:
        message = str(e)
        if not message.startswith(str(path)):  # a bad JAXFM_MAX_INFLATION
            message = f"{path}: {message}"
        raise DatasetFormatError(message) from e
    return [(i, f"{path} (member {i.filename})") for i in members]


def read_npz(path: PathLike, *, max_inflation: float | None = None) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; pickled members go through the restricted unpickler.

    Args:
      max_inflation: bound on what the members may inflate to, relative to the file size
        (default ``JAXFM_MAX_INFLATION``, else 10; at least :data:`NPZ_MIN_INFLATED_BYTES`).

    Raises:
      DatasetFormatError: missing file, not a zip, a truncated member, an unsafe pickle, or
        members inflating beyond the limit (a deflate bomb).
    """
    out = {}
    with _open_zip(path) as zf:
        for info, where in _claimed_members(path, zf, max_inflation):
            try:
                data = rp.read_member(zf, info, where)
            except rp.InflationLimitError as e:
                raise DatasetFormatError(str(e)) from e
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
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
