"""Issue 12 item 5: tiny hostile files must not make the readers allocate huge amounts.

Each input is a few hundred bytes to a few hundred KB and would allocate 256 MiB or more; the
readers must refuse it with a clean error while the traced peak stays small.
"""

import io
import struct
import time
import zipfile

import numpy as np
import pytest
from crafted import (
    PROTO2,
    call,
    glob,
    lit,
    peak_traced_bytes,
    state_dict,
    tensor,
    write_zip,
)

from converters import checkpoint
from converters.checkpoint import read_state_dict
from converters.errors import CheckpointFormatError
from jaxfm.data.graph_formats_io import load_restricted_pickle, read_npz, read_plain_npz
from jaxfm.data.graph_validate import DatasetFormatError
from jaxfm.data.restricted_pickle import DEFAULT_BUDGET

BOUND = 32 * 2**20  # traced bytes any refusal may cost
HUGE = 2**28  # 256 MiB


def _check_refused(read, error, match, bound=BOUND):
    with peak_traced_bytes() as peak:
        with pytest.raises(error, match=match):
            read()
    assert peak() < bound, f"refusing the file allocated {peak() / 2**20:.0f} MiB"


def test_stride_zero_tensor(tmp_path):
    """A 1-element storage viewed as 2**26 elements with stride 0: a 256 MiB copy."""
    t = tensor("0", "FloatStorage", 1, 0, (HUGE // 4,), (0,))
    path = write_zip(tmp_path / "s.bin", PROTO2 + state_dict({"w": t}) + b".", {"0": b"\0" * 4})
    assert path.stat().st_size < 1024
    _check_refused(lambda: read_state_dict(path), CheckpointFormatError, r"s\.bin.*needs")


def test_storage_larger_than_its_member(tmp_path):
    t = tensor("0", "FloatStorage", HUGE // 4, 0, (HUGE // 4,), (1,))
    path = write_zip(tmp_path / "m.bin", PROTO2 + state_dict({"w": t}) + b".", {"0": b"\0" * 8})
    _check_refused(lambda: read_state_dict(path), CheckpointFormatError, r"m\.bin.*storage")


@pytest.mark.parametrize(
    "obj",
    [
        call(glob("builtins", "bytearray"), lit(HUGE)),
        call(glob("builtins", "bytes"), lit(HUGE)),
        glob("builtins", "bytearray") + b"(" + lit(HUGE) + b"t\x81",  # NEWOBJ
        call(glob("torch", "Size"), call(glob("builtins", "bytes"), lit(HUGE))),
        call(glob("numpy", "dtype"), lit(f"V{HUGE}")),
    ],
    ids=["bytearray", "bytes", "newobj", "nested", "void-dtype"],
)
def test_checkpoint_constructor_with_huge_argument(tmp_path, obj):
    data = PROTO2 + state_dict({"junk": obj}) + b"."
    path = write_zip(tmp_path / "g.bin", data)
    _check_refused(lambda: read_state_dict(path), CheckpointFormatError, r"g\.bin.*(limit|alloc)")


@pytest.mark.parametrize(
    "obj",
    [
        call(glob("builtins", "bytearray"), lit(HUGE)),
        call(glob("builtins", "list"), call(glob("builtins", "range"), lit(HUGE // 8))),
        call(
            glob("numpy.core.multiarray", "_reconstruct"),
            glob("numpy", "ndarray"),
            lit((HUGE,)),
            lit(b"b"),
        ),
        call(
            glob("numpy.core.multiarray", "scalar"),
            call(glob("numpy", "dtype"), lit(f"V{HUGE}"), lit(False), lit(True)),
        ),
    ],
    ids=["bytearray", "list-range", "reconstruct", "scalar"],
)
def test_dataset_constructor_with_huge_argument(obj):
    data = PROTO2 + obj + b"."
    _check_refused(
        lambda: load_restricted_pickle(data, "g.npz"), DatasetFormatError, r"g\.npz.*limit"
    )


def _bomb(path, member: str, size: int, pickle_bytes: bytes | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        if pickle_bytes is not None:
            z.writestr("archive/data.pkl", pickle_bytes, zipfile.ZIP_STORED)
        with z.open(member, "w", force_zip64=True) as f:
            chunk = b"\0" * 2**20
            for _ in range(size // len(chunk)):
                f.write(chunk)
        z.writestr("archive/byteorder", "little", zipfile.ZIP_STORED)
    return path


def test_deflate_bomb_pickle(tmp_path):
    path = _bomb(tmp_path / "bomb.bin", "archive/data.pkl", HUGE)
    assert path.stat().st_size < 2**20
    _check_refused(lambda: read_state_dict(path), CheckpointFormatError, r"bomb\.bin.*inflates")


def test_deflate_bomb_storage(tmp_path):
    t = tensor("0", "FloatStorage", HUGE // 4, 0, (HUGE // 4,), (1,))
    path = _bomb(tmp_path / "b.bin", "archive/data/0", HUGE, PROTO2 + state_dict({"w": t}) + b".")
    _check_refused(lambda: read_state_dict(path), CheckpointFormatError, r"b\.bin.*inflates")


def test_inflation_limit_is_configurable(tmp_path, monkeypatch):
    assert checkpoint.max_inflated_bytes(10**9, 2.0) == 2 * 10**9
    assert checkpoint.max_inflated_bytes(10, 2.0) == 16 * 2**20  # a floor for small files
    monkeypatch.setenv("JAXFM_MAX_INFLATION", "3")
    assert checkpoint.max_inflated_bytes(10**9) == 3 * 10**9
    monkeypatch.setenv("JAXFM_MAX_INFLATION", "lots")
    with pytest.raises(CheckpointFormatError, match="JAXFM_MAX_INFLATION"):
        checkpoint.max_inflated_bytes(10)
    # a legitimately deflated checkpoint still reads
    monkeypatch.delenv("JAXFM_MAX_INFLATION")
    w = np.arange(6, dtype=np.float32)
    t = tensor("0", "FloatStorage", 6, 0, (2, 3), (3, 1))
    path = write_zip(
        tmp_path / "z.bin", PROTO2 + state_dict({"w": t}) + b".", {"0": w.tobytes()}, compress=True
    )
    np.testing.assert_array_equal(read_state_dict(path)["w"], w.reshape(2, 3))


def test_many_allocations_below_the_limit_add_up():
    one = call(glob("builtins", "bytearray"), lit(HUGE // 8))  # 32 MiB each, 8 of them
    data = PROTO2 + b"(" + one * 8 + b"l."
    load = lambda: load_restricted_pickle(data, "g.pkl")
    _check_refused(load, DatasetFormatError, "limit", bound=DEFAULT_BUDGET + 2**20)


def test_large_legitimate_objects_still_load():
    """The limit scales with the pickle: data carried in the file is not a bomb."""
    import pickle

    blob = bytearray(np.random.default_rng(0).bytes(48 * 2**20))
    data = pickle.dumps({"blob": blob, "x": np.zeros(2**20, np.float32)}, protocol=4)
    out = load_restricted_pickle(data, "big.pkl")
    assert out["blob"] == blob and out["x"].shape == (2**20,)


def _npz_bomb(path, size: int = HUGE, compress: bool = True):
    """An ``.npz`` whose member ``x.npy`` is ``size`` bytes of float64 zeros, streamed into the
    zip (fast and small: zeros deflate about 1000x)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (size // 8,)}
    )
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("label.npy", _npy(np.arange(3)))
        with z.open("x.npy", "w") as f:
            f.write(header.getvalue())
            chunk = bytes(2**20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


@pytest.mark.parametrize("reader", [read_npz, read_plain_npz], ids=["read_npz", "read_plain_npz"])
def test_deflate_bomb_dataset_npz(tmp_path, reader):
    """A ~260 KB ``.npz`` that inflates to 256 MiB: refused from its declared sizes, at once."""
    path = _npz_bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 2**20
    t0 = time.perf_counter()
    _check_refused(lambda: reader(path), DatasetFormatError, r"bomb\.npz: member 'x\.npy' inflates")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("reader", [read_npz, read_plain_npz], ids=["read_npz", "read_plain_npz"])
def test_deflate_bomb_dataset_npz_with_a_lying_header(tmp_path, reader):
    """The central directory declares 4 KB for the 256 MiB member: inflating stops there."""
    path = _npz_bomb(tmp_path / "liar.npz")
    data = bytearray(path.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central directory entry: x.npy
    assert data[entry + 46 : entry + 46 + 5] == b"x.npy"
    data[entry + 24 : entry + 28] = struct.pack("<I", 4096)  # its uncompressed size
    path.write_bytes(bytes(data))
    _check_refused(lambda: reader(path), DatasetFormatError, r"liar\.npz \(member x\.npy\)")


def test_dataset_npz_inflation_limit_is_configurable(tmp_path, monkeypatch):
    from jaxfm.data import graph_formats_io as gio
    from jaxfm.data import restricted_pickle as rp

    monkeypatch.setattr(gio, "NPZ_MIN_INFLATED_BYTES", 2**20)  # the floor, for a small case
    path = _npz_bomb(tmp_path / "zeros.npz", size=4 * 2**20)  # 4 MiB of zeros in ~5 KB
    with pytest.raises(DatasetFormatError, match=r"zeros\.npz: member 'x\.npy' inflates"):
        read_npz(path)
    assert read_npz(path, max_inflation=2000)["x"].shape == (2**19,)
    monkeypatch.setenv("JAXFM_MAX_INFLATION", "2000")
    assert read_plain_npz(path)["x"].shape == (2**19,)
    # one rule for checkpoints and datasets
    assert checkpoint.max_inflated_bytes(10**9) == rp.max_inflated_bytes(10**9) == 2000 * 10**9
    for bad in ("lots", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("JAXFM_MAX_INFLATION", bad)
        with pytest.raises(DatasetFormatError, match=rf"zeros\.npz: JAXFM_MAX_INFLATION='{bad}'"):
            read_npz(path)
    monkeypatch.delenv("JAXFM_MAX_INFLATION")
    # stored members are not bombs (nor larger than the file)
    stored = _npz_bomb(tmp_path / "stored.npz", size=4 * 2**20, compress=False)
    assert read_npz(stored)["x"].shape == (2**19,)


def test_highly_compressible_real_features_still_load(tmp_path):
    """Dense 0/1 bag-of-words features compress 100-250x (heterophilous-graphs' chameleon.npz:
    0.17 MB holding 21 MiB); the default limit lets them through."""
    x = (np.random.default_rng(0).random((2300, 2300)) < 0.005).astype(np.float32)  # 20 MiB
    np.savez_compressed(tmp_path / "bow.npz", node_features=x, node_labels=np.arange(2300) % 5)
    assert x.nbytes / (tmp_path / "bow.npz").stat().st_size > 50
    np.testing.assert_array_equal(read_npz(tmp_path / "bow.npz")["node_features"], x)
    np.testing.assert_array_equal(read_plain_npz(tmp_path / "bow.npz")["node_features"], x)


def test_deflate_bomb_checkpoint_with_a_lying_header(tmp_path):
    """The central directory declares 4 KB for a 256 MiB pickle member: inflating stops there."""
    path = _bomb(tmp_path / "liar.bin", "archive/data.pkl", HUGE)
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")  # the first central directory entry: archive/data.pkl
    assert data[entry + 46 : entry + 46 + 16] == b"archive/data.pkl"
    assert struct.unpack("<I", data[entry + 24 : entry + 28]) == (HUGE,)
    data[entry + 24 : entry + 28] = struct.pack("<I", 4096)  # its uncompressed size
    path.write_bytes(bytes(data))
    _check_refused(lambda: read_state_dict(path), CheckpointFormatError, r"liar\.bin")
