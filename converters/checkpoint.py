"""Reading PyTorch and safetensors checkpoints into numpy, without PyTorch.

Two on-disk formats are understood:

* ``.safetensors``: read with the safetensors library (``safe_open``, one tensor at a time with
  ``pread``), which validates the header first: offsets must tile the data exactly (no
  overlapping, out-of-order or out-of-file tensors) and shapes must be non-negative integers.
* PyTorch's zip format (``torch.save`` since 1.6; ``.bin``/``.pt``/``.pth``): a zip archive
  ``<name>/data.pkl`` (the pickled object tree), ``<name>/data/<key>`` (one raw little-endian
  storage per key) and ``<name>/byteorder``. The pickle is read by a *restricted* unpickler:

  1. a static pass over the pickle opcodes collects every global it references and refuses the
     file (:class:`~converters.errors.UnsafePickleError`, naming the global) unless all are in
     :data:`ALLOWED_GLOBALS` - before a single object is built;
  2. :class:`jaxfm.data.restricted_pickle.RestrictedUnpickler` enforces the same allow-list,
     substitutes this module's own numpy implementations of the tensor-rebuild functions (never
     PyTorch's), calls every global through a guard that bounds what it may allocate, and lets
     BUILD / SETITEMS touch only objects the pickle created - never a class, a storage type or
     any other shared object, so a checkpoint cannot change how later files are read.

  Storages are mapped to numpy via ``persistent_load``: the archive member is memory-mapped when
  stored uncompressed (its CRC-32 is checked) and tensors are views into it honouring storage
  offsets, sizes and strides; several tensors may share one storage. A tensor whose contiguous
  copy would exceed its storage (e.g. stride 0) is refused, and so is a compressed member that
  would inflate beyond :func:`max_inflated_bytes` (a deflate bomb).

Tensors come back as ``np.ndarray`` (bfloat16 as ``ml_dtypes.bfloat16``). Arrays of a zip
checkpoint may be read-only views of a memory map: copy before modifying in place.
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from converters.errors import CheckpointFormatError, UnsafePickleError
from jaxfm.data import restricted_pickle as rp

__all__ = [
    "ALLOWED_GLOBALS",
    "DEFAULT_MAX_INFLATION",
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
    "extract_state_dict",
    "max_inflated_bytes",
    "read_pickle_tree",
    "read_safetensors",
    "read_state_dict",
    "read_torch_zip",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# Nested state-dict containers tried in this order when a checkpoint is not itself a state dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params")

_ZIP_MAGIC = b"PK\x03\x04"

#: Default bound on the inflated size of compressed archive members, relative to the file size
#: (one rule for checkpoints and ``.npz`` datasets: :mod:`jaxfm.data.restricted_pickle`).
DEFAULT_MAX_INFLATION = rp.DEFAULT_MAX_INFLATION

# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype(bool),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
    "UntypedStorage": np.dtype("u1"),
}

_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"),
    "double": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "half": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype("<i8"),
    "long": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "short": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "bool": np.dtype(bool),
    "complex64": np.dtype("<c8"),
    "complex128": np.dtype("<c16"),
}

#: safetensors dtype codes that safetensors' numpy reader returns (no float8 in numpy).
_SAFETENSORS_NUMPY_DTYPES = frozenset(
    "F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL C64".split()
)


# --------------------------------------------------------------------------------------------
# numpy stand-ins for the allowed pickle globals
# --------------------------------------------------------------------------------------------


class _Frozen:
    """Stand-ins for torch classes are process-wide singletons: never modifiable."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{self!r} is read-only")

    def __delattr__(self, name):
        raise AttributeError(f"{self!r} is read-only")


