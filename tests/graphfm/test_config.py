"""GraphFM configs: Table A1 sizes, validation, dict round trip."""

import dataclasses
import json

import pytest

from jaxfm.graphfm import VARIANTS, DatasetSpec, GraphFMConfig, graphfm_config

# Paper Table A1: K, D, encoder depth, decoder depth, cross/self/decoder heads, FFN hidden.
TABLE_A1 = {
    "small": (32, 32, 4, 2, 4, 4, 4, 128),
    "medium": (256, 256, 10, 4, 4, 4, 4, 1024),
    "large": (512, 512, 12, 4, 4, 8, 8, 2048),
}


@pytest.mark.parametrize("name", sorted(TABLE_A1))
def test_variants_match_paper_table_a1(name):
    c = graphfm_config(name)
    got = (
        c.num_latents, c.dim, c.encoder_depth, c.decoder_depth, c.cross_heads, c.self_heads,
        c.decoder_heads, c.ffn_hidden,
    )  # fmt: skip
    assert got == TABLE_A1[name]


def test_variants_table_and_overrides():
    assert sorted(VARIANTS) == ["large", "medium", "small"]
    c = graphfm_config("medium", dim=128, dropout=0.1)
    assert (c.dim, c.num_latents, c.dropout, c.ffn_hidden) == (128, 256, 0.1, 512)
    with pytest.raises(ValueError, match="unknown GraphFM config 'huge'"):
        graphfm_config("huge")
    with pytest.raises(ValueError, match=r"unknown fields \['depth'\]"):
        graphfm_config("small", depth=3)


def test_to_dict_from_dict_round_trip_through_json():
    specs = (
        DatasetSpec(name="a", num_features=5, num_classes=3),
        DatasetSpec(name="b", num_features=8, num_classes=0, task="regression"),
    )
    c = graphfm_config(
        "small", feature_dim=8, datasets=specs, dtype="bfloat16", attention="bucketed",
        bucket_nodes=64, graph_decoder=True, feature_mlp="gather",
    )  # fmt: skip
    back = GraphFMConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.datasets == specs
    assert c.num_classes_max == 3 and c.pe_channels == 8 and c.hidden_features == 32
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        GraphFMConfig.from_dict({**c.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(self_heads=5), "self_heads=5 must be a positive divisor of dim=32"),
        (dict(dim=0), "dim must be an int >= 1"),
        (dict(pe_width=32), r"pe_width must be in \(0, dim=32\)"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(attention="flash"), "attention must be one of"),
        (dict(feature_mlp="loop"), "feature_mlp must be one of"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(bucket_nodes=0), "bucket_nodes must be None or an int >= 1"),
        (dict(num_neighbors=-1), "num_neighbors must be an int >= 0"),
        (
            dict(datasets=(DatasetSpec(name="w", num_features=300, num_classes=2),)),
            "dataset 'w' has 300 features > feature_dim=128",
        ),
        (
            dict(datasets=(DatasetSpec(name="a", num_features=3, num_classes=2),) * 2),
            "duplicate names",
        ),
    ],
)
def test_invalid_configs_raise_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        graphfm_config("small", **overrides)


def test_dataset_spec_validation():
    with pytest.raises(ValueError, match="task must be one of"):
        DatasetSpec(name="x", num_features=3, num_classes=2, task="ranking")
    with pytest.raises(ValueError, match="needs num_classes >= 1"):
        DatasetSpec(name="x", num_features=3, num_classes=0)
    with pytest.raises(ValueError, match="num_features must be an int >= 1"):
        DatasetSpec(name="x", num_features=0, num_classes=2)
    reg = DatasetSpec(name="r", num_features=3, num_classes=0, task="regression")
    assert dataclasses.asdict(reg)["task"] == "regression"
