"""scGPT converter end to end on the fixture copies (torch and flash key layouts); no torch."""

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from converters.checkpoint import read_state_dict
from converters.errors import ConversionError, KeyMismatchError
from converters.scgpt import convert, detect_layout, verify
from jaxfm.foundation.scgpt import ScGPTConfig, load_vocab
from jaxfm.model_dir import save_model_dir
from jaxfm.params import flatten

FIXTURES = ("scgpt_small_torch", "scgpt_small_flash")


@pytest.fixture(scope="module")
def converted(fixtures_dir):
    return {name: convert(fixtures_dir / name) for name in FIXTURES}


def _write_model_dir(out, conv):
    save_model_dir(out, conv.params, conv.config, extra_files=conv.extra_files)
    return out


@pytest.mark.parametrize("name, layout", [(FIXTURES[0], "torch"), (FIXTURES[1], "flash")])
def test_detects_layout_and_config(fixtures_dir, converted, name, layout):
    conv = converted[name]
    assert detect_layout(read_state_dict(fixtures_dir / name / "best_model.pt")) == layout
    assert f"{layout} attention layout" in conv.report[0]
    meta = json.loads((fixtures_dir / name / "fixture.json").read_text())
    c = meta["constructor"]
    cfg = ScGPTConfig.from_dict(conv.config)
    assert conv.config["family"] == "scgpt"
    assert (cfg.ntoken, cfg.d_model, cfg.nhead, cfg.d_hid, cfg.nlayers) == (
        c["ntoken"],
        c["d_model"],
        c["nhead"],
        c["d_hid"],
        c["nlayers"],
    )
    assert (cfg.nlayers_cls, cfg.n_cls, cfg.do_mvc) == (c["nlayers_cls"], c["n_cls"], c["do_mvc"])
    assert (cfg.input_emb_style, cfg.cell_emb_style, cfg.pad_value) == (
        c["input_emb_style"],
        c["cell_emb_style"],
        c["pad_value"],
    )
    assert cfg.pad_token_id == meta["vocab"]["special_tokens"]["<pad>"]
    n = sum(v.size for v in flatten(conv.params).values())
    assert n == meta["param_count"]


def test_both_layouts_give_identical_params(converted):
    a, b = (flatten(converted[n].params) for n in FIXTURES)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert converted[FIXTURES[0]].config == converted[FIXTURES[1]].config


