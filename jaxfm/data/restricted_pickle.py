"""A restricted unpickler: an allow-list of globals, guarded constructors, no mutation of globals.

Unpickling is a small stack machine that can call any global a file names and set attributes
on any object it can reach. An allow-list of globals (``find_class``) stops the calls, but not
the attribute writes: the BUILD opcode runs ``setattr`` on whatever is on the stack - an
allow-listed *class* included - and SETITEMS / APPENDS mutate any container. A hostile file
could thus change ``scipy.sparse.csr_matrix.tocoo`` or a storage class's ``dtype`` for the
rest of the process without running any code of its own. Allow-listed constructors are also
memory bombs (``bytearray(2**30)``, ``numpy._reconstruct`` of a huge shape).

:class:`RestrictedUnpickler` (used by the dataset readers and the checkpoint converters) runs
the pure-Python unpickler with these rules:

1. a global resolves only through the caller's table ``{(module, name): object}``;
2. a global is called (REDUCE, NEWOBJ, OBJ, INST) only through the *guard* the table gives for
   it, which checks the arguments before anything is allocated (sizes against ``budget``);
3. BUILD, SETITEM(S), APPEND(S) and ADDITEMS apply only to objects this pickle created itself
   (never a global, a persistent object or anything returned unchanged from a call), of the
   caller's ``build_types`` / plain container types, and never set a dunder attribute;
4. extension-registry opcodes (EXT1/2/4) are refused.

Every refusal raises :class:`PickleRefused` (the callers re-raise it naming their file).

The zip archives around such pickles (PyTorch checkpoints, ``.npz`` datasets) are bounded too:
:class:`ZipInflation` refuses members whose declared sizes would inflate beyond
:func:`max_inflated_bytes` (a deflate bomb; ``JAXFM_MAX_INFLATION`` times the file size), and
:func:`read_member` / :func:`open_member` never inflate more than a member declares.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_MAX_INFLATION",
    "MIN_INFLATED_BYTES",
    "Budget",
    "InflationLimitError",
    "PickleRefused",
    "RestrictedUnpickler",
    "ZipInflation",
    "arg_nbytes",
    "array_nbytes",
    "check_nbytes",
    "dtype_guard",
    "guard_call",
    "max_inflated_bytes",
    "open_member",
    "read_member",
]

#: Default cap (bytes) on what the constructors of one pickle may allocate in all.
DEFAULT_BUDGET = 64 * 2**20

#: Default bound on what the compressed members of a zip archive (a checkpoint, an ``.npz``
#: dataset) may inflate to in all, relative to the archive's size (``JAXFM_MAX_INFLATION``).
DEFAULT_MAX_INFLATION = 10.0

#: However small the archive, its compressed members may inflate to this many bytes (the
#: default floor; readers of often highly compressible files pass a larger one).
MIN_INFLATED_BYTES = 16 * 2**20

_CONTAINER_TYPES = (dict, list, set, collections.OrderedDict, collections.defaultdict)


class PickleRefused(pickle.UnpicklingError):
    """The pickle asks for something the restricted unpickler does not allow (message says what)."""


class Budget:
    """Bytes the constructors of one pickle may still allocate (cumulative, so a pickle cannot
    get around the limit with many allocations just below it)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0

    def spend(self, nbytes: int, what: str) -> None:
        self.check(self.used + nbytes, what, nbytes)
        self.used += nbytes

    def check(self, total: int, what: str, nbytes: int | None = None) -> None:
        if total > self.limit:
            n = total if nbytes is None else nbytes
            raise PickleRefused(
                f"{what} would allocate {n} bytes, beyond the limit of {self.limit} bytes for "
                "the objects of one pickle"
            )


def check_nbytes(nbytes: int, budget: Budget, what: str) -> None:
    """Spends ``nbytes`` of ``budget``; raises :class:`PickleRefused` beyond its limit."""
    budget.spend(nbytes, what)


