"""FIMP training driver: data preparation, masks, model dirs, attention maps, the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.cli import main
from jaxfm.fimp.attention_export import load_fimp
from jaxfm.fimp.attention_map import group_attention_maps
from jaxfm.fimp.config import fimp_config
from jaxfm.fimp.data import DataOptions, prepare_fimp_data
from jaxfm.fimp.tasks import FIMPTaskModel
from jaxfm.graph import Budget, edge_mask, node_mask, pad_to_budget
from jaxfm.model_dir import load_model_dir, save_model_dir
from jaxfm.train.fimp import RunConfig, _random_value_mask, train_fimp
from jaxfm.train.optim import OptimizerConfig


def test_random_value_mask_masks_80_percent_of_valid_tokens():
    token_mask = np.zeros((4, 10), bool)
    for i, n in enumerate([10, 5, 1, 0]):
        token_mask[i, :n] = True
    m = np.asarray(_random_value_mask(jax.random.key(0), jnp.asarray(token_mask), 0.8))
    assert m.sum(1).tolist() == [8, 4, 1, 0]
    assert not (m & ~token_mask).any()


@pytest.mark.parametrize("task", ["celltype", "expression", "image", "fmri"])
def test_prepare_synthetic_data(task):
    fd = prepare_fimp_data(task, "synthetic", DataOptions(num_nodes=80, num_recordings=6))
    g = fd.graphs[0]
    n = int(g.n_node.sum())
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    assert np.all(s[s == r] == np.arange(n)[np.isin(np.arange(n), s[s == r])])
    assert set(np.unique(s[s == r])) == set(range(n)), "every node has its self loop"
    parts = [fd.splits[k] for k in ("train", "val", "test")]
    total = n if task != "fmri" else len(fd.graphs)
    assert sorted(np.concatenate(parts).tolist()) == list(range(total))
    if task == "expression":
        vm, tm = g.nodes["value_mask"], g.nodes["token_mask"]
        assert not (vm & ~tm).any() and vm.sum() > 0.7 * tm.sum()
    if task == "fmri":
        assert g.nodes["signal"].shape == (424, 160) and g.nodes["patch_mask"].shape == (424, 8)


def test_image_radius_graph_in_miles():
    opts = DataOptions(num_nodes=60, radius_miles=800.0)
    g = prepare_fimp_data("image", "synthetic", opts).graphs[0]
    from jaxfm.data import synthetic_images
    from jaxfm.graph import haversine_distance

    coords = synthetic_images(num_nodes=60, seed=0).coords
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    d = haversine_distance(coords[s], coords[r], unit="mi")
    assert np.all(d <= 800.0 + 1e-3)


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.h5ad"):
        prepare_fimp_data("celltype", str(tmp_path / "nope.h5ad"))
    with pytest.raises(ValueError, match="unknown FIMP task"):
        prepare_fimp_data("segmentation", "synthetic")


def test_bad_fmri_file_is_named(tmp_path):
    path = tmp_path / "rec.npz"
    np.savez(path, signals=np.zeros((3, 5, 30), np.float32), coords=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="multiple of 20"):
        prepare_fimp_data("fmri", str(path))
    np.savez(path, signals=np.full((3, 5, 40), np.nan, np.float32), coords=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        prepare_fimp_data("fmri", str(path))


def test_model_dir_roundtrip_and_atomic_failure(tmp_path):
    params = {"a": {"kernel": np.arange(6.0).reshape(2, 3)}, "b": np.ones(2, np.float32)}
    out = save_model_dir(tmp_path / "m", params, {"x": 1})
    loaded, cfg = load_model_dir(out)
    np.testing.assert_array_equal(loaded["a"]["kernel"], params["a"]["kernel"])
    assert cfg == {"x": 1}
    with pytest.raises(TypeError):  # not JSON-able: the write fails half-way
        save_model_dir(tmp_path / "m", {"c": np.zeros(1)}, {"bad": object()})
    loaded, cfg = load_model_dir(out)  # the previous model is untouched
    assert cfg == {"x": 1} and "c" not in loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no temporary left behind"
    (out / "params.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="unreadable"):
        load_model_dir(out)


def _tiny_model_and_graph():
    fd = prepare_fimp_data("celltype", "synthetic", DataOptions(num_nodes=40, max_genes=12))
    cfg = fimp_config("tiny", tokenizer=fd.tokenizer)
    model = FIMPTaskModel(cfg, "celltype", fd.num_classes)
    g = fd.graphs[0]
    n, e = int(g.n_node.sum()), int(g.n_edge.sum())
    padded = pad_to_budget(g, Budget(n_node=n + 1, n_edge=e, n_graph=2))
    params = model.init(
        jax.random.key(0),
        padded.nodes,
        padded.senders,
        padded.receivers,
        node_mask=node_mask(padded),
        edge_mask=edge_mask(padded),
    )["params"]
    return fd, model, params, g, padded


def test_group_attention_maps_equal_a_loop():
    fd, model, params, g, padded = _tiny_model_and_graph()
    labels = np.asarray(g.nodes["label"])
    ids = np.asarray(g.nodes["gene_ids"])
    v = fd.tokenizer.num_genes
    num_groups = int(labels.max()) + 1
    sums, counts = group_attention_maps(
        model,
        params,
        [g],
        groups=[labels],
        num_groups=num_groups,
        token_ids=[ids],
        num_token_ids=v,
        edge_chunk_size=7,
        progress=False,
    )
    # Reference: every edge's maps at once, accumulated in a Python loop.
    e = int(g.n_edge.sum())
    out = model.apply(
        {"params": params},
        padded.nodes,
        padded.senders,
        padded.receivers,
        node_mask=node_mask(padded),
        edge_mask=edge_mask(padded),
        attention_edges=np.arange(e),
    )
    maps = np.asarray(out["attention_maps"][0, 0]).mean(1)  # [E, L, L]
    tmask = np.asarray(g.nodes["token_mask"])
    ref_s, ref_c = np.zeros_like(sums), np.zeros_like(counts)
    for i, (s, r) in enumerate(zip(np.asarray(g.senders), np.asarray(g.receivers), strict=True)):
        if s == r:
            continue
        for a in np.flatnonzero(tmask[r]):
            for b in np.flatnonzero(tmask[s]):
                ref_s[labels[r], labels[s], ids[r, a], ids[s, b]] += maps[i, a, b]
                ref_c[labels[r], labels[s], ids[r, a], ids[s, b]] += 1
    np.testing.assert_allclose(sums, ref_s, atol=1e-5)
    np.testing.assert_array_equal(counts, ref_c)
    # Each valid query row of each edge sums to one, so the sums add up to the query-row count.
    assert sums.sum() == pytest.approx(
        sum(
            tmask[r].sum()
            for s, r in zip(np.asarray(g.senders), np.asarray(g.receivers), strict=True)
            if s != r
        ),
        rel=1e-5,
    )


@pytest.mark.parametrize("model_kind", ["fimp", "mlp"])
def test_short_run_writes_results(tmp_path, model_kind):
    run = RunConfig(
        task="celltype",
        model=model_kind,
        data_options=DataOptions(num_nodes=150, max_genes=16),
        epochs=2,
        batch_size=64,
        output_json=str(tmp_path / "r.json"),
        save_dir=str(tmp_path / "model") if model_kind == "fimp" else None,
        workdir=str(tmp_path / "w"),  # not the default runs/fimp of the current directory
    )
    res = train_fimp(run, log_stream=None, progress=False)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["test"] == res["test"] and len(saved["history"]) == 2
    assert 0.0 <= res["test"]["accuracy"] <= 1.0 and res["test"]["count"] == 30
    if model_kind == "fimp":
        model, params, cfg = load_fimp(tmp_path / "model")
        assert cfg["task"] == "celltype" and model.num_classes == 5
        assert cfg["fimp"] == res["config"]
        n_saved = sum(x.size for x in jax.tree.leaves(params))
        assert n_saved == res["num_params"]


def test_cli_reports_bad_input(capsys):
    assert main(["fimp", "train", "--task", "celltype", "--data", "/no/such/file.h5ad"]) == 2
    assert "/no/such/file.h5ad" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fimp", "train", "--task", "nonsense"])


@pytest.mark.slow
def test_fimp_learns_fmri_reconstruction_over_a424():
    """FIMP-base reconstructs masked fMRI patches from neighbouring regions (R² well above 0).

    Regression test: with raw millimetre coordinates in the spatial term (no ``xyz_scale``) the
    same run stays at R² ~ 0 (every token swamped by a term ~50x its signal part).
    """
    opts = DataOptions(num_recordings=80, num_timepoints=160, mask_rate=0.5, knn=6, seed=0)
    res = train_fimp(
        RunConfig(
            task="fmri",
            data_options=opts,
            optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=1e-4),
            epochs=15,
            patience=15,
            batch_size=4,
        ),
        progress=False,
    )
    assert res["test"]["r2"] > 0.4, res["test"]


def test_plot_group_maps_writes_png_and_leaves_the_backend_alone(tmp_path):
    import matplotlib

    from jaxfm.fimp.attention_map import plot_group_maps

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # stands in for a notebook's inline backend
    try:
        mean = np.random.default_rng(0).random((2, 2, 3, 3))
        counts = np.zeros((2, 2, 3, 3))
        counts[0, 1], counts[1, 1] = 5, 2
        pairs = plot_group_maps(
            mean, counts, tmp_path / "m.png", group_names=["a", "b"], token_names=list("xyz")
        )
        assert pairs == [(0, 1), (1, 1)], "group pairs with token pairs, most first"
        assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_tokenizer_overrides_reach_the_model_and_bad_fields_are_named():
    from jaxfm.train.fimp import build_config

    data = prepare_fimp_data("expression", "synthetic", DataOptions(num_nodes=40, seed=0))
    run = RunConfig(task="expression", overrides={"tokenizer": {"value_hidden": 24}, "dim": 16})
    cfg = build_config(run, data)
    assert cfg.dim == 16 and cfg.tokenizer.value_hidden == 24
    assert cfg.tokenizer.num_genes == data.tokenizer.num_genes  # the rest comes from the data
    model = FIMPTaskModel(cfg, "expression")
    nodes = {k: jnp.asarray(v[:3]) for k, v in data.graphs[0].nodes.items()}
    params = model.init(jax.random.key(0), nodes, jnp.zeros(1, int), jnp.zeros(1, int))["params"]
    # the value encoder is now an MLP 1 -> 24 -> D/2
    assert params["fimp"]["tokenizer"]["value_encoder"]["fc1"]["kernel"].shape == (1, 24)
    bad = RunConfig(task="expression", overrides={"tokenizer": {"value_hiden": 24}})
    with pytest.raises(ValueError, match=r"value_hiden.*GeneTokenizerConfig"):
        build_config(bad, data)
