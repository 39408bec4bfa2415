"""ViT converter: layouts, other sizes (vs an independent float64 numpy forward), errors."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file
from scipy.special import erf

from converters.checkpoint import read_state_dict
from converters.errors import CheckpointFormatError, ConversionError, KeyMismatchError
from converters.verify import all_ok, format_table, load_golden
from converters.vit import convert, detect_layout, run_model, verify
from jaxfm.foundation import load_pretrained
from jaxfm.model_dir import save_model_dir
from jaxfm.params import flatten

HF, TIMM = "vit_hf_small", "vit_timm_small"


def _write(out, conv):
    return save_model_dir(out, conv.params, conv.config, extra_files=conv.extra_files)


# ------------------------------------------------------------------------------------------
# an independent float64 reference forward, written from the PyTorch semantics
# ------------------------------------------------------------------------------------------


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _linear(x, w, b):
    return x @ w.T + b


def _attention(x, q, k, v, heads):
    b, t, d = x.shape
    split = lambda a: a.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)  # [B,H,T,Dh]
    q, k, v = split(q), split(k), split(v)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, t, d)


def reference_forward(sd, layout, heads, eps, images, *, pool="token", fc_norm=False):
    """``images`` NCHW; ``sd`` the torch state dict (float64). Returns a dict of outputs."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    hf = layout == "hf"
    pw = sd["embeddings.patch_embeddings.projection.weight" if hf else "patch_embed.proj.weight"]
    pb = sd["embeddings.patch_embeddings.projection.bias" if hf else "patch_embed.proj.bias"]
    b, c, h, w = images.shape
    p = pw.shape[-1]
    grid = images.reshape(b, c, h // p, p, w // p, p)
    x = np.einsum("bcipjq,ocpq->bijo", grid, pw).reshape(b, -1, pw.shape[0]) + pb
    cls = sd["embeddings.cls_token" if hf else "cls_token"]
    x = np.concatenate([np.broadcast_to(cls, (b, 1, x.shape[-1])), x], 1)
    x = x + sd["embeddings.position_embeddings" if hf else "pos_embed"]
    layers = len(
        {k.split(".")[2 if hf else 1] for k in sd if k.startswith(("encoder.", "blocks."))}
    )
    for i in range(layers):
        if hf:
            g = lambda n, i=i: sd[f"encoder.layer.{i}.{n}"]
            hn = _ln(x, g("layernorm_before.weight"), g("layernorm_before.bias"), eps)
            qkv = [
                _linear(
                    hn, g(f"attention.attention.{n}.weight"), g(f"attention.attention.{n}.bias")
                )
                for n in ("query", "key", "value")
            ]
            a = _attention(hn, *qkv, heads)
            x = x + _linear(a, g("attention.output.dense.weight"), g("attention.output.dense.bias"))
            hn = _ln(x, g("layernorm_after.weight"), g("layernorm_after.bias"), eps)
            m = _linear(hn, g("intermediate.dense.weight"), g("intermediate.dense.bias"))
            m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
            x = x + _linear(m, g("output.dense.weight"), g("output.dense.bias"))
        else:
            g = lambda n, i=i: sd[f"blocks.{i}.{n}"]
            hn = _ln(x, g("norm1.weight"), g("norm1.bias"), eps)
            fused = _linear(hn, g("attn.qkv.weight"), g("attn.qkv.bias"))
            a = _attention(hn, *np.split(fused, 3, axis=-1), heads)
            x = x + _linear(a, g("attn.proj.weight"), g("attn.proj.bias"))
            hn = _ln(x, g("norm2.weight"), g("norm2.bias"), eps)
            m = _linear(hn, g("mlp.fc1.weight"), g("mlp.fc1.bias"))
            m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
            x = x + _linear(m, g("mlp.fc2.weight"), g("mlp.fc2.bias"))
    norm = "layernorm" if hf else "norm"
    if f"{norm}.weight" in sd:
        x = _ln(x, sd[f"{norm}.weight"], sd[f"{norm}.bias"], eps)
    out = {"last_hidden_state": x}
    if "pooler.dense.weight" in sd:
        out["pooler_output"] = np.tanh(
            _linear(x[:, 0], sd["pooler.dense.weight"], sd["pooler.dense.bias"])
        )
    if not hf:
        pooled = x[:, 0] if pool == "token" else x[:, 1:].mean(1)
        if fc_norm:
            pooled = _ln(pooled, sd["fc_norm.weight"], sd["fc_norm.bias"], eps)
        out["pre_logits"] = pooled
        out["logits"] = _linear(pooled, sd["head.weight"], sd["head.bias"])
    return out


def random_hf_state(rng, d, heads, layers, mlp, p, c, n_patches, pooler=True):
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
    sd = {
        "embeddings.cls_token": r(1, 1, d),
        "embeddings.position_embeddings": r(1, n_patches + 1, d),
        "embeddings.patch_embeddings.projection.weight": r(d, c, p, p),
        "embeddings.patch_embeddings.projection.bias": r(d),
        "layernorm.weight": 1 + r(d),
        "layernorm.bias": r(d),
    }
    for i in range(layers):
        pre = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            sd[pre + f"attention.attention.{n}.weight"] = r(d, d)
            sd[pre + f"attention.attention.{n}.bias"] = r(d)
        sd[pre + "attention.output.dense.weight"], sd[pre + "attention.output.dense.bias"] = (
            r(d, d),
            r(d),
        )
        for n in ("layernorm_before", "layernorm_after"):
            sd[pre + f"{n}.weight"], sd[pre + f"{n}.bias"] = 1 + r(d), r(d)
        sd[pre + "intermediate.dense.weight"], sd[pre + "intermediate.dense.bias"] = (
            r(mlp, d),
            r(mlp),
        )
        sd[pre + "output.dense.weight"], sd[pre + "output.dense.bias"] = r(d, mlp), r(d)
    if pooler:
        sd["pooler.dense.weight"], sd["pooler.dense.bias"] = r(d, d), r(d)
    return sd


def hf_to_timm(sd, classes, rng):
    """The same weights in the timm layout (fused qkv), with fc_norm + avg pooling."""
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
    }
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.")})
    for i in range(layers):
        g = lambda n, i=i: sd[f"encoder.layer.{i}.{n}"]
        pre = f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[pre + f"attn.qkv.{kind}"] = np.concatenate(
                [g(f"attention.attention.{n}.{kind}") for n in ("query", "key", "value")]
            )
            out[pre + f"attn.proj.{kind}"] = g(f"attention.output.dense.{kind}")
            out[pre + f"norm1.{kind}"] = g(f"layernorm_before.{kind}")
            out[pre + f"norm2.{kind}"] = g(f"layernorm_after.{kind}")
            out[pre + f"mlp.fc1.{kind}"] = g(f"intermediate.dense.{kind}")
            out[pre + f"mlp.fc2.{kind}"] = g(f"output.dense.{kind}")
    d = out["cls_token"].shape[-1]
    out["fc_norm.weight"], out["fc_norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    out["head.weight"] = (rng.standard_normal((classes, d)) * 0.2).astype(np.float32)
    out["head.bias"] = (rng.standard_normal(classes) * 0.2).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------
# fixtures end to end
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "layout"), [(HF, "hf"), (TIMM, "timm")])
def test_fixture_converts_and_verifies(tmp_path, fixtures_dir, name, layout):
    src = fixtures_dir / name
    ckpt = next(p for p in src.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert detect_layout(read_state_dict(ckpt)) == layout
    conv = convert(src)
    assert conv.config["family"] == "vit" and conv.config["layout"] == layout
    out = _write(tmp_path / "out", conv)
    rows = verify(out, load_golden(src / "golden.npz"))
    assert all_ok(rows) and len(rows) >= 8, format_table(rows)
    # the checkpoint file itself (not only the directory) converts to the same parameters
    same = convert(ckpt)
    for k, v in flatten(conv.params).items():
        np.testing.assert_array_equal(flatten(same.params)[k], v)
    model, variables = load_pretrained(out)
    assert model.config.layout == layout and "params" in variables


def test_sharded_hf_checkpoint(tmp_path, fixtures_dir):
    state = read_state_dict(fixtures_dir / HF / "model.safetensors")
    keys = sorted(state)
    shards = {"model-1.safetensors": keys[::2], "model-2.safetensors": keys[1::2]}
    for fname, ks in shards.items():
        save_file({k: np.ascontiguousarray(state[k]) for k in ks}, str(tmp_path / fname))
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(fixtures_dir / HF / "config.json", tmp_path)
    rows = verify(
        _write(tmp_path / "out", convert(tmp_path)), load_golden(fixtures_dir / HF / "golden.npz")
    )
    assert all_ok(rows), format_table(rows)


# ------------------------------------------------------------------------------------------
# other sizes, no code change
# ------------------------------------------------------------------------------------------


def test_other_size_hf_non_square(tmp_path):
    rng = np.random.default_rng(0)
    d, heads, layers, mlp, p, c, (h, w) = 48, 3, 3, 80, 6, 2, (24, 36)
    sd = random_hf_state(rng, d, heads, layers, mlp, p, c, (h // p) * (w // p))
    save_file(sd, str(tmp_path / "model.safetensors"))
    cfg = {
        "num_attention_heads": heads,
        "layer_norm_eps": 1e-12,
        "image_size": [h, w],
        "hidden_act": "gelu",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    conv = convert(tmp_path)
    assert conv.config["image_size"] == [h, w] and conv.config["num_layers"] == layers
    images = rng.uniform(-1, 1, (2, c, h, w)).astype(np.float32)
    out = run_model(_write(tmp_path / "out", conv), images)
    ref = reference_forward(sd, "hf", heads, 1e-12, images.astype(np.float64))
    for k in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_other_size_timm_avg_pool_fc_norm(tmp_path):
    rng = np.random.default_rng(1)
    d, heads, layers, mlp, p, c, side = 32, 2, 2, 64, 4, 3, 16
    hf = random_hf_state(rng, d, heads, layers, mlp, p, c, (side // p) ** 2, pooler=False)
    sd = hf_to_timm(hf, classes=5, rng=rng)
    save_file(sd, str(tmp_path / "model.safetensors"))
    cfg = {
        "architecture": "vit_small_patch4",
        "model_args": {"num_heads": heads, "img_size": side, "global_pool": "avg", "fc_norm": True},
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    conv = convert(tmp_path)
    assert conv.config["fc_norm"] and not conv.config["final_norm"]
    images = rng.uniform(-1, 1, (2, c, side, side)).astype(np.float32)
    out = run_model(_write(tmp_path / "out", conv), images)
    ref = reference_forward(
        sd, "timm", heads, 1e-6, images.astype(np.float64), pool="avg", fc_norm=True
    )
    for k in ("last_hidden_state", "pre_logits", "logits"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_reference_forward_matches_fixture_golden(fixtures_dir):
    """The numpy reference above is itself checked against the real HF/timm outputs."""
    for name, layout in ((HF, "hf"), (TIMM, "timm")):
        src = fixtures_dir / name
        sd = read_state_dict(next(p for p in src.iterdir() if p.suffix in (".safetensors", ".bin")))
        golden = load_golden(src / "golden.npz")
        eps = 1e-12 if layout == "hf" else 1e-6
        ref = reference_forward(sd, layout, 4, eps, golden["pixel_values"].astype(np.float64))
        np.testing.assert_allclose(ref["last_hidden_state"], golden["last_hidden_state"], atol=2e-5)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def _hf_copy(tmp_path, fixtures_dir, edit):
    src = tmp_path / "src"
    shutil.copytree(fixtures_dir / HF, src)
    state = {
        k: np.ascontiguousarray(v) for k, v in read_state_dict(src / "model.safetensors").items()
    }
    edit(state)
    save_file(state, str(src / "model.safetensors"))
    return src


def test_renamed_key(tmp_path, fixtures_dir):
    def edit(s):
        s["encoder.layer.1.layernorm_afterr.weight"] = s.pop(
            "encoder.layer.1.layernorm_after.weight"
        )

    with pytest.raises(KeyMismatchError, match=r"encoder\.layer\.1\.layernorm_afterr\.weight"):
        convert(_hf_copy(tmp_path, fixtures_dir, edit))


def test_missing_key(tmp_path, fixtures_dir):
    with pytest.raises(KeyMismatchError, match=r"missing.*'layernorm/bias'") as info:
        convert(_hf_copy(tmp_path, fixtures_dir, lambda s: s.pop("layernorm.bias")))
    assert info.value.missing == ["layernorm/bias"]


def test_shape_mismatch(tmp_path, fixtures_dir):
    def edit(s):
        s["encoder.layer.0.intermediate.dense.bias"] = np.zeros(127, np.float32)

    with pytest.raises(KeyMismatchError) as info:
        convert(_hf_copy(tmp_path, fixtures_dir, edit))
    msg = str(info.value)
    assert (
        "encoder/layer_0/mlp/fc1/bias" in msg and "'encoder.layer.0.intermediate.dense.bias'" in msg
    )
    assert "got (127,), expected (128,)" in msg


def test_timm_renamed_key(tmp_path, fixtures_dir):
    state = dict(read_state_dict(fixtures_dir / TIMM / "pytorch_model.bin"))
    state["blocks.1.mlp.fc3.weight"] = state.pop("blocks.1.mlp.fc2.weight")
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "model.safetensors")
    )
    shutil.copy(fixtures_dir / TIMM / "config.json", tmp_path)
    with pytest.raises(KeyMismatchError, match=r"blocks\.1\.mlp\.fc3\.weight"):
        convert(tmp_path)


def test_unsupported_timm_feature(tmp_path, fixtures_dir):
    state = dict(read_state_dict(fixtures_dir / TIMM / "pytorch_model.bin"))
    state["blocks.0.ls1.gamma"] = np.ones(64, np.float32)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "model.safetensors")
    )
    shutil.copy(fixtures_dir / TIMM / "config.json", tmp_path)
    with pytest.raises(ConversionError, match="LayerScale"):
        convert(tmp_path)


def test_wrong_family(fixtures_dir, shared_dir):
    brainlm = {"vit.embeddings.xyz_embedding_projection.weight": 0, "vit.embeddings.cls_token": 0}
    with pytest.raises(ConversionError, match="BrainLM checkpoint, not ViT"):
        detect_layout(brainlm)
    scgpt_dir = fixtures_dir / "scgpt_small_torch"
    if not scgpt_dir.is_dir():
        scgpt_dir = shared_dir / "fixtures" / "scgpt_small_torch"
    with pytest.raises(ConversionError, match=r"scGPT checkpoint, not ViT.*convert scgpt"):
        convert(scgpt_dir)
    with pytest.raises(ConversionError, match="not a ViT checkpoint"):
        detect_layout({"foo.weight": 0})


def test_missing_files(tmp_path, fixtures_dir):
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no checkpoint file"):
        convert(tmp_path / "empty")
    shutil.copy(fixtures_dir / HF / "model.safetensors", tmp_path / "empty")
    with pytest.raises(ConversionError, match=r"head count.*config\.json"):
        convert(tmp_path / "empty")


def test_truncated_checkpoint(tmp_path, fixtures_dir):
    src = tmp_path / "src"
    shutil.copytree(fixtures_dir / HF, src)
    raw = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*truncated"):
        convert(src)