_SIZED_BY_INT = ("bytes", "bytearray")  # bytes(n) / bytearray(n) allocate n zero bytes


def arg_nbytes(value: Any, label: str = "") -> int:
    """Bytes a builtin constructor named ``label`` may allocate from one argument: an int is a
    size for ``bytes`` / ``bytearray``; text copied into ``bytes`` / ``bytearray`` / ``str``
    costs its length; any other sequence becomes one pointer (8 bytes) per item."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0) if label in _SIZED_BY_INT else 0
    if isinstance(value, str | bytes | bytearray) and label in (*_SIZED_BY_INT, "str"):
        return len(value)
    if isinstance(value, range | str | bytes | bytearray | list | tuple | dict | set | frozenset):
        return len(value) * 8
    return 0


def guard_call(func: Callable, budget: Budget, *, name: str | None = None) -> Callable:
    """A guard calling ``func`` after refusing arguments that would allocate beyond ``budget``.

    For builtins whose arguments are sizes or lazy sequences (``bytearray(n)``, ``bytes(n)``,
    ``list(range(n))``); ``str()`` only converts strings, bytes and numbers (the repr of a
    container of many references to one large object could be huge).
    """
    label = name or getattr(func, "__name__", repr(func))

    def _guarded(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            check_nbytes(arg_nbytes(value, label), budget, f"{label}(...)")
        if label == "str" and args and not isinstance(args[0], str | bytes | int | float):
            raise PickleRefused(f"str() of a {type(args[0]).__name__} is not allowed")
        return func(*args, **kwargs)

    return _guarded


def dtype_guard(budget: Budget) -> Callable:
    """``numpy.dtype`` that always returns a fresh descriptor (never a shared singleton that a
    later BUILD could modify) and refuses item sizes beyond ``budget``."""

    def _dtype(spec, align=False, copy=False):
        if not isinstance(spec, str | np.dtype):
            raise PickleRefused(f"numpy.dtype({type(spec).__name__}) is not allowed")
        dt = np.dtype(spec, align=bool(align), copy=True)
        budget.check(dt.itemsize, f"numpy.dtype({spec!r:.80})")  # a descriptor: nothing spent
        return dt

    return _dtype


def array_nbytes(shape: Any, dtype: Any, what: str) -> int:
    """Bytes of an array of ``shape`` x ``dtype`` (refusing non-integer or negative sizes)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple | list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise PickleRefused(f"{what}: shape {shape!r} is not a tuple of non-negative integers")
    if not isinstance(dtype, np.dtype):
        try:
            dtype = np.dtype(dtype) if isinstance(dtype, str | bytes) else None
        except TypeError:
            dtype = None
        if dtype is None:
            raise PickleRefused(f"{what}: dtype is not a numpy dtype")
    return math.prod(shape) * max(dtype.itemsize, 1)


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: opcodes overridable
    """Unpickler with an allow-list of globals, guarded calls and create-only mutation.

    Args:
      file: binary file object holding the pickle.
      globals_: ``{(module, name): object}`` - what each allowed global resolves to.
      guards: ``{id(object): callable}`` - how REDUCE / OBJ / INST call a global (the guard
        checks its arguments, then calls). A global without a guard cannot be called.
      newobj: ``{id(class): callable(cls, *args)}`` - the classes NEWOBJ may instantiate.
      build_types: types of pickle-created objects BUILD may set state on.
      persistent_load: handler for persistent ids (default: refused).
      encoding: for Python 2 ``str`` (as ``pickle.Unpickler``).
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file,
        *,
        globals_: Mapping[tuple[str, str], Any],
        guards: Mapping[int, Callable],
        newobj: Mapping[int, Callable] | None = None,
        build_types: tuple[type, ...] = (),
        persistent_load: Callable[[Any], Any] | None = None,
        encoding: str = "ASCII",
    ):
        super().__init__(file, encoding=encoding)
        self._globals = globals_
        self._guards = guards
        self._newobj = dict(newobj or {})
        self._build_types = tuple(build_types)
        self._persistent = persistent_load
        self._foreign: dict[int, Any] = {}  # globals and persistent objects (never mutated)
        self._own: dict[int, Any] = {}  # objects this pickle created (strong refs: stable ids)

    # ---- resolution ------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        try:
            obj = self._globals[(module, name)]
        except (KeyError, TypeError):
            raise PickleRefused(f"refusing to load global {module}.{name}") from None
        self._foreign[id(obj)] = obj
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise PickleRefused("persistent ids are not allowed in this pickle")
        obj = self._persistent(pid)
        self._foreign[id(obj)] = obj
        return obj

    def _created(self, obj: Any) -> Any:
        if id(obj) not in self._foreign:
            self._own[id(obj)] = obj
        return obj

    def _target(self, obj: Any, types: tuple[type, ...], op: str) -> Any:
        if id(obj) in self._foreign or self._own.get(id(obj)) is not obj:
            raise PickleRefused(
                f"{op} on {_describe(obj)}, which the pickle did not create (it would modify a "
                "global or shared object)"
            )
        if not isinstance(obj, types):
            raise PickleRefused(f"{op} on a {type(obj).__name__} is not allowed")
        return obj

    def _call(self, func: Any, args: tuple, kwargs: dict | None = None) -> Any:
        guard = self._guards.get(id(func)) if id(func) in self._foreign else None
        if guard is None:
            raise PickleRefused(f"calling {_describe(func)} is not allowed")
        if not isinstance(args, tuple):
            raise PickleRefused(f"call of {_describe(func)} with non-tuple arguments")
        return self._created(guard(*args, **(kwargs or {})))

    # ---- opcodes ---------------------------------------------------------------------------

    def _load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise PickleRefused(f"NEWOBJ_EX with keyword arguments for {_describe(cls)}")
        self.append(self._new(cls, args))

    def _new(self, cls: Any, args: Any) -> Any:
        make = self._newobj.get(id(cls)) if id(cls) in self._foreign else None
        if make is None:
            raise PickleRefused(f"creating an instance of {_describe(cls)} is not allowed")
        if not isinstance(args, tuple):
            raise PickleRefused(f"NEWOBJ of {_describe(cls)} with non-tuple arguments")
        return self._created(make(cls, *args))

    def _instantiate(self, klass, args):  # OBJ / INST (protocols 0 and 1)
        if not args and id(klass) in self._newobj and id(klass) in self._foreign:
            self.append(self._new(klass, ()))
        else:
            self.append(self._call(klass, tuple(args)))

    def _load_build(self):
        state = self.stack.pop()
        inst = self._target(self.stack[-1], self._build_types, "BUILD")
        setstate = getattr(type(inst), "__setstate__", None)
        if setstate is not None:
            if isinstance(inst, np.dtype):  # numpy trusts these states: a bad one corrupts
                _check_dtype_state(inst, state)
            elif isinstance(inst, np.ndarray):
                _check_array_state(state)
            else:  # e.g. scipy's coo_matrix: an attribute dict
                _check_attributes(state)
            setstate(inst, state)
            return
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        for part in (state, slotstate):
            if part is not None:
                _check_attributes(part)
        if state:
            inst.__dict__.update(state)
        for key, value in (slotstate or {}).items():
            setattr(inst, key, value)

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(self.stack[-1], _CONTAINER_TYPES, "SETITEM")[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._target(self.stack[-1], _CONTAINER_TYPES, "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_append(self):
        value = self.stack.pop()
        self._target(self.stack[-1], (list,), "APPEND").append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._target(self.stack[-1], (list,), "APPENDS").extend(items)

    def _load_additems(self):
        items = self.pop_mark()
        self._target(self.stack[-1], (set,), "ADDITEMS").update(items)

    def _refuse_ext(self):
        raise PickleRefused("the extension-registry opcodes (EXT1/2/4) are not allowed")

    def _made(loader):
        def _load(self):
            loader(self)
            self._created(self.stack[-1])

        return _load

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.APPEND[0]] = _load_append
    dispatch[pickle.APPENDS[0]] = _load_appends
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_ext
    for _op, _name in (
        (pickle.EMPTY_DICT, "load_empty_dictionary"),
        (pickle.EMPTY_LIST, "load_empty_list"),
        (pickle.EMPTY_SET, "load_empty_set"),
        (pickle.DICT, "load_dict"),
        (pickle.LIST, "load_list"),
    ):
        dispatch[_op[0]] = _made(getattr(pickle._Unpickler, _name))
    del _op, _name, _made


def _check_attributes(state: Any) -> None:
    """A BUILD attribute dict: plain, non-dunder names only (no ``__setstate__``, ``__class__``
    or ``__dict__`` planted on an object)."""
    if type(state) is not dict:
        raise PickleRefused(f"BUILD state is a {type(state).__name__}, not a dict")
    for key in state:
        if type(key) is not str or key.startswith("__"):
            raise PickleRefused(f"BUILD may not set the attribute {key!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """Accepts only the state numpy writes for a plain (non-structured) dtype: the byte order,
    and sizes / flags equal to the descriptor's own (``-1``: default)."""
    ok = (
        isinstance(state, tuple)
        and len(state) in (8, 9)
        and state[0] in (3, 4)
        and state[1] in ("<", ">", "|", "=")
        and state[2:5] == (None, None, None)
        and state[5] in (-1, dtype.itemsize)
        and state[6] in (-1, dtype.alignment)
        and _is_int(state[7])
        and state[7] == dtype.flags
    )
    if ok and len(state) == 9:  # version 4: datetime unit metadata only
        meta = state[8]
        ok = (
            dtype.kind in "Mm"
            and isinstance(meta, tuple)
            and len(meta) == 2
            and meta[0] is None
            and isinstance(meta[1], tuple)
            and len(meta[1]) == 4
            and isinstance(meta[1][0], bytes)
            and all(_is_int(v) for v in meta[1][1:])
        )
    if not ok:
        raise PickleRefused(f"BUILD: unsupported state for numpy dtype {dtype}: {state!r:.200}")


