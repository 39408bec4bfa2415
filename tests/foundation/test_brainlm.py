"""Flax BrainLM vs the original PyTorch outputs (golden), cross-node form, Nystrom path."""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.foundation.brainlm import (
    BrainLM,
    BrainLMConfig,
    masked_loss,
    model_from_config,
    random_masking,
    temporal_encoding,
)
from jaxfm.foundation.nystrom import NystromformerLayer
from jaxfm.ops.nystrom import iterative_pinv, nystrom_attention

FIXTURE = "brainlm_small"


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    from converters.brainlm import convert

    d = fixtures_dir / FIXTURE
    converted = convert(d)
    golden = dict(np.load(d / "golden.npz"))
    spec = json.loads((d / "fixture.json").read_text())
    model = model_from_config(converted.config)
    return model, {"params": converted.params}, golden, spec


@pytest.fixture(scope="module")
def outputs(fixture):
    model, variables, g, _ = fixture
    out = model.apply(
        variables,
        g["signal_vectors"],
        g["xyz_vectors"],
        g["noise"],
        output_attentions=True,
        output_intermediates=True,
    )
    return {k: np.asarray(v) for k, v in out.items()}


def test_golden_every_tensor(fixture, outputs):
    _, _, g, spec = fixture
    tol = spec["tolerance_suggestion"]
    compared = []
    for name, t in tol["per_tensor"].items():
        got, ref = outputs[name], g[name]
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, rtol=t["rtol"], atol=t["atol"], err_msg=name)
        compared.append(name)
    for name in tol["exact"]:
        np.testing.assert_array_equal(outputs[name], g[name], err_msg=name)
        compared.append(name)
    # every golden output (all but the three inputs) was compared
    assert set(g) - set(compared) == {"signal_vectors", "xyz_vectors", "noise"}


def test_issue_outputs_and_shapes(outputs):
    for name in ("last_hidden_state", "hidden_states", "mask", "ids_restore", "logits", "loss"):
        assert name in outputs
    assert outputs["logits"].shape == (2, 16, 5, 20)  # [B, V, T/P, P]
    # mask: exactly S - len_keep removed tokens per sample
    assert (outputs["mask"].sum(1) == 80 - 60).all()


