import dataclasses

import numpy as np
import pytest

from jaxfm.data.corpus import Unit, build_corpus
from jaxfm.data.packing import PackingBudget, pack_bucket
from jaxfm.graph.sbm import sbm_corpus
from jaxfm.graphfm import graphfm_config


@pytest.fixture(scope="module")
def tiny():
    """Three small SBM graphs (two datasets share nothing), a tiny config, and a packer."""
    graphs = sbm_corpus(3, seed=3, node_range=(20, 60), feature_dim=6)
    corpus = build_corpus(graphs, feature_dim=8, pe_dim=4, node_budget=256, seed=0)
    cfg = graphfm_config(
        "small",
        dim=16,
        num_latents=4,
        encoder_depth=1,
        decoder_depth=1,
        cross_heads=2,
        self_heads=2,
        decoder_heads=2,
        pe_dim=4,
        pe_width=4,
        signnet_hidden=8,
        feature_dim=8,
        num_neighbors=3,
        datasets=corpus.dataset_specs,
    )
    units = [corpus.materialize(Unit(i, None, g.num_nodes)) for i, g in enumerate(corpus.graphs)]

    def pack(chosen, *, nodes=256, graphs=4, targets=32, seed=0):
        budget = PackingBudget(nodes=nodes, graphs=graphs, targets=targets, neighbors=3)
        return pack_bucket(
            [units[i] for i in chosen],
            budget,
            num_datasets=len(cfg.datasets),
            feature_dim=8,
            pe_dim=4,
            seed=seed,
        )

    return dataclasses.make_dataclass("Tiny", ["cfg", "units", "pack", "corpus"])(
        cfg, units, pack, corpus
    )


def to_np(tree):
    import jax

    return jax.tree.map(np.asarray, tree)
