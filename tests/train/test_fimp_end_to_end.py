"""End-to-end FIMP runs through the CLI (slow: excluded from the default run, run by CI)."""

import json

import pytest

from jaxfm.cli import main

pytestmark = pytest.mark.slow


def test_fimp_demo_command_learns(tmp_path, capsys):
    """`jaxfm fimp train --task celltype --data synthetic`: well above the majority-class rate."""
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "fimp",
                "train",
                "--task",
                "celltype",
                "--data",
                "synthetic",
                "--no-progress",
                "--output-json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary["test"] == res["test"]
    assert res["test"]["accuracy"] > 0.5, res["test"]  # majority class is ~0.34


@pytest.mark.parametrize(
    "task, extra",
    [
        ("expression", []),
        ("image", ["--num-nodes", "300", "--radius-miles", "600"]),
        ("fmri", ["--num-recordings", "12", "--batch-size", "4"]),
    ],
)
def test_other_tasks_train_without_nans(tmp_path, task, extra):
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "fimp",
                "train",
                "--task",
                task,
                "--epochs",
                "2",
                "--no-progress",
                "--output-json",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    losses = [h["train_loss"] for h in res["history"]]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0] * 1.5
    metric = "accuracy" if task == "image" else "mse"
    assert res["test"]["count"] > 0 and metric in res["test"]


def test_attention_map_cli(tmp_path, capsys):
    model = tmp_path / "m"
    assert (
        main(
            [
                "fimp",
                "train",
                "--task",
                "expression",
                "--epochs",
                "1",
                "--no-progress",
                "--num-nodes",
                "200",
                "--save",
                str(model),
            ]
        )
        == 0
    )
    assert (
        main(["fimp", "attention-map", "--model", str(model), "--out", str(tmp_path / "map")]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["attention_map"]
    assert summary["shape"] == [5, 5, 40, 40] and summary["edges_used_token_pairs"] > 0
    assert (tmp_path / "map" / "attention_map.png").stat().st_size > 10_000
