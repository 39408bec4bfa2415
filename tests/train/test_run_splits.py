"""run_splits: finished splits are read back on resume only when the run's settings match."""

from __future__ import annotations

import json

import pytest

from jaxfm.train.trainer import run_splits


def _trainer(calls):
    def train_split(i, workdir):
        calls.append(i)
        return {"split": i, "test_accuracy": 0.5 + i}

    return train_split


def test_finished_splits_are_read_back_with_matching_settings(tmp_path):
    calls = []
    first = run_splits(tmp_path, [0, 1], _trainer(calls), identity={"lr": 0.01})
    assert calls == [0, 1]
    stored = json.loads((tmp_path / "split_0" / "result.json").read_text())
    assert stored["run"] == {"lr": 0.01}
    again = run_splits(tmp_path, [0, 1, 2], _trainer(calls), resume=True, identity={"lr": 0.01})
    assert calls == [0, 1, 2]  # only the new split trained
    assert again[:2] == first and "run" not in again[0]


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    run_splits(tmp_path, [0], _trainer([]), identity={"lr": 0.01, "hidden": 64})
    with pytest.raises(ValueError) as e:
        run_splits(tmp_path, [0], _trainer([]), resume=True, identity={"lr": 0.5, "hidden": 64})
    msg = str(e.value)
    assert "split 0 finished with other settings" in msg and "lr: 0.01" in msg and "0.5" in msg
    assert "repeat the original flags" in msg and "hidden" not in msg


def test_without_resume_splits_are_trained_again(tmp_path):
    calls = []
    run_splits(tmp_path, [0], _trainer(calls), identity={"lr": 0.01})
    run_splits(tmp_path, [0], _trainer(calls), identity={"lr": 0.5})
    assert calls == [0, 0]
    assert json.loads((tmp_path / "split_0" / "result.json").read_text())["run"] == {"lr": 0.5}
