"""Issue 12 item 10 and issue 13: safetensors through the library; the sharded index stays in SRC.

The readers refuse overlapping, out-of-order and out-of-file tensors and non-integer shapes
(which the hand-written parsers accepted); model directories round-trip bfloat16 and carry
``__metadata__``.
"""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from converters.checkpoint import read_state_dict
from converters.errors import CheckpointFormatError, ConversionError
from jaxfm.model_dir import load_model_dir, save_model_dir

DATA = np.arange(4, dtype=np.float32).tobytes()  # 16 bytes


def _raw_safetensors(path, header: dict, data: bytes = DATA):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _t(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


BAD_HEADERS = {
    "overlap": {"a": _t([3], 0, 12), "b": _t([2], 8, 16)},
    "same-bytes": {"a": _t([2], 0, 8), "b": _t([2], 0, 8), "c": _t([2], 8, 16)},
    "reversed": {"a": _t([2], 8, 0), "b": _t([2], 8, 16)},
    "fractional-shape": {"a": _t([2.5], 0, 8), "b": _t([2], 8, 16)},
    "float-shape": {"a": _t([2.0], 0, 8), "b": _t([2], 8, 16)},
    "string-shape": {"a": _t(["2"], 0, 8), "b": _t([2], 8, 16)},
    "gap": {"a": _t([1], 4, 8), "b": _t([2], 8, 16)},
    "past-the-end": {"a": _t([2], 0, 8), "b": _t([4], 8, 24)},
    "wrong-size": {"a": _t([3], 0, 8), "b": _t([2], 8, 16)},
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_converter_reader_refuses_bad_headers(tmp_path, header):
    path = _raw_safetensors(tmp_path / "model.safetensors", header)
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors"):
        read_state_dict(path)


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_model_dir_reader_refuses_bad_headers(tmp_path, header):
    out = save_model_dir(tmp_path / "m", {"a": np.zeros(2, np.float32)}, {"family": "vit"})
    _raw_safetensors(out / "params.safetensors", header)
    with pytest.raises(ValueError, match=r"m: params\.safetensors is unreadable"):
        load_model_dir(out)


def test_header_in_any_key_order_is_fine(tmp_path):
    path = _raw_safetensors(tmp_path / "ok.safetensors", {"b": _t([2], 8, 16), "a": _t([2], 0, 8)})
    state = read_state_dict(path)
    assert state["a"].tolist() == [0, 1] and state["b"].tolist() == [2, 3]


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/abs.safetensors", "sub/../../x"])
def test_sharded_index_is_confined_to_src(tmp_path, fixtures_dir, shard):
    from safetensors.numpy import load_file, save_file

    from converters.vit import convert

    src = tmp_path / "vit"
    src.mkdir()
    (src / "config.json").write_text((fixtures_dir / "vit_hf_small" / "config.json").read_text())
    state = load_file(fixtures_dir / "vit_hf_small" / "model.safetensors")
    save_file(state, tmp_path / "outside.safetensors")  # a readable file outside SRC
    index = {"weight_map": dict.fromkeys(state, shard)}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"index\.json.*outside"):
        convert(src)


def test_sharded_index_inside_src_still_works(tmp_path, fixtures_dir):
    from safetensors.numpy import load_file, save_file

    from converters.vit import convert

    src = tmp_path / "vit"
    (src / "shards").mkdir(parents=True)
    (src / "config.json").write_text((fixtures_dir / "vit_hf_small" / "config.json").read_text())
    state = load_file(fixtures_dir / "vit_hf_small" / "model.safetensors")
    keys = sorted(state)
    halves = {"shards/a.safetensors": keys[::2], "shards/b.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, src / name)
    weight_map = {k: name for name, part in halves.items() for k in part}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert convert(src).config["family"] == "vit"


def test_bf16_and_metadata_round_trip(tmp_path):
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    params = {
        "enc": {
            "bf16": w.astype(ml_dtypes.bfloat16),
            "kernel_T": w.T,  # a strided view: must be written as its values, not raw memory
            "scalar": np.float32(0.5),
            "big_endian": w.astype(">f4"),
        }
    }
    out = save_model_dir(tmp_path / "m", params, {"family": "scgpt", "d": 3})
    with safe_open(out / "params.safetensors", framework="numpy") as f:
        meta = f.metadata()
    from jaxfm import __version__

    assert meta == {"format": "jaxfm", "jaxfm_version": __version__, "family": "scgpt"}
    back, config = load_model_dir(out)
    assert config == {"family": "scgpt", "d": 3}
    got = back["enc"]
    assert got["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got["bf16"], w.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(got["kernel_T"], w.T)
    assert got["scalar"].shape == () and got["scalar"] == np.float32(0.5)
    np.testing.assert_array_equal(got["big_endian"], w)
    jax_back, _ = load_model_dir(out, as_jax=True)
    np.testing.assert_array_equal(np.asarray(jax_back["enc"]["kernel_T"]), w.T)
