"""Fuzzing the restricted unpicklers with mutations of real pickles and spliced-in payloads.

For every mutation: nothing executes (a marker file is never created), no allow-listed global
changes, traced memory stays below a bound, and every failure is the reader's clean error
(``CheckpointFormatError`` for checkpoints, ``DatasetFormatError`` for datasets). The default
run takes a few seconds; ``-m slow`` runs a few thousand mutations per reader.
"""

import collections
import pickle
import sys
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse as sp
from crafted import build, call, glob, lit, slotstate

from converters import checkpoint as ckpt
from converters.errors import CheckpointFormatError
from jaxfm.data import graph_formats_io as gio
from jaxfm.data import restricted_pickle as rp
from jaxfm.data.graph_formats_io import load_restricted_pickle
from jaxfm.data.graph_validate import DatasetFormatError
from jaxfm.data.restricted_pickle import DEFAULT_BUDGET

MEMORY_BOUND = DEFAULT_BUDGET + 32 * 2**20
# pickletools / the unpickler decode mutated STRING opcodes with escape sequences Python warns of
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
_OPCODES = sorted({op.code.encode("latin1")[0] for op in __import__("pickletools").opcodes})


def _payloads(marker) -> list[bytes]:
    cmd = f"touch {marker}"
    run = b"(" + lit(cmd) + b"tR"
    return [
        glob("os", "system") + run,
        glob("posix", "system") + run,
        glob("builtins", "eval") + b"(" + lit(f"open({str(marker)!r}, 'w')") + b"tR",
        glob("builtins", "exec"),
        glob("builtins", "getattr"),
        glob("subprocess", "Popen"),
        lit("os") + lit("system") + b"\x93" + run,
        lit("builtins") + lit("__import__") + b"\x93",
        glob("torch", "FloatStorage"),
        glob("torch", "float32"),
        glob("collections", "OrderedDict"),
        glob("scipy.sparse", "csr_matrix"),
        glob("numpy", "dtype"),
        glob("copyreg", "_reconstructor"),
        build(glob("torch", "FloatStorage"), slotstate({"dtype": glob("torch", "float64")})),
        build(glob("scipy.sparse", "csr_matrix"), slotstate({"tocoo": glob("builtins", "list")})),
        call(glob("builtins", "bytearray"), lit(2**30)),
        call(glob("builtins", "list"), call(glob("builtins", "range"), lit(2**28))),
        b"b",  # BUILD
        b"u",  # SETITEMS
        b"s",  # SETITEM
        b"e",  # APPENDS
        b"R",  # REDUCE
        b"\x81",  # NEWOBJ
        b"\x82\x01",  # EXT1
        b"\x93",  # STACK_GLOBAL
        b"(",
        b"t",
        b"0",
    ]