class _StorageType(_Frozen):
    """Stand-in for ``torch.FloatStorage`` & co. (only ever used as a persistent-id tag)."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", _STORAGE_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TensorType(_Frozen):
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` in ``_rebuild_from_type_v2``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return self.name


class _Storage:
    """A storage read from the archive: a flat numpy array of ``numel`` elements."""

    __slots__ = ("array", "key")

    def __init__(self, key: str, array: np.ndarray):
        self.key = key
        self.array = array


class _BadTensor(Exception):
    """Internal: a tensor record is inconsistent (re-raised with the file name)."""


def _tensor_from_storage(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None = None
) -> np.ndarray:
    """``torch._utils._rebuild_tensor`` in numpy: a (strided) view of ``storage``."""
    if not isinstance(storage, _Storage):
        raise _BadTensor(f"tensor storage is {type(storage).__name__}, not a storage record")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
        raise _BadTensor(f"bad tensor layout offset={offset} size={size} stride={stride}")
    if len(size) != len(stride):
        raise _BadTensor(f"tensor size {size} and stride {stride} differ in rank")
    base = storage.array
    if dtype is not None and dtype != base.dtype:  # _rebuild_tensor_v3 on an untyped storage
        if base.nbytes % dtype.itemsize:
            raise _BadTensor(f"storage of {base.nbytes} bytes is not a whole number of {dtype}")
        base = base.view(dtype)
    numel = math.prod(size)
    if numel == 0:
        return np.zeros(size, base.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= base.size:
        raise _BadTensor(
            f"tensor (offset {offset}, size {size}, stride {stride}) reads element {last} of a "
            f"storage with {base.size} elements"
        )
    if offset + numel > base.size:  # e.g. a stride-0 (expanded) tensor: its copy would not fit
        held = max(base.size - offset, 0) * base.itemsize
        raise _BadTensor(
            f"tensor of size {size} (stride {stride}, offset {offset}) needs "
            f"{numel * base.itemsize} bytes, more than the {held} bytes its storage holds from "
            "that offset"
        )
    contiguous = tuple(int(math.prod(size[i + 1 :])) for i in range(len(size)))
    if all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous, strict=True)):
        return base[offset : offset + numel].reshape(size)  # view, no copy
    view = np.lib.stride_tricks.as_strided(
        base[offset:], size, tuple(s * base.itemsize for s in stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage,
    storage_offset,
    size,
    stride,
    requires_grad=False,
    backward_hooks=None,
    dtype=None,
    metadata=None,
):
    if dtype is not None and not isinstance(dtype, np.dtype):
        raise _BadTensor(f"_rebuild_tensor_v3 dtype is {dtype!r}, not a torch dtype")
    return _tensor_from_storage(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise _BadTensor(f"parameter data is {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _TensorType):
        raise _BadTensor(f"_rebuild_from_type_v2 with type {new_type!r}")
    if func not in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter):
        raise _BadTensor("_rebuild_from_type_v2 with a function that is not a tensor rebuild")
    return func(*args)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, "latin1")``."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _BadTensor(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1", errors)


def _torch_size(*args):
    return tuple(*args) if args else ()


def _torch_device(*args):
    return ":".join(str(a) for a in args)


def _numpy_scalar() -> Callable:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorType("torch.Tensor"),
        ("torch._tensor", "Tensor"): _TensorType("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorType("torch.nn.Parameter"),
        ("torch", "Size"): _torch_size,
        ("torch", "device"): _torch_device,
        ("_codecs", "encode"): _codecs_encode,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar(),
        ("numpy._core.multiarray", "scalar"): _numpy_scalar(),
    }
    containers = (dict, list, tuple, set, frozenset, int, float, bool, complex, str, bytes)
    for mod in ("builtins", "__builtin__"):
        for cls in (*containers, bytearray):
            table[(mod, cls.__name__)] = cls
    for name in _STORAGE_DTYPES:
        table[("torch", name)] = _StorageType(name)
    table[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")
    for name, dt in _TORCH_DTYPES.items():
        table[("torch", name)] = dt
    return table


#: ``(module, name)`` -> the object the restricted unpickler substitutes for that global.
ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = _allowed_globals()


# --------------------------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------------------------

_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_REFUSED_OPS = {"EXT1", "EXT2", "EXT4"}  # copyreg extension registry: arbitrary globals


def scan_pickle_globals(data: bytes, *, name: str = "<pickle>") -> list[tuple[str, str]]:
    """Every global a pickle references, found statically (nothing is built or called).

    Raises:
      UnsafePickleError: a global cannot be resolved statically or an extension opcode is used.
      CheckpointFormatError: the pickle is malformed or truncated.
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # values pushed by the ops right before the current one
    none = object()
    try:
        for op, arg, pos in pickletools.genops(data):
            opname = op.name
            if opname in _REFUSED_OPS:
                raise UnsafePickleError(
                    f"{name}: pickle uses the {opname} extension opcode at byte {pos}, which can "
                    "reference arbitrary code; refusing to load it",
                    f"<{opname}>",
                )
            if opname in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append((module, attr))
                recent.append(none)
            elif opname == "STACK_GLOBAL":
                if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                    raise UnsafePickleError(
                        f"{name}: pickle builds a global at byte {pos} from values that are not "
                        "literal strings; refusing to load it",
                        "<dynamic STACK_GLOBAL>",
                    )
                found.append((recent[-2], recent[-1]))
                recent = [none]
            elif opname in _STRING_OPS:
                recent.append(arg)
            elif opname in _PUT_OPS:
                idx = len(memo) if opname == "MEMOIZE" else arg
                memo[idx] = recent[-1] if recent else none
            elif opname in _GET_OPS:
                recent.append(memo.get(arg, none))
            else:
                recent = [none]
            del recent[:-2]
    except UnsafePickleError:
        raise
    except Exception as e:  # pickletools raises ValueError on bad/truncated opcode streams
        raise CheckpointFormatError(f"{name}: the pickle is malformed or truncated ({e})") from e
    return found


