"""Fuzzing the restricted unpicklers with mutations of real pickles and spliced-in payloads.

For every mutation: nothing executes (a marker file is never created), no allow-listed global
changes, traced memory stays below a bound, and every failure is the reader's clean error
(``CheckpointFormatError`` for checkpoints, ``DatasetFormatError`` for datasets). The default
run takes a few seconds; ``-m slow`` runs a few thousand mutations per reader.
"""

import collections
import pickle
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from crafted import build, call, glob, lit, slotstate

from converters import checkpoint as ckpt
from converters.errors import CheckpointFormatError
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


def _global_state() -> dict:
    """A fingerprint of everything a pickle could reach and mutate."""
    state = {}
    for key, obj in ckpt.ALLOWED_GLOBALS.items():
        if isinstance(obj, np.dtype):
            state[key] = (obj.str, obj.itemsize, obj.byteorder)
        elif isinstance(obj, type):
            state[key] = tuple(sorted(vars(obj)))
        elif hasattr(obj, "__defaults__"):
            state[key] = (obj.__defaults__, obj.__kwdefaults__, tuple(sorted(vars(obj))))
        else:
            state[key] = (repr(obj), str(getattr(obj, "dtype", "")))
    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, np.ndarray, collections.OrderedDict):
        state[cls.__name__] = tuple(sorted(vars(cls)))
    for name in ("f4", "f8", "i8", "u1"):
        state[name] = np.dtype(name).str
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