def _check_array_state(state: Any) -> None:
    """``(version, shape, dtype, fortran, data)`` with data matching shape x dtype."""
    ok = (
        isinstance(state, tuple)
        and len(state) == 5
        and state[0] == 1
        and isinstance(state[1], tuple)
        and all(_is_int(n) and n >= 0 for n in state[1])
        and isinstance(state[2], np.dtype)
        and isinstance(state[3], bool)
    )
    if ok:
        count = math.prod(state[1])
        data = state[4]
        if state[2].hasobject:
            ok = isinstance(data, list) and len(data) == count
        else:
            # Python 2 pickles carry the data as a latin-1 str (one char per byte)
            ok = (
                isinstance(data, bytes | bytearray | str) and len(data) == count * state[2].itemsize
            )
    if not ok:
        raise PickleRefused("BUILD: inconsistent numpy array state (shape, dtype and data differ)")


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if callable(obj):
        return f"the global {getattr(obj, '__qualname__', repr(obj))}"
    return f"a shared {type(obj).__module__}.{type(obj).__qualname__} object"


# --------------------------------------------------------------------------------------------
# zip archives: deflate bombs
# --------------------------------------------------------------------------------------------


class InflationLimitError(ValueError):
    """A zip member would inflate beyond the limit (a deflate bomb?) or beyond what it declares,
    or ``JAXFM_MAX_INFLATION`` is not a positive number. The message says which."""


