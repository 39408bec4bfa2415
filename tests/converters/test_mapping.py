"""Declarative mapping: transforms (checked against the PyTorch semantics), rules, strict merge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters.errors import ConversionError, KeyMismatchError
from converters.mapping import (
    Rule,
    apply_rules,
    compose,
    conv2d_to_flax,
    conv_to_dense,
    linear_to_heads,
    reshape,
    split_fused_qkv,
    squeeze,
    strict_merge,
    transpose,
)
from converters.verify import all_ok, compare, format_table

RNG = np.random.default_rng(0)
B, T, D, H = 2, 5, 8, 2
DH = D // H


def _torch_linear(x, w, b):
    return x @ w.T + b


def test_transpose_is_dense_kernel():
    w, b = RNG.standard_normal((6, D)), RNG.standard_normal(6)
    x = RNG.standard_normal((B, D))
    np.testing.assert_allclose(x @ transpose(w) + b, _torch_linear(x, w, b), rtol=1e-12)
    with pytest.raises(ConversionError, match="2-D"):
        transpose(b)


def test_linear_to_heads_in_and_out():
    x = RNG.standard_normal((B, T, D))
    w, b = RNG.standard_normal((D, D)), RNG.standard_normal(D)
    kernel, bias = linear_to_heads(H, "in")(w), linear_to_heads(H, "in")(b)
    assert kernel.shape == (D, H, DH) and bias.shape == (H, DH)
    ref = _torch_linear(x, w, b).reshape(B, T, H, DH)  # head-major split of the D axis
    np.testing.assert_allclose(np.einsum("btd,dhk->bthk", x, kernel) + bias, ref, rtol=1e-12)
    y = RNG.standard_normal((B, T, H, DH))
    w_out, b_out = RNG.standard_normal((D, D)), RNG.standard_normal(D)
    k_out = linear_to_heads(H, "out")(w_out)
    assert k_out.shape == (H, DH, D)
    np.testing.assert_array_equal(linear_to_heads(H, "out")(b_out), b_out)
    ref = _torch_linear(y.reshape(B, T, D), w_out, b_out)
    np.testing.assert_allclose(np.einsum("bthk,hkf->btf", y, k_out) + b_out, ref, rtol=1e-12)
    with pytest.raises(ValueError, match="kind"):
        linear_to_heads(H, "mid")
    with pytest.raises(ConversionError, match="divisible"):
        linear_to_heads(3, "in")(w)


def test_split_fused_qkv_matches_separate_projections():
    x = RNG.standard_normal((B, T, D))
    w, b = RNG.standard_normal((3 * D, D)), RNG.standard_normal(3 * D)
    kernels, biases = split_fused_qkv(H)(w), split_fused_qkv(H)(b)
    assert sorted(kernels) == ["key/kernel", "query/kernel", "value/kernel"]
    fused = _torch_linear(x, w, b).reshape(B, T, 3, H, DH)  # timm: reshape(B,N,3,heads,hd)
    for i, name in enumerate(["query", "key", "value"]):
        got = np.einsum("btd,dhk->bthk", x, kernels[f"{name}/kernel"]) + biases[f"{name}/bias"]
        np.testing.assert_allclose(got, fused[:, :, i], rtol=1e-12, err_msg=name)
    with pytest.raises(ConversionError, match="expected"):
        split_fused_qkv(H)(RNG.standard_normal((3 * D + 1, D)))


def _conv_nchw(img, w, b, p):
    """Reference stride=kernel conv on NCHW images (what torch Conv2d computes)."""
    bsz, c, hh, ww = img.shape
    patches = img.reshape(bsz, c, hh // p, p, ww // p, p)
    return np.einsum("bcipjq,ocpq->bijo", patches, w) + b  # [B, H/p, W/p, O]


def test_conv_transforms_match_conv2d():
    p, c, o = 4, 3, 5
    img = RNG.standard_normal((B, c, 8, 12))
    w, b = RNG.standard_normal((o, c, p, p)), RNG.standard_normal(o)
    ref = _conv_nchw(img, w, b, p)
    nhwc = img.transpose(0, 2, 3, 1)
    out = jax.lax.conv_general_dilated(
        jnp.asarray(nhwc),
        jnp.asarray(conv2d_to_flax(w)),
        (p, p),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )
    np.testing.assert_allclose(np.asarray(out) + b, ref, rtol=1e-4, atol=1e-4)
    patches = nhwc.reshape(B, 2, p, 3, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(B, 2, 3, -1)
    np.testing.assert_allclose(patches @ conv_to_dense(w) + b, ref, rtol=1e-12)


def test_small_transforms():
    w = RNG.standard_normal((1, 1, 4))
    np.testing.assert_array_equal(squeeze(w), w[0, 0])
    np.testing.assert_array_equal(reshape((2, 2))(w), w.reshape(2, 2))
    np.testing.assert_array_equal(compose(squeeze, reshape((2, 2)))(w), w.reshape(2, 2))


def test_apply_rules_groups_dicts_and_origin():
    state = {
        "blocks.0.fc.weight": RNG.standard_normal((3, 2)),
        "blocks.1.fc.weight": RNG.standard_normal((3, 2)),
        "blocks.1.qkv.weight": RNG.standard_normal((3 * D, D)),
        "pos": RNG.standard_normal((1, 4)),
        "position_ids": np.arange(4),
    }
    rules = [
        Rule(r"blocks\.(\d+)\.fc\.weight", r"layer_\1/fc/kernel", transpose),
        Rule(r"blocks\.(?P<i>\d+)\.qkv\.weight", r"layer_\g<i>/attn", split_fused_qkv(H)),
        Rule(r"pos", "pos_embed"),
    ]
    out = apply_rules(state, rules, ignore=[r"position_ids"])
    assert sorted(out) == [
        "layer_0/fc/kernel",
        "layer_1/attn/key/kernel",
        "layer_1/attn/query/kernel",
        "layer_1/attn/value/kernel",
        "layer_1/fc/kernel",
        "pos_embed",
    ]
    np.testing.assert_array_equal(out["layer_1/fc/kernel"], state["blocks.1.fc.weight"].T)
    assert out.origin["layer_1/attn/key/kernel"] == "blocks.1.qkv.weight"


def test_apply_rules_errors():
    rules = [Rule(r"a\.(\d)", r"x/\1"), Rule(r"b", "x/1")]
    with pytest.raises(KeyMismatchError, match=r"'renamed\.key'") as info:
        apply_rules({"a.0": np.zeros(1), "renamed.key": np.zeros(1)}, rules)
    assert info.value.unexpected == ["renamed.key"]
    with pytest.raises(ConversionError, match=r"'a\.1' and 'b' both map to 'x/1'"):
        apply_rules({"a.1": np.zeros(1), "b": np.zeros(1)}, rules)
    with pytest.raises(ConversionError, match=r"'w'.*transform failed"):
        apply_rules({"w": np.zeros((2, 3))}, [Rule("w", "k", reshape((4,)))])
    with pytest.raises(ValueError, match="regex"):
        Rule("(", "x")


def test_strict_merge_lists_every_problem_by_name():
    expected = {
        "enc": {
            "kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32),
            "bias": jax.ShapeDtypeStruct((3,), jnp.float32),
        },
        "norm": {"scale": jax.ShapeDtypeStruct((3,), jnp.float32)},
    }
    state = {"e.weight": np.zeros((4, 2)), "e.bias": np.zeros(3), "extra.weight": np.zeros(1)}
    rules = [Rule(r"e\.weight", "enc/kernel", transpose), Rule(r"e\.bias", "enc/bias")]
    rules.append(Rule(r"extra\.weight", "extra/kernel"))
    with pytest.raises(KeyMismatchError) as info:
        strict_merge(expected, apply_rules(state, rules))
    err = info.value
    msg = str(err)
    assert err.missing == ["norm/scale"]
    assert err.unexpected == ["extra.weight"]
    assert err.mismatched == [("enc/kernel", (2, 4), (2, 3))]
    assert "norm/scale" in msg and "extra/kernel (from checkpoint key 'extra.weight')" in msg
    assert "got (2, 4), expected (2, 3)" in msg and "'e.weight'" in msg


def test_strict_merge_nests_and_casts():
    expected = {"a": {"k": jax.ShapeDtypeStruct((2,), jnp.float32)}, "b": (3,)}
    conv = {"a/k": np.ones(2, np.float64), "b": np.zeros(3, np.int32)}
    params = strict_merge(expected, conv)
    assert params["a"]["k"].dtype == np.float32
    assert params["b"].dtype == np.int32  # flat shape spec: dtype kept
    # a parameter tree of concrete arrays works as the expected tree too
    real = {"a": {"k": jnp.zeros(2)}, "b": np.zeros(3)}
    assert strict_merge(real, conv)["a"]["k"].shape == (2,)


def test_compare_and_table():
    golden = {"x": np.array([1.0, 2.0]), "ids": np.array([1, 2]), "tok": np.ones((2, 3, 4))}
    out = {"x": np.array([1.0, 2.001]), "ids": np.array([1, 3]), "tok": np.ones((2, 3, 4))}
    out["tok"][1, 2] = 9.0  # a padded position, masked out below
    mask = np.array([[True, True, True], [True, True, False]])
    rows = compare(
        out, golden, {"x": (1e-4, 1e-6), "tok": (0, 0)}, masks={"tok": mask}, exact=["ids"]
    )
    by = {r.name: r for r in rows}
    assert not by["x"].ok and by["x"].max_abs_err == pytest.approx(1e-3)
    assert not by["ids"].ok and by["tok"].ok and by["tok"].max_abs_err == 0
    assert not all_ok(rows)
    table = format_table(rows)
    assert "| x | 2 | 1.000e-03 |" in table and "MISMATCH" in table and "masked: 20/24" in table
    rows = compare({"x": np.array([np.nan, 2.0])}, golden, {"x": (1, 1)})
    assert not rows[0].ok
    rows = compare({"x": np.zeros(3)}, golden, {"x": (1, 1)})
    assert not rows[0].ok and "shape" in rows[0].note
    with pytest.raises(ValueError, match="no tolerance"):
        compare(out, golden, {})
    assert not all_ok([])
