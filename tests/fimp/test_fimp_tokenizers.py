"""Tokenizers (eq. 5): shapes, exact token values, patch order, mask substitution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.fimp import (
    FMRITokenizer,
    FMRITokenizerConfig,
    GeneTokenizer,
    GeneTokenizerConfig,
    ImageTokenizer,
    ImageTokenizerConfig,
    patchify_image,
    patchify_signal,
)
from jaxfm.nn import sinusoidal_1d, sinusoidal_2d
from jaxfm.testing import random_params


def _init_apply(module, *args):
    """Random parameters, then one jitted apply."""
    params = random_params(module, *args)
    return params, jax.jit(lambda p: module.apply({"params": p}, *args))(params)


def _gene_inputs(n=3, length=5, vocab=11):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (n, length))
    values = rng.normal(size=(n, length)).astype(np.float32)
    token_mask = np.ones((n, length), bool)
    token_mask[1, 3:] = False
    ids[1, 3:] = -1  # padding ids may be anything
    value_mask = rng.random((n, length)) < 0.5
    return ids, values, token_mask, value_mask


def test_gene_concat_values():
    ids, values, token_mask, value_mask = _gene_inputs()
    tok = GeneTokenizer(GeneTokenizerConfig(num_genes=11), dim=8)
    p, (tokens, mask) = _init_apply(tok, ids, values, token_mask, value_mask)
    assert tokens.shape == (3, 5, 8) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, token_mask)
    w, b = p["value_encoder"]["kernel"][0], p["value_encoder"]["bias"]
    table = p["gene_embedding"]["embedding"]
    for v in range(3):
        for i in range(5):
            if not token_mask[v, i]:
                np.testing.assert_array_equal(tokens[v, i], 0.0)
                continue
            value_part = p["mask_value_embedding"] if value_mask[v, i] else values[v, i] * w + b
            np.testing.assert_allclose(tokens[v, i, :4], value_part, atol=1e-6)
            np.testing.assert_allclose(tokens[v, i, 4:], table[ids[v, i]], atol=1e-6)


def test_gene_sum_options_and_param_names():
    ids, values, token_mask, _ = _gene_inputs()
    cfg = GeneTokenizerConfig(
        num_genes=11, combine="sum", value_hidden=6, gene_embedding_dim=3, embedding_norm=True
    )
    p, (tokens, _) = _init_apply(GeneTokenizer(cfg, dim=8), ids, values, token_mask)
    assert tokens.shape == (3, 5, 8)
    assert set(p) == {
        "gene_embedding",
        "gene_projection",
        "gene_norm",
        "value_encoder",
        "value_norm",
        "mask_value_embedding",
    }
    assert p["gene_embedding"]["embedding"].shape == (11, 3)
    assert set(p["value_encoder"]) == {"fc1", "fc2"}
    with pytest.raises(ValueError, match="no token dim"):
        GeneTokenizer(GeneTokenizerConfig(num_genes=3)).init(
            jax.random.key(0), ids, values, token_mask
        )


def test_patchify_image_order():
    n, h, w, c, p = 2, 6, 8, 3, 2
    images = np.arange(n * h * w * c, dtype=np.float32).reshape(n, h, w, c)
    patches = np.asarray(patchify_image(jnp.asarray(images), p))
    assert patches.shape == (n, (h // p) * (w // p), p * p * c)
    gw = w // p
    for i in range(h // p):
        for j in range(gw):
            expected = images[:, i * p : (i + 1) * p, j * p : (j + 1) * p, :].reshape(n, -1)
            np.testing.assert_array_equal(patches[:, i * gw + j], expected)


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_image_tokens(combine):
    cfg = ImageTokenizerConfig(image_size=(4, 6), patch_size=2, channels=3, combine=combine)
    images = np.random.default_rng(1).normal(size=(2, 4, 6, 3)).astype(np.float32)
    p, (tokens, mask) = _init_apply(ImageTokenizer(cfg, dim=16), images)
    assert tokens.shape == (2, 6, 16) and bool(mask.all())
    proj = (
        patchify_image(images, 2) @ p["patch_projection"]["kernel"] + p["patch_projection"]["bias"]
    )
    if combine == "concat":
        assert p["patch_projection"]["kernel"].shape == (12, 8)
        np.testing.assert_allclose(tokens[..., :8], proj, atol=1e-5)
        np.testing.assert_allclose(tokens[0, :, 8:], sinusoidal_2d(2, 3, 8), atol=1e-6)
    else:
        np.testing.assert_allclose(tokens, proj + sinusoidal_2d(2, 3, 16), atol=1e-5)
    with pytest.raises(ValueError, match="images must be"):
        ImageTokenizer(cfg, dim=16).init(jax.random.key(0), jnp.ones((1, 6, 4, 3)))


def test_fmri_patching_and_mask_token():
    cfg = FMRITokenizerConfig(patch_size=4, num_patches=3)
    signal = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)
    np.testing.assert_array_equal(patchify_signal(jnp.asarray(signal), 4)[1, 2], signal[1, 8:12])
    xyz = np.array([[10.0, -20.0, 30.0], [-70.0, 5.0, 20.0]], np.float32)  # millimetres
    patch_mask = np.array([[False, True, False], [True, False, False]])
    tok = FMRITokenizer(cfg, dim=8)
    p, (tokens, mask) = _init_apply(tok, signal, xyz, patch_mask)
    assert tokens.shape == (2, 3, 8) and bool(mask.all())
    # Coordinates enter scaled (x 0.02 by default), so millimetres stay O(1).
    spatial = (0.02 * xyz) @ p["xyz_projection"]["kernel"] + p["xyz_projection"]["bias"]  # [N, D]
    temporal = sinusoidal_1d(3, 8)
    proj = signal.reshape(2, 3, 4) @ p["patch_projection"]["kernel"] + p["patch_projection"]["bias"]
    emb = np.where(patch_mask[..., None], p["mask_token"], proj)
    np.testing.assert_allclose(tokens, emb + spatial[:, None] + temporal, atol=1e-5)
    # Values under masked patches cannot reach the tokens.
    corrupted = signal.copy()
    corrupted[0, 4:8] = 1e3
    out2, _ = jax.jit(lambda s: tok.apply({"params": p}, s, xyz, patch_mask))(corrupted)
    np.testing.assert_allclose(out2, tokens, atol=1e-6)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="xyz_scale"):
            FMRITokenizerConfig(patch_size=4, num_patches=3, xyz_scale=bad)
