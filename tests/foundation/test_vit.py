"""Flax ViT against the HF / timm golden outputs; cross-node form of its layers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters.verify import compare, format_table, load_golden
from converters.vit import TOLERANCES, convert
from jaxfm.foundation.vit import ViT, ViTConfig, layer_module, model_from_config, vit_config
from jaxfm.nn import TransformerLayer

FIXTURES = ("vit_hf_small", "vit_timm_small")


@pytest.fixture(scope="module", params=FIXTURES)
def converted(request, fixtures_dir):
    src = fixtures_dir / request.param
    conv = convert(src)
    golden = load_golden(src / "golden.npz")
    model = model_from_config(conv.config)
    x = golden["pixel_values"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    with jax.default_matmul_precision("highest"):
        out = model.apply({"params": conv.params}, x, return_intermediates=True)
    return request.param, conv, model, golden, {k: np.asarray(v) for k, v in out.items()}


def test_matches_golden(converted):
    name, _, _, golden, out = converted
    expected = {
        "vit_hf_small": {"pooler_output", "layer0_query", "layer0_key", "layer0_value"},
        "vit_timm_small": {"pre_logits", "logits", "layer0_qkv"},
    }[name] | {"last_hidden_state", "hidden_states", "patch_embeddings", "attentions_layer0"}
    assert expected <= set(out), expected - set(out)
    tol = {k: TOLERANCES.get(k, (1e-4, 1e-6)) for k in golden if k in out}
    rows = compare({k: out[k] for k in tol}, golden, tol)
    assert {r.name for r in rows} == set(golden) - {"pixel_values"}, "every golden tensor"
    assert all(r.ok for r in rows), format_table(rows)


def test_golden_is_sensitive(converted):
    """A wrong epsilon or tanh-GELU moves the outputs past the tolerance (the test can fail)."""
    _, conv, model, golden, _ = converted
    x = golden["pixel_values"].transpose(0, 2, 3, 1)
    for change in ({"activation": "gelu_tanh"}, {"layer_norm_eps": 1e-3}):
        cfg = dataclasses.replace(model.config, **change)
        with jax.default_matmul_precision("highest"):
            out = ViT(config=cfg).apply({"params": conv.params}, x)
        tol = {"last_hidden_state": TOLERANCES["last_hidden_state"]}
        (row,) = compare({"last_hidden_state": np.asarray(out["last_hidden_state"])}, golden, tol)
        assert not row.ok, change


def test_layers_are_transformer_layers_and_cross_node(converted):
    """Each converted layer, standalone, reproduces its golden output, and in FIMP cross-node
    form with source = destination (self-loops only) reproduces the self-attention layer."""
    _, conv, model, golden, _ = converted
    cfg = model.config
    layer = layer_module(cfg)
    assert isinstance(layer, TransformerLayer)
    for i in range(cfg.num_layers):
        variables = {"params": conv.params["encoder"][f"layer_{i}"]}
        x = jnp.asarray(golden["hidden_states"][i])  # [B, T, D]: B sequences = B nodes
        with jax.default_matmul_precision("highest"):
            y = layer.apply(variables, x)
            n = x.shape[0]
            idx = jnp.arange(n)
            y_cross = layer.apply(variables, x, idx, idx, method=TransformerLayer.cross_node)
        np.testing.assert_allclose(y, golden["hidden_states"][i + 1], rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(y_cross, y, rtol=1e-5, atol=1e-6)


def test_cross_node_uses_source_tokens(converted):
    """A single edge 0 -> 1: node 1's message attends to node 0's tokens (not its own)."""
    _, conv, model, golden, _ = converted
    layer = layer_module(model.config)
    variables = {"params": conv.params["encoder"]["layer_0"]}
    x = jnp.asarray(golden["hidden_states"][0])
    with jax.default_matmul_precision("highest"):
        y = layer.apply(variables, x, jnp.array([0]), jnp.array([1]), method=layer.cross_node)

        def manual(mdl, xq, xkv):  # pre-norm layer with cross attention q <- xq, k/v <- xkv
            h = xq + mdl.attention(mdl.norm1(xq), mdl.norm1(xkv))
            return h + mdl.mlp(mdl.norm2(h))

        ref = layer.apply(variables, x[1:2], x[0:1], method=manual)
    np.testing.assert_allclose(y[1:2], ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[1], golden["hidden_states"][1][1], atol=1e-3)


def test_embed_is_hidden_state_zero(converted):
    _, conv, model, golden, _ = converted
    x = golden["pixel_values"].transpose(0, 2, 3, 1)
    tokens = model.apply({"params": conv.params}, x, method=ViT.embed)
    np.testing.assert_allclose(tokens, golden["hidden_states"][0], rtol=1e-4, atol=1e-6)


def test_input_layout_is_checked(converted):
    _, conv, model, golden, _ = converted
    with pytest.raises(ValueError, match="NHWC"):
        model.apply({"params": conv.params}, golden["pixel_values"])  # NCHW


def test_pooling_options_semantics():
    cfg = ViTConfig(
        layout="timm",
        image_size=(8, 12),
        patch_size=4,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=32,
        layer_norm_eps=1e-6,
        global_pool="avg",
        fc_norm=True,
        final_norm=False,
        num_classes=3,
        no_embed_class=True,
    )
    model = ViT(config=cfg)
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    variables = model.init(jax.random.key(1), x)
    params = variables["params"]
    assert "layernorm" not in params and params["embeddings"]["position_embeddings"].shape == (
        1,
        6,
        16,
    )
    out = model.apply(variables, x)
    assert out["last_hidden_state"].shape == (2, 7, 16)
    np.testing.assert_allclose(out["last_hidden_state"], out["hidden_states"][-1])
    pooled = out["last_hidden_state"][:, 1:].mean(1)
    ln = jax.nn.standardize(pooled, axis=-1, epsilon=1e-6)
    ref = ln * params["fc_norm"]["scale"] + params["fc_norm"]["bias"]
    np.testing.assert_allclose(out["pre_logits"], ref, rtol=1e-5, atol=1e-5)
    logits = ref @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)


def test_config_roundtrip_and_validation():
    cfg = vit_config("base", image_size=32, patch_size=8, pooler=True)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["family"] == "vit" and cfg.num_tokens == 17
    with pytest.raises(ValueError, match="divisible"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="num_heads"):
        ViTConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match="class_token"):
        ViTConfig(class_token=False)
    with pytest.raises(ValueError, match="unknown keys"):
        ViTConfig.from_dict({"family": "vit", "depth": 3})
    with pytest.raises(ValueError, match="family"):
        ViTConfig.from_dict({"family": "scgpt"})
    with pytest.raises(ValueError, match="variant"):
        vit_config("gigantic")
