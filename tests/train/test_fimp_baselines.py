"""The FIMP trainer with the baselines: GNNs train on the synthetic data, fMRI fillings, config
validation and the CLI flag."""

import json

import numpy as np
import pytest

from jaxfm.cli import main
from jaxfm.train.fimp import RunConfig, train_fimp
from jaxfm.train.fimp_data import DataOptions

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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "celltype", "model": "gxn"}, "model must be one of"),
        ({"task": "celltype", "model": "gcn", "fill": "mean"}, "fmri task only"),
        ({"task": "fmri", "model": "fimp", "fill": "mean"}, "fmri task only"),
        ({"task": "fmri", "model": "mlp", "fill": "median"}, "fill must be one of"),
        ({"task": "fmri", "model": "gps", "batch_size": 2}, "batch_size=1"),
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
