"""The FIMP trainer with the baselines: GNNs train on the synthetic data, fMRI fillings, config
validation and the CLI flag."""

import json

import numpy as np
import pytest

from jaxfm.cli import main
from jaxfm.fimp.data import DataOptions
from jaxfm.train.fimp import RunConfig, train_fimp

SMALL = DataOptions(num_nodes=120, num_recordings=6, num_timepoints=40)


def test_gnn_baseline_training_improves_loss():
    res = train_fimp(
        RunConfig(
            task="celltype",
            model="sage",
            data_options=SMALL,
            epochs=6,
            patience=6,
            batch_size=32,
            baseline_hidden=32,
        ),
        log_stream=None,
        progress=False,
    )
    hist = res["history"]
    assert res["model"] == "sage" and res["baseline"]["depth"] == 2
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert min(h["val_cross_entropy"] for h in hist) < hist[0]["val_cross_entropy"]
    assert np.isfinite(res["test"]["accuracy"]) and res["test"]["count"] == 25


@pytest.mark.parametrize("fill", ["interp", pytest.param("noise", marks=pytest.mark.slow)])
def test_fmri_baseline_with_filling_trains(fill):
    res = train_fimp(
        RunConfig(
            task="fmri",
            model="gcn",
            fill=fill,
            data_options=SMALL,
            epochs=3,
            patience=3,
            batch_size=2,
            baseline_hidden=16,
            baseline_depth=1,
        ),
        log_stream=None,
        progress=False,
    )
    hist = res["history"]
    assert res["baseline"]["fill"] == fill
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert np.isfinite(res["test"]["mse"])


def test_gps_on_fmri_batches_of_recordings_attends_within_each_recording():
    """A batch of 2 recordings gives exactly the predictions of each recording alone."""
    import jax

    from jaxfm.baselines.node_gnn import NodeGNN
    from jaxfm.fimp.data import prepare_fimp_data
    from jaxfm.graph import edge_mask, node_mask
    from jaxfm.train.fimp import _Batches, _to_device

    fd = prepare_fimp_data("fmri", "synthetic", SMALL)

    def batches(size):
        b = _Batches(fd, "train", batch_size=size, hops=None, max_nb=None, shuffle=False, seed=0)
        return [_to_device(x) for x in b.epoch(0)]

    model = NodeGNN(kind="gps", task="fmri", tokenizer=fd.tokenizer, hidden=16, depth=2)

    def predict(params, b):
        nm = node_mask(b)
        out = model.apply(params, b.nodes, b.senders, b.receivers, node_mask=nm,
                          edge_mask=edge_mask(b))  # fmt: skip
        return np.asarray(out["predictions"])[np.asarray(nm)]

    pair, singles = batches(2)[0], batches(1)[:2]
    assert np.asarray(pair.nodes["graph_index"])[: 2 * 424].tolist() == [0] * 424 + [1] * 424
    params = model.init(jax.random.key(0), pair.nodes, pair.senders, pair.receivers)
    alone = np.concatenate([predict(params, b) for b in singles])
    np.testing.assert_allclose(predict(params, pair), alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "celltype", "model": "gxn"}, "model must be one of"),
        ({"task": "celltype", "model": "gcn", "fill": "mean"}, "fmri task only"),
        ({"task": "fmri", "model": "fimp", "fill": "mean"}, "fmri task only"),
        ({"task": "fmri", "model": "mlp", "fill": "median"}, "fill must be one of"),
        ({"task": "celltype", "model": "gat", "save_dir": "x"}, "FIMP models only"),
        ({"task": "celltype", "model": "gin", "baseline_depth": 0}, "must be positive"),
    ],
)
def test_run_config_rejects_bad_baseline_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_cli_trains_a_gnn_baseline(capsys):
    code = main(
        [
            "fimp",
            "train",
            "--task",
            "celltype",
            "--model",
            "gin",
            "--hidden",
            "16",
            "--depth",
            "1",
            "--num-nodes",
            "80",
            "--epochs",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary["model"] == "gin" and summary["num_params"] > 0
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