def _mutate(data: bytes, rng: np.random.Generator, payloads: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if not out:
            break
        i = int(rng.integers(0, len(out)))
        op = int(rng.integers(0, 6))
        if op == 0:
            out[i] = int(rng.integers(0, 256))
        elif op == 1:
            out[i] = _OPCODES[int(rng.integers(0, len(_OPCODES)))]
        elif op == 2:
            out[i:i] = payloads[int(rng.integers(0, len(payloads)))]
        elif op == 3:
            del out[i : i + int(rng.integers(1, 16))]
        elif op == 4:
            j = min(len(out), i + int(rng.integers(1, 64)))
            out[j:j] = out[i:j]
        else:
            del out[i:]
    return bytes(out)


def _allow_listed() -> tuple[dict[tuple[str, ...], object], list[object]]:
    """Every global of the checkpoint and the dataset unpicklers (``{(module, name): object}``)
    and every other object they hand to a pickle: their BUILD types, container types and
    defaultdict factories - read from the readers' own tables, not listed here."""
    table = {("checkpoint", *k): v for k, v in ckpt.ALLOWED_GLOBALS.items()}
    table.update({("dataset", *k): v for k, v in gio._Policy(DEFAULT_BUDGET).globals.items()})
    others = [
        *ckpt._BUILD_TYPES,
        *gio._Policy(DEFAULT_BUDGET).build_types,
        *gio._BUILTINS,
        *(f for f in gio._DEFAULTDICT_FACTORIES if f is not None),
        *rp._CONTAINER_TYPES,
        *(np.dtype(n) for n in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1", "c8", "c16")),
    ]
    return table, others


def _identity(value) -> object:
    """``id(value)``, and for a mutable container the ids of what it holds."""
    if isinstance(value, list | tuple):
        return id(value), tuple(map(id, value))
    if isinstance(value, dict):
        return id(value), tuple((id(k), id(v)) for k, v in value.items())
    if isinstance(value, set):
        return id(value), frozenset(map(id, value))
    return id(value)


def _attributes(obj) -> dict[str, object]:
    """What a pickle could set on ``obj``: its ``__dict__``, slots and function attributes."""
    attrs = dict(getattr(obj, "__dict__", None) or {})
    for cls in type(obj).__mro__:
        slots = vars(cls).get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if hasattr(obj, slot):
                attrs[slot] = getattr(obj, slot)
    for name in ("__defaults__", "__kwdefaults__", "__code__", "__self__", "__wrapped__"):
        if hasattr(obj, name):
            attrs[name] = getattr(obj, name)
    return attrs


def _fingerprint(obj) -> object:
    """``{attribute: identity}`` of ``obj`` (of each class of its MRO, for a class): replacing
    any attribute, not only adding one, changes it."""
    if isinstance(obj, type):
        return {
            f"{c.__module__}.{c.__qualname__}": {k: _identity(v) for k, v in vars(c).items()}
            for c in obj.__mro__
        }
    state = {"type": id(type(obj)), **{k: _identity(v) for k, v in _attributes(obj).items()}}
    if isinstance(obj, np.dtype):
        state["dtype"] = (obj.str, obj.itemsize, obj.byteorder, obj.alignment, obj.flags,
                          obj.names, repr(obj.fields), repr(obj.metadata))  # fmt: skip
    return state


def _global_state() -> dict:
    """A fingerprint of everything a pickle could reach and mutate: every allow-listed global
    (its identity in the reader's table and in its module, and all its attributes' identities)
    and every other object the readers hand to a pickle."""
    table, others = _allow_listed()
    state = {}
    for key, obj in table.items():
        _, module, name = key
        state[key] = (id(obj), _fingerprint(obj))
        if module in sys.modules:  # the module's binding (never import one here)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy.core.* is a deprecated alias
                state[("binding", *key)] = id(getattr(sys.modules[module], name, None))
    for obj in others:
        state[("other", repr(obj), id(obj))] = _fingerprint(obj)
    return state


def _fuzz(read, seeds, error, n, seed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    payloads = _payloads(marker)
    rng = np.random.default_rng(seed)
    before = _global_state()
    unexpected = []
    tracemalloc.start()
    try:
        for k in range(n):
            data = _mutate(seeds[k % len(seeds)], rng, payloads)
            try:
                read(data)
            except error:
                pass
            except BaseException as e:  # anything else is a defect
                unexpected.append(f"{type(e).__name__}: {e} <- {data!r:.200}")
            assert not marker.exists(), f"mutation {k} executed code: {data!r}"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not unexpected, f"{len(unexpected)} unclean failures, e.g. {unexpected[:3]}"
    assert _global_state() == before, "an allow-listed global was modified"
    assert peak < MEMORY_BOUND, f"peak traced memory {peak / 2**20:.0f} MiB"


def _checkpoint_reader(fixtures_dir):
    archive = ckpt._TorchZip(fixtures_dir / "vit_timm_small" / "pytorch_model.bin")
    seed = bytes(archive.read_bytes(archive.prefix + "data.pkl"))

    def read(data):
        cache = {}
        ckpt._unpickle(data, "fuzz.bin", lambda pid: archive.load_storage(pid, cache))

    return read, [seed]


def _dataset_seeds():
    m = sp.random(6, 5, density=0.4, format="csr", random_state=0)
    obj = {
        "adj": m,
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "graph": collections.defaultdict(list, {0: [1, 2], 1: [0]}),
        "meta": collections.OrderedDict(name="tiny", classes=["a", "b"]),
        "y": np.array([0, 1, -1]),
    }
    return [pickle.dumps(obj, protocol=p) for p in (0, 2, 4)]


def _multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def _replace(obj, name: str, value) -> Callable[[], None]:
    """Sets ``obj.name`` as a BUILD would (frozen stand-ins included); returns the undo."""
    missing = object()
    old = vars(obj).get(name, missing) if isinstance(obj, type) else getattr(obj, name)
    setter = type.__setattr__ if isinstance(obj, type) else object.__setattr__
    setter(obj, name, value)
    if old is missing:
        return lambda: type.__delattr__(obj, name)
    return lambda: setter(obj, name, old)


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c))


@pytest.mark.parametrize(
    "replace",
    [
        # the example: a method csr_matrix inherits, replaced where it is defined
        lambda: _replace(_owner(sp.csr_matrix, "tocoo"), "tocoo", list),
        # an existing attribute of an allow-listed class, replaced in place
        lambda: _replace(sp.csr_matrix, "__doc__", "replaced"),
        # the global in its module (numpy's scalar), while the readers' tables keep the old one
        lambda: _replace(_multiarray(), "scalar", _multiarray()._reconstruct),
        # a slot of a converter stand-in (torch.FloatStorage's dtype)
        lambda: _replace(ckpt.ALLOWED_GLOBALS["torch", "FloatStorage"], "dtype", np.dtype("f8")),
        # a guard function's code
        lambda: _replace(ckpt.ALLOWED_GLOBALS["torch", "Size"], "__code__", (lambda: 0).__code__),
    ],
    ids=["inherited-method", "class-attribute", "module-binding", "slot", "code"],
)
def test_the_fingerprint_notices_a_replaced_attribute(replace):
    """No allow-listed object may change: replacing an attribute (not only adding one) shows."""
    before = _global_state()
    undo = replace()
    try:
        assert _global_state() != before
    finally:
        undo()
    assert _global_state() == before


def test_fuzz_checkpoint_unpickler(fixtures_dir, tmp_path, monkeypatch):
    read, seeds = _checkpoint_reader(fixtures_dir)
    read(seeds[0])  # the unmutated pickle reads
    _fuzz(read, seeds, CheckpointFormatError, 300, 0, tmp_path, monkeypatch)


def test_fuzz_dataset_unpickler(tmp_path, monkeypatch):
    seeds = _dataset_seeds()
    read = lambda data: load_restricted_pickle(data, "fuzz.pkl")
    assert (read(seeds[1])["adj"] != pickle.loads(seeds[1])["adj"]).nnz == 0
    _fuzz(read, seeds, DatasetFormatError, 300, 1, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [10, 11])
def test_fuzz_long(fixtures_dir, tmp_path, monkeypatch, seed):
    read, seeds = _checkpoint_reader(fixtures_dir)
    _fuzz(read, seeds, CheckpointFormatError, 4000, seed, tmp_path, monkeypatch)
    read = lambda data: load_restricted_pickle(data, "fuzz.pkl")
    _fuzz(read, _dataset_seeds(), DatasetFormatError, 4000, seed, tmp_path, monkeypatch)
