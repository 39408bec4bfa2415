"""`jaxfm finetune --resume --workdir DIR` alone repeats the run recorded in DIR/run.json.

The training itself is stubbed out: these tests are about which config the command runs.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from jaxfm.cli import main


@pytest.fixture
def runs(monkeypatch):
    """Replaces ``finetune`` by a stub that records ``(config, resume, run.json then)``."""
    import jaxfm.train.graphfm_finetune as ft

    calls = []

    def fake_finetune(cfg, *, resume=False, overwrite=False, progress=True, **kwargs):
        run_json = Path(cfg.workdir) / "run.json"
        calls.append((cfg, resume, json.loads(run_json.read_text()) if run_json.exists() else None))
        return {
            "dataset": "d",
            "mode": cfg.mode,
            "test_accuracy_mean": 0.5,
            "test_accuracy_std": 0.0,
            "per_split": [],
            "preempted": False,
        }

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    return calls


def _first_run(tmp_path, runs):
    w = tmp_path / "w"
    argv = (
        "finetune --mode nft --model-dir runs/gfm/model --data cora.npz --epochs 3 "
        "--unfreeze-start 1 --splits 0,2 --lr 0.01 --no-progress"
    ).split()
    argv += ["--workdir", str(w), "--output-json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    return w, runs[-1][0]


def test_finetune_resume_with_only_workdir(tmp_path, runs, capsys):
    w, first = _first_run(tmp_path, runs)
    recorded = json.loads((w / "run.json").read_text())
    assert recorded["finetune"]["dataset"] == "cora.npz" and recorded["finetune"]["epochs"] == 3
    assert recorded["outputs"]["output_json"] == str(tmp_path / "r.json")
    (tmp_path / "r.json").unlink()
    capsys.readouterr()

    assert main(["finetune", "--resume", "--workdir", str(w), "--no-progress"]) == 0
    again, resume, _ = runs[-1]
    assert resume and again == first  # mode, model dir, data, epochs, splits, lr: all recorded
    assert (tmp_path / "r.json").exists()  # the recorded --output-json is written again

    # typed flags equal to the recorded run are fine
    same = ["--data", "cora.npz", "--epochs", "3", "--mode", "nft", "--lr", "0.01"]
    assert main(["finetune", "--resume", "--workdir", str(w), *same]) == 0
    assert runs[-1][0] == first
    # a resume may add splits (the finished ones are read back); the rest stays recorded
    assert main(["finetune", "--resume", "--workdir", str(w), "--splits", "0,1,2"]) == 0
    assert runs[-1][0] == dataclasses.replace(first, splits=[0, 1, 2])
    assert json.loads((w / "run.json").read_text())["finetune"]["splits"] == [0, 1, 2]


def test_finetune_resume_refuses_flags_that_differ(tmp_path, runs, capsys):
    w, _ = _first_run(tmp_path, runs)
    capsys.readouterr()
    n = len(runs)
    argv = ["finetune", "--resume", "--workdir", str(w), "--epochs", "5", "--dataset", "x.npz"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--epochs 5 (the run has epochs=3)" in err and "--data 'x.npz'" in err
    assert str(w / "run.json") in err and len(runs) == n  # nothing ran


def test_finetune_resume_without_run_json(tmp_path, runs, capsys):
    # nothing recorded: the model dir and data must be given, and the message says why
    assert main(["finetune", "--resume", "--workdir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--model-dir and --data are required" in err and "run.json does not exist" in err
    # a workdir from before run.json: the flags describe the run, as they used to
    argv = ["finetune", "--resume", "--workdir", str(tmp_path / "old"), "--model-dir", "m",
            "--data", "d", "--epochs", "4"]  # fmt: skip
    assert main(argv) == 0 and runs[-1][0].epochs == 4 and runs[-1][1]
    # a pretrain workdir is named as such
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "run.json").write_text(json.dumps({"pretrain": {}, "outputs": {}}))
    assert main(["finetune", "--resume", "--workdir", str(tmp_path / "p")]) == 2
    assert "records a pretrain run, not finetune" in capsys.readouterr().err


def test_a_fresh_run_does_not_replace_another_runs_record_before_training(tmp_path, runs):
    w, _ = _first_run(tmp_path, runs)
    assert runs[-1][2]["finetune"]["dataset"] == "cora.npz"  # recorded before training
    # without --overwrite the earlier record stays while the trainer decides (it refuses a
    # workdir holding another run's checkpoints); once this run has trained, it is this run's
    argv = ["finetune", "--model-dir", "m", "--data", "d", "--workdir", str(w), "--no-progress"]
    assert main(argv) == 0 and runs[-1][2]["finetune"]["dataset"] == "cora.npz"
    assert json.loads((w / "run.json").read_text())["finetune"]["dataset"] == "d"
    assert main([*argv, "--overwrite"]) == 0 and runs[-1][2]["finetune"]["dataset"] == "d"
