"""Shared GraphFM test fixtures: a tiny packed corpus, a tiny config, cheap params, cached jit.

Params come from ``jax.eval_shape`` + a seeded numpy generator (no jitted RNG init to compile),
and model applications go through one jitted function per config (batches share static shapes),
so each test file compiles only a handful of programs.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from jaxfm.data.corpus import Unit, build_corpus
from jaxfm.data.packing import PackingBudget, pack_bucket
from jaxfm.data.sbm import sbm_corpus
from jaxfm.graphfm import GraphFM, graphfm_config

TINY = dict(
    dim=16, num_latents=4, encoder_depth=1, decoder_depth=1, cross_heads=2, self_heads=2,
    decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=8, num_neighbors=3,
)  # fmt: skip


def random_params(shapes, seed=0, scale=1.0):
    """Seeded numpy parameters for a tree of shapes: kernels ~ N(0, 1/fan_in), vectors ~ N(0, .5),
    LayerNorm scales ~ 1 + N(0, .1)."""
    rng = np.random.default_rng(seed)

    def one(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return (1 + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
        std = 0.5 if len(s.shape) < 2 else s.shape[-2] ** -0.5
        return (scale * std * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, shapes)


def init_params(module, *args, seed=0, **kwargs):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
    return random_params(shapes, seed)


@functools.cache
def model_apply(cfg):
    """One jitted ``GraphFM(cfg).apply`` per config."""
    return jax.jit(GraphFM(cfg).apply)


@pytest.fixture(scope="session")
def tiny():
    """Three SBM graphs of different sizes (one dataset each), a tiny config, and a packer."""
    graphs = sbm_corpus(3, seed=3, node_range=(20, 60), feature_dim=6)
    corpus = build_corpus(graphs, feature_dim=8, pe_dim=4, node_budget=256, seed=0)
    cfg = graphfm_config("small", **TINY, datasets=corpus.dataset_specs)
    units = [corpus.materialize(Unit(i, None, g.num_nodes)) for i, g in enumerate(corpus.graphs)]

    def pack(chosen, *, nodes=192, graphs=4, targets=48, seed=0):
        budget = PackingBudget(nodes=nodes, graphs=graphs, targets=targets, neighbors=3)
        return pack_bucket(
            [units[i] for i in chosen],
            budget,
            num_datasets=len(cfg.datasets),
            feature_dim=8,
            pe_dim=4,
            seed=seed,
        )

    params = init_params(GraphFM(dataclasses.replace(cfg, graph_decoder=True)), pack([0]))
    fields = ["cfg", "units", "pack", "corpus", "params"]
    return dataclasses.make_dataclass("Tiny", fields)(cfg, units, pack, corpus, params)


def trunk_only(params, graph_decoder=False):
    """Drops the graph-decoder entries for a config without the graph decoder."""
    if graph_decoder:
        return params
    return {k: v for k, v in params.items() if k not in ("graph_decoder", "graph_heads")}