def max_inflated_bytes(
    file_size: int, max_inflation: float | None = None, *, min_bytes: int = MIN_INFLATED_BYTES
) -> int:
    """How many bytes the compressed members of a ``file_size``-byte archive may inflate to.

    ``max_inflation`` (default: the ``JAXFM_MAX_INFLATION`` environment variable, else
    :data:`DEFAULT_MAX_INFLATION`) times the file size, and at least ``min_bytes``. Deflate
    compresses weights and dense features a few times at most and a run of zeros about 1000
    times; 0/1 features stored dense compress 100-250 times, which the dataset readers' larger
    floor allows for.

    Raises:
      InflationLimitError: ``JAXFM_MAX_INFLATION`` / ``max_inflation`` is not a positive number.
    """
    if max_inflation is None:
        env = os.environ.get("JAXFM_MAX_INFLATION", "")
        try:
            max_inflation = float(env) if env.strip() else DEFAULT_MAX_INFLATION
        except ValueError:
            raise InflationLimitError(
                f"JAXFM_MAX_INFLATION={env!r} is not a number (a ratio such as 10)"
            ) from None
        what = f"JAXFM_MAX_INFLATION={env!r}"
    else:
        what = f"max_inflation={max_inflation!r}"
    if not (isinstance(max_inflation, int | float) and 0 < max_inflation < math.inf):
        raise InflationLimitError(f"{what} is not a positive number (a ratio such as 10)")
    return max(int(min_bytes), int(max_inflation * file_size))


