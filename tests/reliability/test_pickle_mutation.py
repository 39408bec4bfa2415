"""Issue 12 item 4: a pickle may not change process-wide state (BUILD / SETITEMS on globals).

Also the STACK_GLOBAL tricks: globals assembled at run time or fetched through dotted names.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from crafted import (
    PROTO2,
    build,
    call,
    float_checkpoint,
    glob,
    lit,
    slotstate,
    state_dict,
    tensor,
    write_zip,
)

from converters.checkpoint import ALLOWED_GLOBALS, read_state_dict
from converters.errors import CheckpointFormatError, UnsafePickleError
from jaxfm.data.graph_formats_io import load_restricted_pickle
from jaxfm.data.graph_validate import DatasetFormatError

_BE_STATE = lit((3, ">", None, None, None, -1, -1, 0))  # numpy dtype state: big-endian


def _checkpoint_with(tmp_path, prelude: bytes):
    """A valid one-tensor checkpoint whose pickle first runs ``prelude`` (then POPs it)."""
    w = tensor("0", "FloatStorage", 2, 0, (2,), (1,))
    data = PROTO2 + prelude + b"0" + state_dict({"w": w}) + b"."
    return write_zip(tmp_path / "evil.bin", data, {"0": np.float32([1, 2]).tobytes()})


@pytest.mark.parametrize(
    "prelude",
    [
        # a storage class's dtype: every later FloatStorage would be read as float64
        build(glob("torch", "FloatStorage"), slotstate({"dtype": glob("torch", "float64")})),
        build(glob("torch", "FloatStorage"), b"}" + lit("dtype") + glob("torch", "int8") + b"s"),
        # a shared numpy dtype singleton (torch.float32 is numpy's float32 descriptor)
        build(glob("torch", "float32"), _BE_STATE),
        # a rebuild function's defaults
        build(
            glob("torch._utils", "_rebuild_tensor_v2"),
            slotstate({"__defaults__": lit((True, None, None))}),
        ),
        # SETITEMS into something the pickle did not create
        glob("collections", "OrderedDict") + b"(" + lit("k") + lit(1) + b"u",
    ],
    ids=["storage-dtype-slots", "storage-dtype-dict", "dtype-singleton", "defaults", "setitems"],
)
def test_checkpoint_pickle_cannot_modify_globals(tmp_path, prelude):
    stand_in = ALLOWED_GLOBALS[("torch", "FloatStorage")]
    before = (stand_in.dtype, np.dtype("<f4").str)
    path = _checkpoint_with(tmp_path, prelude)
    with pytest.raises(UnsafePickleError, match=r"evil\.bin.*(did not create|not allowed)"):
        read_state_dict(path)
    assert (stand_in.dtype, np.dtype("<f4").str) == before
    # every later read in the process is still right
    clean = float_checkpoint(tmp_path / "clean.bin", {"w": np.float32([1.5, -2.0])})
    np.testing.assert_array_equal(read_state_dict(clean)["w"], np.float32([1.5, -2.0]))


def test_checkpoint_stand_ins_are_read_only():
    stand_in = ALLOWED_GLOBALS[("torch", "FloatStorage")]
    with pytest.raises(AttributeError):
        stand_in.dtype = np.dtype("f8")


@pytest.fixture
def sparse_guard():
    """Restores scipy's CSR class if a broken implementation lets a pickle modify it."""
    saved = set(vars(sp.csr_matrix))
    yield
    for name in set(vars(sp.csr_matrix)) - saved:  # setattr on the class adds to its dict
        delattr(sp.csr_matrix, name)


@pytest.mark.parametrize(
    "target",
    [glob("scipy.sparse", "csr_matrix"), lit("scipy.sparse") + lit("csr_matrix") + b"\x93"],
    ids=["GLOBAL", "STACK_GLOBAL"],
)
def test_dataset_pickle_cannot_modify_classes(sparse_guard, target):
    tocoo = sp.csr_matrix.tocoo
    data = PROTO2 + build(target, slotstate({"tocoo": glob("builtins", "list")})) + b"."
    with pytest.raises(DatasetFormatError, match=r"g\.npz: .*did not create"):
        load_restricted_pickle(data, "g.npz")
    assert sp.csr_matrix.tocoo is tocoo
    m = sp.random(4, 3, density=0.5, format="csr", random_state=0)
    assert (m.tocoo().tocsr() != m).nnz == 0


def test_dataset_pickle_gets_its_own_dtype_never_the_shared_one():
    shared = call(glob("numpy", "dtype"), lit("f8"), lit(False), lit(False))  # copy=False
    data = PROTO2 + build(shared, _BE_STATE)
    out = load_restricted_pickle(data + b".", "d.npy")
    assert out.str == ">f8"  # the pickle's big-endian dtype ...
    assert np.dtype("f8").str == "<f8"  # ... and numpy's own float64 is unchanged


def test_dataset_pickle_cannot_plant_dunders_on_its_objects():
    od = glob("collections", "OrderedDict") + b")R"
    data = PROTO2 + build(od, b"}" + lit("__setstate__") + glob("builtins", "list") + b"s") + b"."
    with pytest.raises(DatasetFormatError, match="__setstate__"):
        load_restricted_pickle(data, "p.pkl")


@pytest.mark.parametrize(
    "data",
    [
        # module / name assembled at run time with an allowed function
        call(glob("builtins", "str"), lit(b"os"), lit("latin1"))
        + lit("system")
        + b"\x93"
        + b"("
        + lit("touch MARKER")
        + b"tR",
        # dotted attribute path through an allowed class (protocol 4 getattr chains)
        lit("collections") + lit("OrderedDict.__init__.__globals__") + b"\x93",
        lit("numpy") + lit("ndarray.__class__") + b"\x93",
        # memoised strings
        lit("os") + b"q\x00" + b"0" + b"h\x00" + lit("system") + b"\x93",
    ],
    ids=["runtime-string", "dotted-collections", "dotted-numpy", "memo"],
)
@pytest.mark.parametrize("reader", ["checkpoint", "dataset"])
def test_stack_global_tricks(tmp_path, monkeypatch, data, reader):
    monkeypatch.chdir(tmp_path)
    pickle_bytes = b"\x80\x04" + data + b"."
    if reader == "checkpoint":
        path = write_zip(tmp_path / "m.bin", pickle_bytes)
        with pytest.raises(CheckpointFormatError, match=r"m\.bin"):
            read_state_dict(path)
    else:
        with pytest.raises(DatasetFormatError, match=r"x\.pkl"):
            load_restricted_pickle(pickle_bytes, "x.pkl")
    assert not (tmp_path / "MARKER").exists()


def test_python2_array_pickle_still_reads():
    """Planetoid ``ind.*`` files: Python 2 pickles whose array data is a latin-1 BINSTRING."""
    raw = np.array([1, 9, 32], "<i4").tobytes()
    dtype = build(
        call(glob("numpy", "dtype"), lit("i4"), lit(0), lit(1)),
        lit((3, "<", None, None, None, -1, -1, 0)),
    )
    array = call(
        glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), lit((0,)), lit("b")
    )
    state = b"(" + lit(1) + lit((3,)) + dtype + lit(False) + b"T" + len(raw).to_bytes(4, "little")
    data = PROTO2 + build(array, state + raw + b"t") + b"."
    out = load_restricted_pickle(data, "ind.toy.x")
    assert out.dtype == np.dtype("<i4") and out.tolist() == [1, 9, 32]
