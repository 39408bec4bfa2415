"""Torch-free checkpoint reading: PyTorch zip + restricted unpickler, safetensors."""

import io
import json
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from converters import checkpoint as ckpt
from converters.checkpoint import read_pickle_tree, read_state_dict
from converters.errors import CheckpointFormatError, ConversionError, UnsafePickleError

# ------------------------------------------------------------------------------------------
# A minimal torch.save writer (opcodes by hand: no torch, and globals need not be importable)
# ------------------------------------------------------------------------------------------

_DTYPE_STORAGE = {
    np.dtype("<f4"): "FloatStorage",
    np.dtype("<f8"): "DoubleStorage",
    np.dtype("<f2"): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype("<i8"): "LongStorage",
    np.dtype(bool): "BoolStorage",
    np.dtype("u1"): "ByteStorage",
}


def _lit(obj) -> bytes:
    """Opcodes pushing a plain literal (no memo, no PROTO/STOP)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.fast = True
    p.dump(obj)
    return buf.getvalue()[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _ordered_dict(items: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(k + v for k, v in items)
    return _global("collections", "OrderedDict") + b")R" + (b"(" + body + b"u" if items else b"")


def tensor_ops(key: str, storage_type: str, numel: int, offset: int, size, stride) -> bytes:
    pid = b"(" + _lit("storage") + _global("torch", storage_type) + _lit(key) + _lit("cpu")
    pid += _lit(numel) + b"tQ"
    args = pid + _lit(offset) + _lit(tuple(size)) + _lit(tuple(stride)) + _lit(False)
    args += _ordered_dict([])
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def contiguous(shape):
    return tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))


def write_torch_zip(
    path,
    storages: dict[str, np.ndarray],
    tensors: dict[str, tuple],
    *,
    prefix: str = "archive",
    byteorder: str = "little",
    wrap: str | None = None,
    pickle_bytes: bytes | None = None,
):
    """``tensors``: name -> (storage key, offset, size, stride). ``wrap``: nest under a key."""
    items = []
    for name, (key, offset, size, stride) in tensors.items():
        arr = storages[key]
        items.append(
            (_lit(name), tensor_ops(key, _DTYPE_STORAGE[arr.dtype], arr.size, offset, size, stride))
        )
    body = _ordered_dict(items)
    if wrap is not None:  # {wrap: state_dict, "epoch": 3}
        body = b"}(" + _lit(wrap) + body + _lit("epoch") + _lit(3) + b"u"
    data = pickle_bytes if pickle_bytes is not None else b"\x80\x02" + body + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data)
        z.writestr(f"{prefix}/byteorder", byteorder)
        for key, arr in storages.items():
            order = "<" if byteorder == "little" else ">"
            if arr.dtype == np.dtype(ml_dtypes.bfloat16):
                arr = arr.view(np.uint16)  # swap bfloat16 bytes as 16-bit integers
            z.writestr(f"{prefix}/data/{key}", arr.astype(arr.dtype.newbyteorder(order)).tobytes())
        z.writestr(f"{prefix}/version", "3\n")
    return path


def simple_checkpoint(path, **kw):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    storages = {"0": w.reshape(-1), "1": b}
    tensors = {"fc.weight": ("0", 0, (4, 3), (3, 1)), "fc.bias": ("1", 0, (4,), (1,))}
    return write_torch_zip(path, storages, tensors, **kw), {"fc.weight": w, "fc.bias": b}


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------


def test_reads_handwritten_zip(tmp_path):
    path, expected = simple_checkpoint(tmp_path / "m.bin")
    state = read_state_dict(path)
    assert state.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(state[k], expected[k])
        assert state[k].dtype == np.float32


def test_views_offsets_strides_and_shared_storage(tmp_path):
    base = np.arange(24, dtype=np.float32)
    storages = {"s": base}
    tensors = {
        "whole": ("s", 0, (4, 6), (6, 1)),
        "slice": ("s", 5, (3,), (1,)),  # offset view
        "transposed": ("s", 0, (6, 4), (1, 6)),  # non-contiguous (a .T view)
        "strided": ("s", 1, (2, 3), (12, 2)),
        "expanded": ("s", 2, (3, 2), (0, 1)),  # stride 0 (broadcast)
        "empty": ("s", 0, (0, 5), (5, 1)),
        "scalar": ("s", 7, (), ()),
    }
    state = read_state_dict(write_torch_zip(tmp_path / "v.pt", storages, tensors))
    np.testing.assert_array_equal(state["whole"], base.reshape(4, 6))
    np.testing.assert_array_equal(state["slice"], base[5:8])
    np.testing.assert_array_equal(state["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(state["strided"], base[1:].reshape(-1)[[[0, 2, 4], [12, 14, 16]]])
    np.testing.assert_array_equal(state["expanded"], np.broadcast_to(base[2:4], (3, 2)))
    assert state["empty"].shape == (0, 5)
    assert state["scalar"].shape == () and state["scalar"] == 7
    # views of one storage share memory (no copy per tensor)
    assert np.shares_memory(state["whole"], state["slice"])


@pytest.mark.parametrize(
    "dtype", [np.float16, ml_dtypes.bfloat16, np.int64, np.bool_, np.float64, np.uint8]
)
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_dtypes_and_byteorder(tmp_path, dtype, byteorder):
    values = (np.arange(6) % 2 == 0) if dtype is np.bool_ else np.arange(-3, 3) * 1.5
    arr = np.asarray(values).astype(dtype) if dtype is not np.uint8 else np.arange(6, dtype=dtype)
    path = write_torch_zip(
        tmp_path / "d.pt", {"0": arr}, {"t": ("0", 0, (2, 3), (3, 1))}, byteorder=byteorder
    )
    out = read_state_dict(path)["t"]
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr.reshape(2, 3))


def test_nested_state_dict_and_module_prefix(tmp_path):
    path, expected = simple_checkpoint(tmp_path / "n.pt", wrap="model")
    assert isinstance(read_pickle_tree(path)["epoch"], int)
    state = read_state_dict(path)
    assert sorted(state) == sorted(expected)
    tree = {"state_dict": {"module.a": np.zeros(2), "module.b": np.ones(1)}, "step": 5}
    assert sorted(ckpt.extract_state_dict(tree)) == ["a", "b"]
    with pytest.raises(CheckpointFormatError, match="no tensors"):
        ckpt.extract_state_dict({"epoch": 1}, name="x.pt")


def test_fixture_checkpoints_match_torch_load(fixtures_dir, shared_dir):
    torch = pytest.importorskip("torch")
    fx = shared_dir / "fixtures"
    for rel in ["vit_timm_small/pytorch_model.bin", "brainlm_small/pytorch_model.bin"]:
        ours = read_state_dict(fx / rel)
        ref = torch.load(fx / rel, weights_only=True, map_location="cpu")
        assert ours.keys() == ref.keys()
        for k, v in ref.items():
            np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


def test_torch_save_cross_check(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(20, dtype=torch.float32)
    state = {
        "w": torch.nn.Parameter(torch.randn(3, 4)),
        "view": base[3:9].view(2, 3),
        "shared": base,
        "t": torch.randn(4, 5).t(),
        "half": torch.randn(3).half(),
        "bf16": torch.randn(5).bfloat16(),
        "long": torch.arange(4),
        "bool": torch.tensor([True, False]),
    }
    path = tmp_path / "x.pth"
    torch.save({"model": state, "epoch": 2, "lr": 0.1, "name": "run"}, path)
    ours = read_state_dict(path)
    ref = torch.load(path, weights_only=True)["model"]
    assert ours.keys() == ref.keys()
    for k, v in ref.items():
        v = v.detach()
        expect = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        got = ours[k].astype(np.float32) if v.dtype == torch.bfloat16 else ours[k]
        np.testing.assert_array_equal(got, expect, err_msg=k)


def test_safetensors_roundtrip(tmp_path):
    from safetensors.numpy import save_file

    tensors = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1, 2], np.int64),
        "c": np.ones((2, 2), ml_dtypes.bfloat16),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    out = read_state_dict(tmp_path / "m.safetensors")
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype
        np.testing.assert_array_equal(out[k], v)


# ------------------------------------------------------------------------------------------
# refusing bad files
# ------------------------------------------------------------------------------------------


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(CheckpointFormatError, match=r"nope\.bin.*does not exist"):
        read_state_dict(tmp_path / "nope.bin")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=r"empty\.pt.*empty"):
        read_state_dict(tmp_path / "empty.pt")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_zip(tmp_path, keep):
    path, _ = simple_checkpoint(tmp_path / "t.bin")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointFormatError, match=r"t\.bin"):
        read_state_dict(path)


def test_truncated_fixture_checkpoint(tmp_path, shared_dir):
    raw = (shared_dir / "fixtures/vit_timm_small/pytorch_model.bin").read_bytes()
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin.*truncated"):
        read_state_dict(path)


def test_corrupt_storage_crc(tmp_path):
    path, _ = simple_checkpoint(tmp_path / "c.bin")
    raw = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("archive/data/0")
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    raw[info.header_offset + 30 + name_len + extra_len + 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match=r"c\.bin.*CRC"):
        read_state_dict(path)


def test_storage_too_small_and_missing_member(tmp_path):
    arr = np.zeros(4, np.float32)
    path = write_torch_zip(tmp_path / "s.bin", {"0": arr}, {"t": ("0", 2, (3,), (1,))})
    with pytest.raises(CheckpointFormatError, match=r"s\.bin.*element 4"):
        read_state_dict(path)
    data = b"\x80\x02" + _ordered_dict(
        [(_lit("t"), tensor_ops("9", "FloatStorage", 4, 0, (4,), (1,)))]
    )
    path = write_torch_zip(tmp_path / "m.bin", {"0": arr}, {}, pickle_bytes=data + b".")
    with pytest.raises(CheckpointFormatError, match=r"m\.bin.*archive/data/9"):
        read_state_dict(path)


def test_truncated_safetensors(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"a": np.ones((64, 64), np.float32)}, str(path))
    raw = path.read_bytes()
    for cut in (4, 20, len(raw) - 100):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*truncated"):
            read_state_dict(path)


def test_not_a_checkpoint_and_legacy(tmp_path):
    (tmp_path / "x.bin").write_text("hello world, not a checkpoint")
    with pytest.raises(CheckpointFormatError, match=r"x\.bin"):
        read_state_dict(tmp_path / "x.bin")
    (tmp_path / "old.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="legacy"):
        read_state_dict(tmp_path / "old.pt")
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as z:
        z.writestr("foo.txt", "x")
    with pytest.raises(CheckpointFormatError, match=r"not a torch\.save checkpoint"):
        read_state_dict(tmp_path / "z.pt")


# ------------------------------------------------------------------------------------------
# malicious pickles
# ------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def evil_pickle(sentinel, protocol: int, how: str = "os.system") -> bytes:
    import builtins
    import os

    if how == "os.system":
        obj = _Evil(os.system, f"touch {sentinel}")
    elif how == "builtins.eval":
        obj = _Evil(builtins.eval, f"open({str(sentinel)!r}, 'w').close()")
    else:  # builtins.exec
        obj = _Evil(builtins.exec, f"open({str(sentinel)!r}, 'w').close()")
    return pickle.dumps({"fc.weight": obj}, protocol=protocol)


def write_evil_checkpoint(path, sentinel, protocol=2, how="os.system"):
    write_torch_zip(path, {}, {}, pickle_bytes=evil_pickle(sentinel, protocol, how))
    return path


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    ("how", "global_name"),
    [("os.system", "system"), ("builtins.eval", "eval"), ("exec", "exec")],
)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol, how, global_name):
    sentinel = tmp_path / "pwned"
    path = write_evil_checkpoint(tmp_path / "evil.bin", sentinel, protocol, how)
    with pytest.raises(UnsafePickleError, match=global_name) as info:
        read_state_dict(path)
    assert global_name in info.value.global_name
    assert "evil.bin" in str(info.value)
    assert isinstance(info.value, ConversionError)
    assert not sentinel.exists()


def test_unpickler_gate_without_static_scan(tmp_path, monkeypatch):
    """Even if the static opcode scan missed a global, find_class refuses it."""
    sentinel = tmp_path / "pwned"
    path = write_evil_checkpoint(tmp_path / "evil.bin", sentinel, 2, "builtins.eval")
    monkeypatch.setattr(ckpt, "scan_pickle_globals", lambda data, name="": [])
    with pytest.raises(UnsafePickleError, match=r"builtin\w*\.eval"):
        read_state_dict(path)
    assert not sentinel.exists()


def test_other_refused_constructs(tmp_path):
    # a global that is allowed as a *value* but called with a non-latin1 codec
    data = b"\x80\x02" + _global("_codecs", "encode") + _lit(("x", "rot13")) + b"R."
    with pytest.raises(CheckpointFormatError):
        read_pickle_tree(write_torch_zip(tmp_path / "c.bin", {}, {}, pickle_bytes=data))
    # extension-registry opcodes can name any global
    data = b"\x80\x02\x82\x01."
    with pytest.raises(UnsafePickleError, match="EXT1"):
        read_pickle_tree(write_torch_zip(tmp_path / "e.bin", {}, {}, pickle_bytes=data))
    # STACK_GLOBAL built from something other than literal strings
    data = b"\x80\x04" + _lit("os") + b"\x8c\x06system" + b"\x85" + b"\x93."
    with pytest.raises(UnsafePickleError):
        read_pickle_tree(write_torch_zip(tmp_path / "s.bin", {}, {}, pickle_bytes=data))
    # a malformed (truncated) pickle stream
    good = b"\x80\x02" + _ordered_dict([(_lit("a"), _lit(1))]) + b"."
    with pytest.raises(CheckpointFormatError, match="malformed or truncated"):
        read_pickle_tree(write_torch_zip(tmp_path / "p.bin", {}, {}, pickle_bytes=good[:-5]))


def test_allowed_globals_are_own_implementations():
    for (module, _name), value in ckpt.ALLOWED_GLOBALS.items():
        assert not getattr(value, "__module__", "").startswith("torch"), module
    assert ("os", "system") not in ckpt.ALLOWED_GLOBALS
    assert ("builtins", "eval") not in ckpt.ALLOWED_GLOBALS
    assert ("builtins", "getattr") not in ckpt.ALLOWED_GLOBALS
    json.dumps(sorted(f"{m}.{n}" for m, n in ckpt.ALLOWED_GLOBALS))


def test_released_mapped_pages_read_back_from_the_file(tmp_path):
    """write_model_dir drops a zip checkpoint's mapped pages once copied: views stay valid."""
    from converters.base import _release_mapped_pages

    base = np.arange(4096 * 3, dtype=np.float32)
    path = write_torch_zip(tmp_path / "p.bin", {"s": base}, {"w": ("s", 0, (3, 4096), (4096, 1))})
    w = read_state_dict(path)["w"]
    view = w.T  # strided, as the transposing rules produce
    _release_mapped_pages(view)
    np.testing.assert_array_equal(view, base.reshape(3, 4096).T)
    np.testing.assert_array_equal(w, base.reshape(3, 4096))
