"""Issue 12 item 5: tiny hostile files must not make the readers allocate huge amounts.

Each input is a few hundred bytes to a few hundred KB and would allocate 256 MiB or more; the
readers must refuse it with a clean error while the traced peak stays small.
"""

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
from jaxfm.data.graph_formats_io import load_restricted_pickle
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