def _check_globals(globals_: list[tuple[str, str]], name: str) -> None:
    for module, attr in globals_:
        if (module, attr) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{name}: the pickle references the global '{module}.{attr}', which is not a "
                "tensor, storage or container; refusing to load it (nothing was executed). Only "
                "plain state dicts of tensors can be converted.",
                f"{module}.{attr}",
            )


def _guards(limit: int) -> tuple[dict[int, Callable], dict[int, Callable]]:
    """``(guards, newobj)`` for :class:`jaxfm.data.restricted_pickle.RestrictedUnpickler`: how
    each callable allowed global is called (allocations checked against ``limit`` bytes in
    all)."""
    budget = rp.Budget(limit)
    scalar = _numpy_scalar()

    def numpy_scalar(dtype, obj=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise rp.PickleRefused("numpy scalar of an object or non-dtype type")
        budget.check(dtype.itemsize, "numpy scalar")
        if not isinstance(obj, bytes) or len(obj) != dtype.itemsize:
            raise rp.PickleRefused(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes")
        return scalar(dtype, obj)

    def new_builtin(cls, *args):
        for a in args:
            rp.check_nbytes(rp.arg_nbytes(a, cls.__name__), budget, f"{cls.__name__}.__new__")
        return cls.__new__(cls, *args)

    guards: dict[int, Callable] = {}
    newobj: dict[int, Callable] = {}
    for fn in (
        _rebuild_tensor,
        _rebuild_tensor_v2,
        _rebuild_tensor_v3,
        _rebuild_parameter,
        _rebuild_from_type_v2,
        _codecs_encode,
        _torch_device,
    ):
        guards[id(fn)] = fn  # these check their own arguments
    guards[id(_torch_size)] = rp.guard_call(_torch_size, budget, name="torch.Size")
    guards[id(collections.OrderedDict)] = rp.guard_call(collections.OrderedDict, budget)
    guards[id(np.dtype)] = rp.dtype_guard(budget)
    guards[id(scalar)] = numpy_scalar
    builtins = (dict, list, tuple, set, frozenset, int, float, bool, complex, str, bytes, bytearray)
    for cls in builtins:
        guards[id(cls)] = rp.guard_call(cls, budget)
        newobj[id(cls)] = new_builtin
    return guards, newobj


#: Types of pickle-created objects whose state BUILD may set (a state dict's ``_metadata``;
#: the byte order of a freshly created numpy dtype).
_BUILD_TYPES = (collections.OrderedDict, np.dtype)


def _unpickle(
    data: bytes | memoryview,
    name: str,
    load_storage: Callable[[tuple], _Storage],
    *,
    budget: int | None = None,
) -> Any:
    """Restricted unpickling: the static global scan, then the guarded stack machine."""
    _check_globals(scan_pickle_globals(data, name=name), name)
    budget = max(rp.DEFAULT_BUDGET, 2 * len(data)) if budget is None else budget
    guards, newobj = _guards(budget)
    try:
        return rp.RestrictedUnpickler(
            io.BytesIO(data),
            globals_=ALLOWED_GLOBALS,
            guards=guards,
            newobj=newobj,
            build_types=_BUILD_TYPES,
            persistent_load=load_storage,
        ).load()
    except (UnsafePickleError, CheckpointFormatError):
        raise
    except rp.PickleRefused as e:
        raise UnsafePickleError(f"{name}: refusing to load the pickle: {e}", str(e)) from e
    except _BadTensor as e:
        raise CheckpointFormatError(f"{name}: {e}") from e
    except (Exception, RecursionError) as e:  # the stack machine fails in many ways on bad input
        raise CheckpointFormatError(
            f"{name}: the pickle could not be read ({type(e).__name__}: {e})"
        ) from e


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointFormatError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"checkpoint file {path} is empty")


def _mmap(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file with the safetensors library, one tensor at a time.

    The library validates the header before any tensor is read: offsets must tile the data
    section exactly (no overlapping, out-of-order, gapped or out-of-file tensors), shapes must be
    non-negative integers and byte ranges must match shape x dtype.

    Raises:
      CheckpointFormatError: missing, truncated or malformed file, or a float8 tensor (names the
        file and tensor).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _check_file(path)
    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(path, framework="numpy", backend="pread") as f:
            for key in f.offset_keys():
                code = f.get_slice(key).get_dtype()
                if code not in _SAFETENSORS_NUMPY_DTYPES:
                    raise CheckpointFormatError(
                        f"safetensors file {path}: tensor {key!r} has dtype {code}, which cannot "
                        "be read into numpy; save the checkpoint in float32, float16 or bfloat16"
                    )
                out[key] = f.get_tensor(key)
    except CheckpointFormatError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointFormatError(
            f"safetensors file {path} is truncated or malformed ({e})"
        ) from e
    return out


def max_inflated_bytes(file_size: int, max_inflation: float | None = None) -> int:
    """How many bytes the compressed members of a ``file_size``-byte archive may inflate to.

    ``max_inflation`` (default: the ``JAXFM_MAX_INFLATION`` environment variable, else
    :data:`DEFAULT_MAX_INFLATION`) times the file size, and at least 16 MiB. ``torch.save`` stores
    members uncompressed, so only re-zipped checkpoints are concerned; a deflate bomb is not.
    The same rule bounds ``.npz`` datasets
    (:func:`jaxfm.data.restricted_pickle.max_inflated_bytes`).
    """
    try:
        return rp.max_inflated_bytes(file_size, max_inflation)
    except rp.InflationLimitError as e:
        raise CheckpointFormatError(str(e)) from None


class _TorchZip:
    """Member access for a PyTorch zip checkpoint (mmap for uncompressed members)."""

    def __init__(self, path: Path, *, max_inflation: float | None = None):
        self.path = path
        self._size = path.stat().st_size
        try:  # the inflation budget of the whole archive, shared with the dataset readers
            self._inflation = rp.ZipInflation(f"checkpoint {path}", self._size, max_inflation)
        except rp.InflationLimitError as e:
            raise CheckpointFormatError(str(e)) from None
        try:
            self.zf = zipfile.ZipFile(path)
            self.infos = {i.filename: i for i in self.zf.infolist()}
        except zipfile.BadZipFile as e:
            raise CheckpointFormatError(
                f"checkpoint {path} is not a complete zip archive ({e}); the file is truncated "
                "or corrupt - download or copy it again"
            ) from e
        pkls = [n for n in self.infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkls) != 1:
            what = (
                "constants.pkl (a TorchScript archive)"
                if any(n.endswith("constants.pkl") for n in self.infos)
                else f"{len(pkls)} data.pkl members"
            )
            raise CheckpointFormatError(
                f"checkpoint {path} is a zip archive but not a torch.save checkpoint ({what}; "
                "expected exactly one '<name>/data.pkl')"
            )
        self.prefix = pkls[0][: -len("data.pkl")]
        self._mm: mmap.mmap | None = None
        self.big_endian = False
        order = self.infos.get(self.prefix + "byteorder")
        if order is not None:
            value = self.read_bytes(order.filename).decode("ascii", "replace").strip()
            if value not in ("little", "big"):
                raise CheckpointFormatError(f"checkpoint {path}: unknown byteorder {value!r}")
            self.big_endian = value == "big"

    def read_bytes(self, name: str) -> bytes:
        info = self.infos[name]
        try:  # never past the declared size: zipfile would inflate a lying member whole
            self._inflation.claim(info)
            return rp.read_member(self.zf, info, f"checkpoint {self.path}: member {name!r}")
        except rp.InflationLimitError as e:
            raise CheckpointFormatError(str(e)) from e
        except (
            zipfile.BadZipFile,
            OSError,
            EOFError,
            zlib.error,
            RuntimeError,  # encrypted member
            NotImplementedError,  # unknown compression method
            ValueError,
        ) as e:
            raise CheckpointFormatError(
                f"checkpoint {self.path}: member {name!r} is unreadable ({e}); the file is "
                "truncated or corrupt"
            ) from e

    def buffer(self, name: str) -> memoryview | bytes:
        """The bytes of member ``name``: a CRC-checked mmap slice when stored uncompressed."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointFormatError(
                f"checkpoint {self.path}: the pickle references storage {name!r}, which is not "
                "in the archive (truncated or incomplete file)"
            )
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return self.read_bytes(name)
        if self._mm is None:
            self._mm = _mmap(self.path)
        head = self._mm[info.header_offset : info.header_offset + 30]
        if len(head) < 30 or head[:4] != _ZIP_MAGIC:
            raise CheckpointFormatError(
                f"checkpoint {self.path}: bad local header for member {name!r} (corrupt file)"
            )
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        end = start + info.file_size
        if end > self._size:
            raise CheckpointFormatError(
                f"checkpoint {self.path} is truncated: member {name!r} ends at byte {end}, the "
                f"file has {self._size} bytes"
            )
        view = memoryview(self._mm)[start:end]
        if zlib.crc32(view) != info.CRC:
            raise CheckpointFormatError(
                f"checkpoint {self.path}: CRC mismatch in member {name!r} (corrupt file)"
            )
        return view

    def load_storage(self, pid: Any, cache: dict[str, _Storage]) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise CheckpointFormatError(
                f"checkpoint {self.path}: unknown persistent id {pid!r} in data.pkl"
            )
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(
                f"checkpoint {self.path}: storage {key!r} has type {storage_type!r}, not a "
                "torch storage class"
            )
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key in cache:
            return cache[key]
        member = f"{self.prefix}data/{key}"
        buf = self.buffer(member)
        dtype = storage_type.dtype
        if not isinstance(numel, int) or numel < 0 or numel * dtype.itemsize > len(buf):
            raise CheckpointFormatError(
                f"checkpoint {self.path}: storage {member!r} has {len(buf)} bytes, fewer than "
                f"{numel} x {dtype} (truncated file)"
            )
        array = np.frombuffer(buf, _stored_dtype(dtype, self.big_endian), numel)
        if self.big_endian and dtype.itemsize > 1:
            array = _from_big_endian(array, dtype)
        cache[key] = storage = _Storage(key, array)
        return storage


def _stored_dtype(dtype: np.dtype, big_endian: bool) -> np.dtype:
    if not big_endian or dtype.itemsize == 1:
        return dtype
    if dtype.kind in "fiuc" and dtype.isnative is not None and dtype.name != "bfloat16":
        return dtype.newbyteorder(">")
    return np.dtype(f">u{dtype.itemsize}")  # ml_dtypes types: swap as unsigned ints


def _from_big_endian(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if array.dtype.kind == "u" and dtype.kind not in "u":
        return array.astype(array.dtype.newbyteorder("<")).view(dtype)
    return array.astype(dtype)


def _looks_like_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def read_pickle_tree(path: str | os.PathLike, *, max_inflation: float | None = None) -> Any:
    """The object tree of a PyTorch zip checkpoint, tensors as numpy arrays.

    Args:
      path: the checkpoint file.
      max_inflation: bound on the inflated size of compressed members relative to the file size
        (see :func:`max_inflated_bytes`).

    Raises:
      UnsafePickleError: the pickle references a global outside :data:`ALLOWED_GLOBALS`
        (raised before any object is built).
      CheckpointFormatError: missing, truncated, legacy-format or corrupt file (names it).
    """
    path = Path(path)
    _check_file(path)
    if not _looks_like_zip(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise CheckpointFormatError(
                f"checkpoint {path} uses PyTorch's legacy (pre-1.6, non-zip) format, which is "
                "not supported; re-save it with a recent torch: "
                "torch.save(torch.load(f, weights_only=True), f_new)"
            )
        raise CheckpointFormatError(
            f"checkpoint {path} is neither a PyTorch zip checkpoint nor safetensors (bad magic "
            f"bytes {head!r}); it may be truncated or not a checkpoint"
        )
    archive = _TorchZip(path, max_inflation=max_inflation)
    pkl_name = archive.prefix + "data.pkl"
    data = archive.read_bytes(pkl_name)
    cache: dict[str, _Storage] = {}
    return _unpickle(
        data, f"checkpoint {path} ({pkl_name})", lambda pid: archive.load_storage(pid, cache)
    )


def read_torch_zip(
    path: str | os.PathLike, *, max_inflation: float | None = None
) -> dict[str, np.ndarray]:
    """The flat tensor dict of a PyTorch zip checkpoint (see :func:`extract_state_dict`)."""
    path = Path(path)
    tree = read_pickle_tree(path, max_inflation=max_inflation)
    return extract_state_dict(tree, name=str(path))


def extract_state_dict(tree: Any, *, name: str = "checkpoint") -> dict[str, np.ndarray]:
    """The tensor dict inside an unpickled checkpoint.

    A state dict (any tensor at the top level) is returned with its non-tensor entries dropped.
    Otherwise the first nested dict of tensors under one of ``state_dict``, ``model_state_dict``,
    ``model``, ``module``, ``net``, ``network``, ``params`` is used (or the only nested dict that
    holds tensors). A ``module.`` prefix on every key (``DataParallel``) is removed.

    Raises:
      CheckpointFormatError: no state dict can be found (lists the top-level keys).
    """
    if not isinstance(tree, Mapping):
        raise CheckpointFormatError(f"{name}: holds a {type(tree).__name__}, not a dict of tensors")

    def tensors(d: Mapping) -> dict[str, np.ndarray]:
        return {str(k): v for k, v in d.items() if isinstance(v, np.ndarray)}

    state = tensors(tree)
    if not state:
        nested = [k for k in _NESTED_KEYS if isinstance(tree.get(k), Mapping)]
        candidates = [k for k in nested if tensors(tree[k])]
        if not candidates:
            candidates = [k for k, v in tree.items() if isinstance(v, Mapping) and tensors(v)]
            if len(candidates) > 1:
                raise CheckpointFormatError(
                    f"{name}: no top-level tensors and several nested dicts of tensors "
                    f"{sorted(map(str, candidates))}; cannot tell which is the state dict"
                )
        if not candidates:
            raise CheckpointFormatError(
                f"{name}: no tensors found (top-level keys: {sorted(map(str, tree))[:20]})"
            )
        state = tensors(tree[candidates[0]])
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(
    path: str | os.PathLike, *, max_inflation: float | None = None
) -> dict[str, np.ndarray]:
    """Reads a checkpoint's flat tensor dict: ``.safetensors`` or PyTorch zip ``.bin/.pt/.pth``.

    The format is detected from the file's magic bytes (a ``.safetensors`` suffix selects
    safetensors). No PyTorch is needed and no pickled code ever runs.

    Args:
      path: the checkpoint file.
      max_inflation: for zip checkpoints, see :func:`max_inflated_bytes`.

    Returns:
      ``{key: array}``; arrays of a zip checkpoint may be read-only memory-map views.

    Raises:
      CheckpointFormatError: missing/truncated/unknown file (names it).
      UnsafePickleError: a pickle references anything but tensors and containers.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix in SAFETENSORS_SUFFIXES or (not _looks_like_zip(path) and _is_safetensors(path)):
        return read_safetensors(path)
    return read_torch_zip(path, max_inflation=max_inflation)


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"