def test_jit_matches_eager(fixture, outputs):
    model, variables, g, _ = fixture
    f = jax.jit(lambda v, s, x, n: model.apply(v, s, x, n)["last_hidden_state"])
    got = f(variables, g["signal_vectors"], g["xyz_vectors"], g["noise"])
    np.testing.assert_allclose(got, outputs["last_hidden_state"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- cross-node


def _layer_from(fixture, which):
    model, variables, _, _ = fixture
    cfg = model.config
    if which == "encoder":
        p = variables["params"]["vit"]["encoder"]["layer_0"]
        heads, inter = cfg.num_attention_heads, cfg.intermediate_size
    else:
        p = variables["params"]["decoder"]["decoder_layers_0"]
        heads, inter = cfg.decoder_num_attention_heads, cfg.decoder_intermediate_size
    layer = NystromformerLayer(
        num_heads=heads,
        intermediate_size=inter,
        layer_norm_eps=cfg.layer_norm_eps,
        conv_kernel_size=cfg.conv_kernel_size,
        num_landmarks=cfg.num_landmarks,
        segment_means_seq_len=cfg.segment_means_seq_len,
    )
    return layer, {"params": p}


@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_cross_node_self_loops_reproduce_layer(fixture, which):
    layer, v = _layer_from(fixture, which)
    x = jax.random.normal(jax.random.key(0), (5, 12, 32))
    ids = jnp.arange(5)
    want = layer.apply(v, x)
    got = layer.apply(v, x, ids, ids, method=NystromformerLayer.cross_node)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    # padding edges are ignored
    s, r = jnp.concatenate([ids, jnp.array([0, 3])]), jnp.concatenate([ids, jnp.array([1, 1])])
    mask = jnp.arange(7) < 5
    got = layer.apply(v, x, s, r, edge_mask=mask, method=NystromformerLayer.cross_node)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_model_cross_node_equals_encoder_stack(fixture):
    model, variables, _, _ = fixture
    x = jax.random.normal(jax.random.key(1), (3, 7, 32))
    ids = jnp.arange(3)
    want = model.apply(variables, x, method=BrainLM.encode)
    got = model.apply(variables, x, ids, ids, method=BrainLM.cross_node)
    ln = variables["params"]["vit"]["layernorm"]
    mu, var = got.mean(-1, keepdims=True), got.var(-1, keepdims=True)
    got = (got - mu) / jnp.sqrt(var + 1e-12) * ln["scale"] + ln["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-6)


def _np_layer(p, xq, sources, aggregation, eps=1e-12):
    """float64 numpy NystromformerLayer (exact path) with cross-node messages from ``sources``."""
    a = p["attention"]
    f64 = lambda t: np.asarray(t, np.float64)
    wq, wk, wv = (f64(a["self"][n]["kernel"]) for n in ("query", "key", "value"))
    bq, bk, bv = (f64(a["self"][n]["bias"]) for n in ("query", "key", "value"))
    conv = f64(a["self"]["conv"]["kernel"])[:, 0, 0, :]  # [k, H]
    k_size = conv.shape[0]
    q = np.einsum("ld,dhk->lhk", xq, wq) + bq
    dh = q.shape[-1]
    ctxs = []
    for xs in sources:
        k = np.einsum("ld,dhk->lhk", xs, wk) + bk
        v = np.einsum("ld,dhk->lhk", xs, wv) + bv
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(dh)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        ctx = np.einsum("hqk,khd->qhd", pr, v)
        vp = np.pad(v, ((k_size // 2, k_size // 2), (0, 0), (0, 0)))
        for j in range(k_size):  # cross-correlation along the source's token axis
            ctx += conv[j][None, :, None] * vp[j : j + v.shape[0]]
        o = a["output"]["dense"]
        ctxs.append(np.einsum("lhk,hkf->lf", ctx, f64(o["kernel"])) + f64(o["bias"]))
    msg = np.zeros_like(xq) if not ctxs else np.sum(ctxs, 0)
    if ctxs and aggregation == "mean":
        msg = msg / len(ctxs)

    def ln(x, prm):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * f64(prm["scale"]) + f64(prm["bias"])

    h = ln(xq + msg, a["output"]["LayerNorm"])
    i = h @ f64(p["intermediate"]["dense"]["kernel"]) + f64(p["intermediate"]["dense"]["bias"])
    i = 0.5 * i * (1 + np.vectorize(math.erf)(i / math.sqrt(2)))
    o = i @ f64(p["output"]["dense"]["kernel"]) + f64(p["output"]["dense"]["bias"])
    return ln(h + o, p["output"]["LayerNorm"])


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_cross_node_matches_numpy_reference(fixture, aggregation):
    layer, v = _layer_from(fixture, "encoder")
    x = np.asarray(jax.random.normal(jax.random.key(2), (4, 11, 32)), np.float64)
    senders, receivers = np.array([1, 2, 0, 3]), np.array([0, 0, 1, 1])
    got = layer.apply(
        v,
        jnp.asarray(x, jnp.float32),
        senders,
        receivers,
        aggregation=aggregation,
        method=NystromformerLayer.cross_node,
    )
    for node in range(4):
        src = [x[s] for s, r in zip(senders, receivers, strict=True) if r == node]
        want = _np_layer(v["params"], x[node], src, aggregation)
        np.testing.assert_allclose(got[node], want, rtol=1e-4, atol=2e-5, err_msg=str(node))


def test_cross_node_ignores_padded_source_tokens(fixture):
    layer, v = _layer_from(fixture, "encoder")
    x = jax.random.normal(jax.random.key(3), (3, 10, 32))
    kv_mask = jnp.arange(10)[None, :] < jnp.array([[10], [6], [8]])
    s, r = jnp.array([0, 1, 2, 1]), jnp.array([1, 1, 0, 2])
    run = lambda xx: layer.apply(v, xx, s, r, kv_mask=kv_mask, method=NystromformerLayer.cross_node)
    noise = jax.random.normal(jax.random.key(4), x.shape) * 5
    x2 = jnp.where(kv_mask[:, :, None], x, noise)  # change only padded tokens
    # queries of padded tokens change too; compare the rows a real token asks from
    np.testing.assert_allclose(run(x)[1], run(x2.at[1].set(x[1]))[1], rtol=1e-5, atol=1e-6)


def test_cross_node_rejects_length_mismatch_with_conv(fixture):
    layer, v = _layer_from(fixture, "encoder")
    x = jnp.zeros((2, 4, 32))
    with pytest.raises(ValueError, match="as long as"):
        layer.apply(
            v, x, jnp.array([0]), jnp.array([1]), x_src=jnp.zeros((2, 5, 32)),
            method=NystromformerLayer.cross_node,
        )  # fmt: skip


# ----------------------------------------------------------------------------- Nystrom path


def _np_nystrom(q, k, v, m, seg, init="original", n_iter=6):
    """The transformers algorithm transcribed in float64 numpy ([B, H, S, Dh] layout)."""
    q, k, v = (np.asarray(t, np.float64).transpose(0, 2, 1, 3) for t in (q, k, v))
    q, k = q / math.sqrt(math.sqrt(q.shape[-1])), k / math.sqrt(math.sqrt(k.shape[-1]))
    b, h, _, d = q.shape
    ql = q.reshape(b, h, m, seg, d).mean(-2)
    kl = k.reshape(b, h, m, seg, d).mean(-2)

    def sm(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    k1, k2, k3 = (
        sm(q @ kl.swapaxes(-1, -2)),
        sm(ql @ kl.swapaxes(-1, -2)),
        sm(ql @ k.swapaxes(-1, -2)),
    )
    eye = np.eye(m)
    if init == "original":
        z = 1 / np.max(k2.sum(-2)) * k2.swapaxes(-1, -2)
    else:
        z = 1 / k2.sum(-2).max(-1)[:, :, None, None] * k2.swapaxes(-1, -2)
    for _ in range(n_iter):
        kz = k2 @ z
        z = (0.25 * z) @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    return ((k1 @ z) @ (k3 @ v)).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("init", ["original", "exact"])
def test_nystrom_attention_matches_transcribed_reference(init):
    q, k, v = jax.random.normal(jax.random.key(5), (3, 2, 12, 3, 4)) * 0.7
    f = jax.jit(
        functools.partial(nystrom_attention, num_landmarks=4, segment_len=3, init_option=init)
    )
    got, probs = f(q, k, v)
    np.testing.assert_allclose(got, _np_nystrom(q, k, v, 4, 3, init), rtol=1e-4, atol=1e-5)
    assert probs.shape == (2, 3, 12, 4)


def test_nystrom_with_token_landmarks_approaches_exact_softmax():
    q, k, v = jax.random.normal(jax.random.key(6), (3, 1, 8, 2, 4)) * 0.5
    f = jax.jit(functools.partial(nystrom_attention, num_landmarks=8, segment_len=1, n_iter=30))
    got, _ = f(q, k, v)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    want = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_iterative_pinv_inverts_and_masks_the_global_scale():
    a = jax.nn.softmax(jax.random.normal(jax.random.key(7), (2, 1, 5, 5)), -1)
    z = jax.jit(functools.partial(iterative_pinv, n_iter=25))(a)
    np.testing.assert_allclose(jnp.einsum("bhij,bhjk->bhik", a, z)[0, 0], np.eye(5), atol=1e-4)
    # batch_valid leaves padding rows out of the global 'original' scale
    masked = iterative_pinv(a, batch_valid=jnp.array([True, False]))
    np.testing.assert_allclose(masked[0], iterative_pinv(a[:1])[0], rtol=1e-6, atol=1e-7)


def test_nystrom_layer_cross_node_self_loops():
    layer = NystromformerLayer(
        num_heads=2, intermediate_size=32, num_landmarks=4, segment_means_seq_len=16,
        conv_kernel_size=3,
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(12), (2, 16, 16))
    v = jax.jit(layer.init)(jax.random.key(13), x)
    ids = jnp.arange(2)
    got = layer.apply(v, x, ids, ids, method=NystromformerLayer.cross_node)
    np.testing.assert_allclose(got, layer.apply(v, x), rtol=1e-5, atol=2e-6)


@pytest.mark.slow
def test_model_runs_on_nystrom_path():
    # mask_ratio 0 keeps all 15 tokens: encoder and decoder both see 16 = 4 landmarks x 4
    cfg = BrainLMConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, num_brain_voxels=3, num_timepoints_per_voxel=20,
        timepoint_patching_size=4, mask_ratio=0.0, num_landmarks=4, segment_means_seq_len=16,
        conv_kernel_size=3,
    )  # fmt: skip
    model = BrainLM(config=cfg)
    sig = jax.random.normal(jax.random.key(8), (2, 3, 20))
    xyz = jax.random.normal(jax.random.key(9), (2, 3, 3))
    noise = jax.random.uniform(jax.random.key(10), (2, 15))
    variables = jax.jit(model.init)(jax.random.key(11), sig, xyz, noise)
    out = model.apply(variables, sig, xyz, noise, output_attentions=True)
    assert out["attentions_layer0"].shape == (2, 2, 16, 4)  # [B, H, S, m]
    assert np.isfinite(out["logits"]).all()
    assert np.isnan(out["loss"])  # nothing masked: 0 / 0, as the original


# ----------------------------------------------------------------------------- pieces


def test_random_masking_exact_and_stable():
    x = jnp.arange(5.0)[None, :, None]
    noise = jnp.array([[0.3, 0.1, 0.2, 0.9, 0.1]])  # a tie: token 1 before token 4
    kept, mask, ids_restore = random_masking(x, noise, 0.4)  # len_keep = int(5 * 0.6) = 3
    assert kept[0, :, 0].tolist() == [1.0, 4.0, 2.0]
    assert mask[0].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert ids_restore[0].tolist() == [3, 0, 2, 4, 1]


def test_temporal_encoding_interleaved():
    pe = temporal_encoding(3, 4)
    np.testing.assert_allclose(pe[0], [0, 1, 0, 1])
    w1 = math.exp(-2 * math.log(10000.0) / 4)
    np.testing.assert_allclose(
        pe[2], [math.sin(2), math.cos(2), math.sin(2 * w1), math.cos(2 * w1)], atol=1e-6
    )


def test_masked_loss_mse_and_mae():
    logits = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
    target = jnp.zeros_like(logits)
    mask = jnp.array([[[0.0, 1.0]]])
    assert float(masked_loss(logits, target, mask)) == pytest.approx((9 + 16) / 2)
    assert float(masked_loss(logits, target, mask, "mae")) == pytest.approx(7 / 2)


def test_noise_none_draws_from_masking_rng(fixture):
    model, variables, g, _ = fixture
    run = lambda seed: model.apply(
        variables, g["signal_vectors"], g["xyz_vectors"], rngs={"masking": jax.random.key(seed)}
    )["mask"]
    np.testing.assert_array_equal(run(0), run(0))
    assert (np.asarray(run(0)).sum(1) == 20).all()
    assert not np.array_equal(run(0), run(1))


def test_config_round_trip_and_validation():
    cfg = BrainLMConfig(hidden_size=32, decoder_hidden_size=32, conv_kernel_size=None)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["family"] == "brainlm"
    assert BrainLMConfig.from_dict(d) == cfg
    assert model_from_config(d).config == cfg
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        dataclasses.replace(cfg, decoder_hidden_size=16)
    with pytest.raises(ValueError, match="conv_kernel_size"):
        dataclasses.replace(cfg, conv_kernel_size=8)
    with pytest.raises(ValueError, match="loss_fn"):
        dataclasses.replace(cfg, loss_fn="huber")
    with pytest.raises(ValueError, match="unknown keys"):
        BrainLMConfig.from_dict({**d, "foo": 1})
    with pytest.raises(ValueError, match="family"):
        BrainLMConfig.from_dict({**d, "family": "vit"})


def test_bad_input_shapes_are_named(fixture):
    model, variables, g, _ = fixture
    with pytest.raises(ValueError, match="timepoint_patching_size"):
        model.apply(variables, g["signal_vectors"][..., :90], g["xyz_vectors"], g["noise"])
    with pytest.raises(ValueError, match="noise"):
        model.apply(variables, g["signal_vectors"], g["xyz_vectors"], g["noise"][:, :70])
