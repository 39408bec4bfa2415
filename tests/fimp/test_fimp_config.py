"""FIMP configs: validation, variants, derivation."""

import dataclasses

import jax.numpy as jnp
import pytest

from jaxfm.fimp import (
    VARIANTS,
    FIMPConfig,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
    MessageCreatorConfig,
    fimp_config,
)


def test_variants_and_fimp_config():
    assert {"tiny", "small", "base"} <= set(VARIANTS)
    cfg = fimp_config("base", tokenizer=FMRITokenizerConfig(num_patches=16), aggregation="sum")
    assert cfg.dim == VARIANTS["base"].dim and cfg.aggregation == "sum"
    assert cfg.tokenizer.num_timepoints == 320
    assert cfg.compute_dtype == jnp.float32
    assert cfg.message_mlp_dim == 4 * cfg.dim
    with pytest.raises(ValueError, match="unknown FIMP variant"):
        fimp_config("huge", tokenizer=FMRITokenizerConfig(num_patches=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3


def test_image_config():
    tok = ImageTokenizerConfig(image_size=32, patch_size=8, channels=3)
    assert tok.image_size == (32, 32) and tok.grid == (4, 4) and tok.num_patches == 16
    assert tok.resolved_pe_dim(64) == 32
    assert (
        ImageTokenizerConfig(image_size=(8, 16), patch_size=4, combine="sum").resolved_pe_dim(12)
        == 12
    )
    with pytest.raises(ValueError, match="divisible"):
        ImageTokenizerConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="multiple of 4"):
        FIMPConfig(dim=36, tokenizer=ImageTokenizerConfig(image_size=8, patch_size=4, pe_dim=6))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MessageCreatorConfig(kind="attention", num_layers=2), "single cross-attention"),
        (lambda: MessageCreatorConfig(kind="mamba"), "kind must be"),
        (lambda: MessageCreatorConfig(norm="sandwich"), "norm must be"),
        (lambda: MessageCreatorConfig(activation="tanh"), "activation must be"),
        (lambda: FIMPConfig(dim=30, message=MessageCreatorConfig(num_heads=4)), "divisible"),
        (lambda: FIMPConfig(dim=32, aggregation="max"), "aggregation must be"),
        (lambda: FIMPConfig(dim=32, dtype="float16"), "dtype must be"),
        (lambda: FIMPConfig(dim=32, dropout=1.0), "dropout"),
        (lambda: FIMPConfig(dim=32, edge_chunk_size=0), "edge_chunk_size"),
        (lambda: FIMPConfig(dim=32, tokenizer=GeneTokenizerConfig(num_genes=5, dim=16)), "!= dim"),
        (lambda: GeneTokenizerConfig(num_genes=0), "num_genes"),
        (lambda: GeneTokenizerConfig(num_genes=3, dim=7), "even dim"),
        (lambda: FMRITokenizerConfig(num_patches=4, patch_size=0), "patch_size"),
    ],
)
def test_validation_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