class ZipInflation:
    """What the members of one zip archive may still inflate to, checked before any is read.

    :meth:`claim` checks a member's declared size (``ZipInfo.file_size``, from the central
    directory): the compressed members of the archive share :func:`max_inflated_bytes` of its
    size, and a stored member cannot be larger than the file. Read claimed members with
    :func:`read_member` / :func:`open_member`, which stop at the declared size in case it lies.

    Args:
      where: the archive as messages name it (they start with it).
      file_size: the archive's size in bytes.
      max_inflation, min_bytes: see :func:`max_inflated_bytes`.
    """

    def __init__(
        self,
        where: str,
        file_size: int,
        max_inflation: float | None = None,
        *,
        min_bytes: int = MIN_INFLATED_BYTES,
    ):
        self.where = where
        self.file_size = int(file_size)
        self.limit = max_inflated_bytes(self.file_size, max_inflation, min_bytes=min_bytes)
        self.left = self.limit

    def claim(self, info: zipfile.ZipInfo) -> None:
        """Spends ``info``'s declared size; raises :class:`InflationLimitError` beyond the limit."""
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size > self.file_size:
                raise InflationLimitError(
                    f"{self.where}: member {info.filename!r} claims {info.file_size} bytes, the "
                    f"file has {self.file_size} (truncated or corrupt)"
                )
            return
        if info.file_size > self.left:
            raise InflationLimitError(
                f"{self.where}: member {info.filename!r} inflates to {info.file_size} bytes, "
                f"beyond the limit of {self.limit} bytes for a {self.file_size}-byte file (a zip "
                "bomb?); raise JAXFM_MAX_INFLATION (ratio to the file size) if the file is trusted"
            )
        self.left -= info.file_size


class _BoundedReader(io.RawIOBase):
    """Reads from ``fp`` and raises once more than ``limit`` bytes come out of it."""

    def __init__(self, fp, limit: int, what: str):
        super().__init__()
        self._fp, self._left, self._limit, self._what = fp, int(limit), int(limit), what

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        want = self._left + 1 if n is None or n < 0 else min(n, self._left + 1)
        data = self._fp.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise InflationLimitError(
                f"{self._what} inflates beyond the {self._limit} bytes it declares (a corrupt or "
                "hostile archive)"
            )
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fp.close()
        super().close()


def open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> io.RawIOBase:
    """A stream of a (claimed) member that raises :class:`InflationLimitError` if the member
    inflates beyond its declared size; ``what`` names the member in that message."""
    return _BoundedReader(zf.open(info), info.file_size, what)


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> bytes:
    """The bytes of a (claimed) member, never inflating more than its declared size."""
    chunks = []
    with open_member(zf, info, what) as fp:
        while chunk := fp.read(2**20):
            chunks.append(chunk)
    return b"".join(chunks)
