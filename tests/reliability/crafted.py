"""Hand-made hostile inputs for the reliability suite (pickle opcodes written byte by byte).

Nothing here needs PyTorch: the torch globals a checkpoint names need not be importable.
"""

from __future__ import annotations

import io
import pickle
import tracemalloc
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PROTO2 = b"\x80\x02"


def lit(obj) -> bytes:
    """Opcodes pushing a plain literal (no memo, no PROTO / STOP)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.fast = True
    p.dump(obj)
    return buf.getvalue()[2:-1]


def glob(module: str, name: str) -> bytes:
    """GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` as MARK args TUPLE REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def build(target: bytes, state: bytes) -> bytes:
    """``target`` then BUILD with ``state`` (leaves the target on the stack)."""
    return target + state + b"b"


def slotstate(items: dict[str, bytes]) -> bytes:
    """A ``(None, {name: value})`` BUILD state: BUILD then calls ``setattr`` for each name."""
    body = b"".join(lit(k) + v for k, v in items.items())
    return b"N}(" + body + b"u\x86"


def storage_pid(key: str, storage: str, numel: int) -> bytes:
    fields = lit("storage") + glob("torch", storage) + lit(key) + lit("cpu") + lit(numel)
    return b"(" + fields + b"tQ"


def tensor(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        storage_pid(key, storage, numel),
        lit(offset),
        lit(tuple(size)),
        lit(tuple(stride)),
        lit(False),
        glob("collections", "OrderedDict") + b")R",
    )


def state_dict(items: dict[str, bytes]) -> bytes:
    """``OrderedDict`` with ``{name: value-opcodes}`` set by SETITEMS."""
    body = b"".join(lit(k) + v for k, v in items.items())
    return glob("collections", "OrderedDict") + b")R" + (b"(" + body + b"u" if items else b"")


def write_zip(
    path: Path,
    pickle_bytes: bytes,
    storages: dict[str, bytes] | None = None,
    *,
    prefix: str = "archive",
    compress: bool = False,
) -> Path:
    """A ``torch.save``-layout zip: ``<prefix>/data.pkl`` + ``<prefix>/data/<key>``."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"{prefix}/data/{key}", raw)
    return path


def float_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A well-formed zip checkpoint of float32 tensors (one storage each)."""
    items, storages = {}, {}
    for i, (name, arr) in enumerate(arrays.items()):
        arr = np.ascontiguousarray(arr, np.float32)
        stride = tuple(int(np.prod(arr.shape[j + 1 :])) for j in range(arr.ndim))
        items[name] = tensor(str(i), "FloatStorage", arr.size, 0, arr.shape, stride)
        storages[str(i)] = arr.tobytes()
    return write_zip(path, PROTO2 + state_dict(items) + b".", storages)


@contextmanager
def peak_traced_bytes():
    """``with peak_traced_bytes() as peak: ...``; then ``peak()`` is the traced peak (bytes).

    numpy, bytes and bytearray allocations are traced; memory maps are not (they are not
    allocations).
    """
    tracemalloc.start()
    tracemalloc.reset_peak()
    result: list[int] = []
    try:
        yield lambda: result[0]
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def snapshot_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def raises_clean(fn: Callable, error: type[BaseException]) -> BaseException:
    """Calls ``fn`` and returns the ``error`` it raises (fails on any other outcome)."""
    try:
        fn()
    except error as e:
        return e
    raise AssertionError(f"{fn} did not raise {error.__name__}")
