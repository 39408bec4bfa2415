"""`convert brainlm`: end to end on the fixture copy, strict-merge errors, wrong family, sizes.

No torch needed (one optional cross-check skips without it).
"""

import json
import re
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from converters import cli
from converters.brainlm import CONFIG_FILE, convert, verify
from converters.checkpoint import read_state_dict
from converters.errors import ConversionError, KeyMismatchError
from jaxfm.foundation import load_pretrained
from jaxfm.foundation.brainlm import BrainLM, BrainLMConfig
from jaxfm.params import flatten

FIXTURE = "brainlm_small"


@pytest.fixture(scope="module")
def src(fixtures_dir):
    return fixtures_dir / FIXTURE


@pytest.fixture(scope="module")
def state(src):
    return read_state_dict(src / "pytorch_model.bin")


def _write_dir(path, state, hf_config):
    """A model dir with ``model.safetensors`` (the converter's other accepted file name)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(path / "model.safetensors")
    )
    (path / CONFIG_FILE).write_text(json.dumps(hf_config))
    return path


@pytest.fixture(scope="module")
def hf_config(src):
    return json.loads((src / CONFIG_FILE).read_text())


def test_cli_convert_and_verify_end_to_end(src, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["convert", "brainlm", str(src), str(out), "--verify", str(src / "golden.npz")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "all within tolerance" in text
    for name in ("last_hidden_state", "hidden_states", "mask", "ids_restore", "logits", "loss"):
        assert re.search(rf"\| {name} \|.*\| ok", text), name
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "brainlm" and config["conv_kernel_size"] == 9
    model, variables = load_pretrained(out)
    assert isinstance(model, BrainLM)
    # the PE buffers and the unused decoder_pred are not carried over
    flat = flatten(variables["params"])
    assert not any("pos_embedding" in k or k.startswith("decoder/decoder_pred/") for k in flat)


def test_verify_rows_and_exact_indices(src, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["convert", "brainlm", str(src), str(out)]) == 0
    golden = dict(np.load(src / "golden.npz"))
    rows = {r.name: r for r in verify(out, golden)}
    assert set(rows) == set(golden) - {"signal_vectors", "xyz_vectors", "noise"}
    assert all(r.ok for r in rows.values())
    assert rows["mask"].atol == 0 and rows["ids_restore"].max_abs_err == 0
    # a perturbed golden tensor is caught
    bad = dict(golden, ids_restore=golden["ids_restore"][:, ::-1].copy())
    assert not {r.name: r for r in verify(out, bad)}["ids_restore"].ok
    with pytest.raises(ConversionError, match="noise"):
        verify(out, {k: v for k, v in golden.items() if k != "noise"})


def test_converted_values_match_checkpoint(src, state):
    c = convert(src)
    p = c.params
    w = state["vit.encoder.layer.1.attention.self.key.weight"]  # [H*Dh, D]
    np.testing.assert_array_equal(
        p["vit"]["encoder"]["layer_1"]["attention"]["self"]["key"]["kernel"],
        w.T.reshape(32, 4, 8),
    )
    conv = state["decoder.decoder_layers.0.attention.self.conv.weight"]  # [H, 1, k, 1]
    np.testing.assert_array_equal(
        p["decoder"]["decoder_layers_0"]["attention"]["self"]["conv"]["kernel"][:, 0, 0, :],
        conv[:, 0, :, 0].T,
    )
    assert c.config == {**BrainLMConfig.from_dict(c.config).to_dict()}
    assert any("decoder.decoder_pred.weight" in line for line in c.report)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("rename", r"vit\.encoder\.layer\.0\.attention\.self\.qry\.weight"),
        ("missing", r"vit/layernorm/bias"),
        ("shape", r"layer_1/intermediate/dense/kernel.*got \(32, 64\), expected \(32, 128\)"),
    ],
)  # fmt: skip
def test_strict_merge_errors_name_the_key(state, hf_config, tmp_path, edit, match):
    bad = dict(state)
    if edit == "rename":
        key = "vit.encoder.layer.0.attention.self.query.weight"
        bad[key.replace("query", "qry")] = bad.pop(key)
    elif edit == "missing":
        del bad["vit.layernorm.bias"]
    else:
        bad["vit.encoder.layer.1.intermediate.dense.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(KeyMismatchError, match=match):
        convert(_write_dir(tmp_path / "bad", bad, hf_config))


def test_config_disagreeing_with_tensors(state, hf_config, tmp_path):
    with pytest.raises(KeyMismatchError, match=r"shape mismatch.*conv/kernel"):
        convert(_write_dir(tmp_path / "c", state, {**hf_config, "conv_kernel_size": 7}))
    with pytest.raises(ConversionError, match="num_landmarks"):
        cfg = {k: v for k, v in hf_config.items() if k != "num_landmarks"}
        convert(_write_dir(tmp_path / "d", state, cfg))


def test_corrupted_pe_buffer_is_named(state, hf_config, tmp_path):
    bad = dict(state)
    bad["decoder.pos_embedding.pe"] = state["decoder.pos_embedding.pe"] * 1.5
    with pytest.raises(ConversionError, match=r"decoder\.pos_embedding\.pe"):
        convert(_write_dir(tmp_path / "pe", bad, hf_config))


def test_wrong_family_and_missing_files(fixtures_dir, src, state, hf_config, tmp_path):
    scgpt = fixtures_dir / "scgpt_small_torch"
    if scgpt.is_dir():
        with pytest.raises(ConversionError, match="scGPT"):
            convert(scgpt / "best_model.pt")
    vit_like = {"embeddings.patch_embeddings.projection.weight": np.zeros((4, 3, 2, 2), "f4")}
    with pytest.raises(ConversionError, match="looks like a ViT"):
        convert(_write_dir(tmp_path / "vit", vit_like, hf_config))
    with pytest.raises(ConversionError, match="vit_mae"):
        convert(_write_dir(tmp_path / "mae", state, {**hf_config, "model_type": "vit_mae"}))
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nowhere")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(src / "pytorch_model.bin", lonely)
    with pytest.raises(ConversionError, match=r"missing config\.json"):
        convert(lonely)


def test_cli_failure_leaves_out_untouched(state, hf_config, tmp_path):
    bad = dict(state)
    del bad["decoder.mask_token"]
    srcdir = _write_dir(tmp_path / "bad", bad, hf_config)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sentinel").write_text("keep")
    assert cli.main(["convert", "brainlm", str(srcdir), str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["sentinel"]


# torch-layout name of every Flax path (the inverse of the converter's rules), for the test below
def _to_torch(flat, cfg):
    out = {}
    for path, w in flat.items():
        w = np.asarray(w)
        key = re.sub(r"layer_(\d+)", r"layer.\1", path)
        key = re.sub(r"decoder_layers_(\d+)", r"decoder_layers.\1", key).replace("/", ".")
        if re.search(r"self\.(query|key|value)\.kernel$", key):
            w = w.reshape(w.shape[0], -1).T
        elif re.search(r"self\.(query|key|value)\.bias$", key):
            w = w.reshape(-1)
        elif key.endswith("conv.kernel"):
            w = w.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif key.endswith("output.dense.kernel") and w.ndim == 3:
            w = w.reshape(-1, w.shape[-1]).T
        elif key.endswith(".kernel"):
            w = w.T
        key = re.sub(r"\.kernel$|\.scale$", ".weight", key)
        out[key] = w
    out["decoder.decoder_pred.weight"] = np.zeros((768, cfg.decoder_hidden_size), np.float32)
    out["decoder.decoder_pred.bias"] = np.zeros((768,), np.float32)
    return out


def test_other_sizes_convert_with_the_same_code(tmp_path):
    cfg = BrainLMConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
        decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
        decoder_intermediate_size=8, num_brain_voxels=3, num_timepoints_per_voxel=30,
        timepoint_patching_size=10, mask_ratio=0.2, conv_kernel_size=5, pe_max_len=50,
    )  # fmt: skip
    model = BrainLM(config=cfg)
    sig, xyz, noise = np.zeros((1, 3, 30), "f4"), np.zeros((1, 3, 3), "f4"), np.zeros((1, 9), "f4")
    params = jax.jit(model.init)(jax.random.key(0), sig, xyz, noise)["params"]
    flat = flatten(jax.tree.map(np.asarray, params))
    state = _to_torch(flat, cfg)
    from jaxfm.foundation.brainlm import temporal_encoding

    state["vit.embeddings.pos_embedding.pe"] = temporal_encoding(50, 16)
    hf = {k: v for k, v in cfg.to_dict().items() if k not in ("family", "pe_max_len", "pe_dropout")}
    converted = convert(_write_dir(tmp_path / "m", state, {**hf, "model_type": "brainlm_mae"}))
    assert converted.config == cfg.to_dict()
    got = flatten(converted.params)
    assert set(got) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(got[k], flat[k], err_msg=k)


def test_reader_agrees_with_torch_load(src, state):
    torch = pytest.importorskip("torch")
    ref = torch.load(src / "pytorch_model.bin", weights_only=True)
    assert set(ref) == set(state)
    for k, v in ref.items():
        np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)
