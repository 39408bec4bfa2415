"""Parameter counts from jax.eval_shape: what is counted, and the paper's Table A1 figures."""

import dataclasses

import pytest

from jaxfm.graphfm import DatasetSpec, graphfm_config
from jaxfm.graphfm.summary import PAPER_COUNTS, format_summary, parameter_summary


def _trunk_formula(c) -> int:
    """The shared trunk counted by hand (GEGLU FFN: fc1 D -> 2F, fc2 F -> D; LayerNorm 2D)."""
    d, f, ln = c.dim, c.ffn_hidden, 2 * c.dim
    attn = 4 * (d * d + d)  # query/key/value/out kernels and biases
    ffn = d * 2 * f + 2 * f + f * d + d
    self_block = ln + attn + ln + ffn
    cross_block = 2 * ln + attn + ln + ffn
    h, k, p = c.signnet_hidden, c.pe_dim, c.pe_channels
    signnet = k * h + (h + h) + (h * h + h) + (h * h + h) + (h * p + p)
    encoder = c.num_latents * d + cross_block + c.encoder_depth * self_block + ln
    decoder = 3 * d + c.decoder_depth * self_block + ln
    return signnet + encoder + decoder


@pytest.mark.parametrize("name", ["small", "medium", "large"])
def test_counts_match_the_hand_formula_and_the_paper_within_10_percent(name):
    cfg = graphfm_config(name)
    s = parameter_summary(cfg, name=name)
    assert s["shared_trunk"] == _trunk_formula(cfg)
    assert s["total"] == s["shared_trunk"] + s["dataset_specific"] == sum(s["per_module"].values())
    assert sum(s["trunk_modules"].values()) == s["shared_trunk"]
    assert s["paper"] == PAPER_COUNTS[name]
    # What reproduces the paper (see jaxfm.graphfm.summary): trunk + one 8189-feature MLP.
    assert abs(s["paper_comparable"] / s["paper"] - 1) < 0.10
    assert abs(s["paper_ratio"] - 1) < 0.02  # in fact within 2 %


def test_trunk_does_not_depend_on_the_dataset_table():
    base = parameter_summary(graphfm_config("small"))
    specs = tuple(DatasetSpec(name=f"d{i}", num_features=100, num_classes=7) for i in range(5))
    many = parameter_summary(graphfm_config("small", datasets=specs))
    assert many["shared_trunk"] == base["shared_trunk"]
    assert many["datasets"] == 5
    # 5 x (MLP 128 -> 32 -> 24 and heads 32 -> 7 + regression 32 -> 1), stacked over S.
    per = (128 * 32 + 32) + (32 * 24 + 24) + (32 * 7 + 7) + (32 + 1)
    assert many["dataset_specific"] == 5 * per
    with_graph = parameter_summary(dataclasses.replace(graphfm_config("small"), graph_decoder=True))
    assert with_graph["shared_trunk"] > base["shared_trunk"]
    assert "graph_decoder" in with_graph["per_module"]


def test_format_summary_table():
    s = parameter_summary(graphfm_config("small"), name="small")
    text = format_summary(s)
    assert text.splitlines()[0] == "| parameters | count |"
    assert f"| shared trunk (all but feature MLPs and heads) | {s['shared_trunk']:,} |" in text
    assert "| paper, Table A1 (small) | 389,000 |" in text
    assert f"| paper-comparable / paper | {s['paper_ratio']:.3f} |" in text