def test_fused_qkv_split_head_major(fixtures_dir, converted):
    """query/key/value kernels [D, H, Dh] are rows [q; k; v] of in_proj, head-major."""
    state = read_state_dict(fixtures_dir / FIXTURES[0] / "best_model.pt")
    w = state["transformer_encoder.layers.1.self_attn.in_proj_weight"]
    b = state["transformer_encoder.layers.1.self_attn.in_proj_bias"]
    att = converted[FIXTURES[0]].params["transformer_encoder"]["layers_1"]["attention"]
    d, h = 64, 4
    for j, name in enumerate(("query", "key", "value")):
        kern, bias = att[name]["kernel"], att[name]["bias"]
        for head, col in ((0, 0), (2, 5), (3, 15)):
            np.testing.assert_array_equal(kern[:, head, col], w[j * d + head * (d // h) + col])
            assert bias[head, col] == b[j * d + head * (d // h) + col]
    out_w = state["transformer_encoder.layers.1.self_attn.out_proj.weight"]
    np.testing.assert_array_equal(att["out"]["kernel"][1, 3], out_w[:, 16 + 3])


@pytest.mark.parametrize("name", FIXTURES)
def test_convert_then_verify_matches_golden(fixtures_dir, converted, tmp_path, name):
    out = _write_model_dir(tmp_path / "out", converted[name])
    golden = dict(np.load(fixtures_dir / name / "golden.npz"))
    rows = verify(out, golden)
    by_name = {r.name: r for r in rows}
    wanted = {k for k in golden if k not in ("gene_ids", "values", "src_key_padding_mask")}
    assert set(by_name) == wanted
    bad = [r for r in rows if not r.ok]
    assert not bad, bad
    meta = json.loads((fixtures_dir / name / "fixture.json").read_text())
    for r in rows:
        assert r.atol == meta["tolerance_suggestion"]["per_tensor"][r.name]["atol"]
        assert r.max_abs_err <= 2e-6, r


def test_vocab_and_config_round_trip(fixtures_dir, converted, tmp_path):
    conv = converted[FIXTURES[1]]
    out = _write_model_dir(tmp_path / "out", conv)
    src_vocab = json.loads((fixtures_dir / FIXTURES[1] / "vocab.json").read_text())
    assert load_vocab(out) == src_vocab
    from jaxfm.foundation import load_pretrained

    model, variables = load_pretrained(out)
    assert model.config == ScGPTConfig.from_dict(conv.config)
    assert model.config.to_dict() == conv.config
    assert load_vocab(out)["<pad>"] == model.config.pad_token_id
    a = flatten(jax.tree.map(np.asarray, variables["params"]))
    b = flatten(conv.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_convert_with_verify(fixtures_dir, tmp_path, capsys):
    from converters.cli import main

    src = fixtures_dir / FIXTURES[0]
    out = tmp_path / "out"
    rc = main(["convert", "scgpt", str(src), str(out), "--verify", str(src / "golden.npz")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "encoder_output" in text and "mlm_output" in text
    assert (out / "vocab.json").is_file()


# ------------------------------------------------------------------ errors


def _copy_with_state(fixtures_dir, tmp_path, edit):
    """A model dir whose checkpoint is the torch fixture's state dict after ``edit``."""
    src = fixtures_dir / FIXTURES[0]
    dst = tmp_path / "src"
    dst.mkdir()
    for f in ("args.json", "vocab.json"):
        shutil.copy(src / f, dst / f)
    state = dict(read_state_dict(src / "best_model.pt"))
    edit(state)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(dst / "best_model.safetensors")
    )
    return dst


def test_renamed_key_is_named(fixtures_dir, tmp_path):
    def edit(s):
        s["transformer_encoder.layers.1.linear_2.weight"] = s.pop(
            "transformer_encoder.layers.1.linear2.weight"
        )

    with pytest.raises(KeyMismatchError, match=r"transformer_encoder\.layers\.1\.linear_2\.weight"):
        convert(_copy_with_state(fixtures_dir, tmp_path, edit))


def test_missing_key_is_named(fixtures_dir, tmp_path):
    with pytest.raises(KeyMismatchError, match="decoder/fc_2/bias"):
        convert(_copy_with_state(fixtures_dir, tmp_path, lambda s: s.pop("decoder.fc.2.bias")))


def test_shape_mismatch_is_named(fixtures_dir, tmp_path):
    def edit(s):
        s["mvc_decoder.W.weight"] = s["mvc_decoder.W.weight"][:, :32]

    with pytest.raises(KeyMismatchError, match=r"mvc_decoder/W/kernel.*32"):
        convert(_copy_with_state(fixtures_dir, tmp_path, edit))


def test_unsupported_module_is_named(fixtures_dir, tmp_path):
    def edit(s):
        s["batch_encoder.embedding.weight"] = np.zeros((3, 64), np.float32)

    with pytest.raises(ConversionError, match="batch_encoder"):
        convert(_copy_with_state(fixtures_dir, tmp_path, edit))


def test_args_disagreeing_with_checkpoint(fixtures_dir, tmp_path):
    dst = _copy_with_state(fixtures_dir, tmp_path, lambda s: None)
    args = json.loads((dst / "args.json").read_text())
    (dst / "args.json").write_text(json.dumps({**args, "input_emb_style": "category"}))
    with pytest.raises(ConversionError, match="input_emb_style"):
        convert(dst)
    (dst / "args.json").write_text(json.dumps({**args, "nheads": 5}))
    with pytest.raises(ConversionError, match="divisible"):
        convert(dst)


@pytest.mark.parametrize("missing", ["args.json", "vocab.json"])
def test_missing_sidecar_file_is_named(fixtures_dir, tmp_path, missing):
    dst = tmp_path / "src"
    shutil.copytree(fixtures_dir / FIXTURES[0], dst)
    (dst / missing).unlink()
    with pytest.raises(ConversionError, match=missing):
        convert(dst)


def test_missing_dir_and_empty_dir(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nope")
    with pytest.raises(ConversionError, match=r"best_model\.pt"):
        convert(tmp_path)


def test_wrong_family_vit_dir(tmp_path):
    """An HF ViT directory (model.safetensors + config.json) is recognised as ViT."""
    d = tmp_path / "vit"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    z = np.zeros((8, 3, 2, 2), np.float32)
    save_file(
        {
            "embeddings.patch_embeddings.projection.weight": z,
            "embeddings.cls_token": np.zeros((1, 1, 8), np.float32),
            "encoder.layer.0.attention.attention.query.weight": np.zeros((8, 8), np.float32),
        },
        str(d / "model.safetensors"),
    )
    with pytest.raises(ConversionError, match="ViT checkpoint, not scGPT"):
        convert(d)


def test_wrong_family_shared_fixtures(shared_dir):
    for name, family in (
        ("vit_hf_small", "ViT"),
        ("vit_timm_small", "ViT"),
        ("brainlm_small", "BrainLM"),
    ):
        d = shared_dir / "fixtures" / name
        if not d.is_dir():
            continue
        with pytest.raises(ConversionError, match=f"{family} checkpoint, not scGPT"):
            convert(d)


def test_other_sizes_convert_without_change(tmp_path):
    """A differently sized scGPT (3 layers, 2 heads, D=16, category values, zero-prob heads,
    3-layer classifier, no MVC) in the flash layout converts with the same code."""
    rng = np.random.default_rng(0)
    d, hid, nl, bins, ntok, n_cls = 16, 24, 3, 7, 11, 5

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    s = {
        "encoder.embedding.weight": r(ntok, d),
        "encoder.enc_norm.weight": r(d),
        "encoder.enc_norm.bias": r(d),
        "value_encoder.embedding.weight": r(bins, d),
        "value_encoder.enc_norm.weight": r(d),
        "value_encoder.enc_norm.bias": r(d),
    }
    for i in range(nl):
        p = f"transformer_encoder.layers.{i}."
        s |= {
            p + "self_attn.Wqkv.weight": r(3 * d, d),
            p + "self_attn.Wqkv.bias": r(3 * d),
            p + "self_attn.out_proj.weight": r(d, d),
            p + "self_attn.out_proj.bias": r(d),
            p + "linear1.weight": r(hid, d),
            p + "linear1.bias": r(hid),
            p + "linear2.weight": r(d, hid),
            p + "linear2.bias": r(d),
        }
        for n in ("norm1", "norm2"):
            s |= {p + n + ".weight": r(d), p + n + ".bias": r(d)}
    for head in ("fc", "zero_logit"):
        for k, shape in ((0, (d, d)), (2, (d, d)), (4, (1, d))):
            s |= {f"decoder.{head}.{k}.weight": r(*shape), f"decoder.{head}.{k}.bias": r(shape[0])}
    for k in (0, 3):
        s |= {
            f"cls_decoder._decoder.{k}.weight": r(d, d),
            f"cls_decoder._decoder.{k}.bias": r(d),
            f"cls_decoder._decoder.{k + 2}.weight": r(d),
            f"cls_decoder._decoder.{k + 2}.bias": r(d),
        }
    s |= {"cls_decoder.out_layer.weight": r(n_cls, d), "cls_decoder.out_layer.bias": r(n_cls)}
    src = tmp_path / "src"
    src.mkdir()
    save_file(s, str(src / "best_model.safetensors"))
    vocab = {f"G{i}": i for i in range(ntok - 2)} | {"<pad>": ntok - 2, "<cls>": ntok - 1}
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "args.json").write_text(
        json.dumps(
            {
                "nheads": 2,
                "pad_token": "<pad>",
                "pad_value": -2,
                "dropout": 0.1,
                "input_emb_style": "category",
            }
        )
    )
    conv = convert(src)
    cfg = ScGPTConfig.from_dict(conv.config)
    assert (cfg.nlayers, cfg.nhead, cfg.d_model, cfg.d_hid, cfg.ntoken) == (nl, 2, d, hid, ntok)
    assert (cfg.input_emb_style, cfg.n_input_bins, cfg.explicit_zero_prob) == (
        "category",
        bins,
        True,
    )
    assert (cfg.nlayers_cls, cfg.n_cls, cfg.do_mvc, cfg.pad_token_id) == (3, n_cls, False, ntok - 2)
    p = conv.params
    np.testing.assert_array_equal(
        p["cls_decoder"]["_decoder_5"]["scale"], s["cls_decoder._decoder.5.weight"]
    )
    np.testing.assert_array_equal(
        p["cls_decoder"]["_decoder_3"]["kernel"], s["cls_decoder._decoder.3.weight"].T
    )
    np.testing.assert_array_equal(
        p["transformer_encoder"]["layers_2"]["attention"]["value"]["kernel"][:, 1, 3],
        s["transformer_encoder.layers.2.self_attn.Wqkv.weight"][2 * d + 8 + 3],
    )
    np.testing.assert_array_equal(
        p["decoder"]["zero_logit_4"]["kernel"], s["decoder.zero_logit.4.weight"].T
    )
