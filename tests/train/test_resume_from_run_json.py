"""`--resume --workdir DIR` alone repeats the run in DIR/run.json (pretrain, fimp train)."""

import json
import shutil

from jaxfm.cli import main
from jaxfm.train.graphfm_pretrain import pretrain
from tests.train.test_graphfm_pretrain import _cfg


def _lines(capsys):
    return [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]


def test_pretrain_resume_with_only_workdir(tmp_path, capsys):
    pretrain(_cfg(tmp_path / "w", steps=4), log_stream=None, progress=False)
    recorded = json.loads((tmp_path / "w" / "run.json").read_text())
    assert recorded["pretrain"]["steps"] == 4 and recorded["outputs"]["checkpoint_every"] == 2
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "4")  # a kill after step 2
    shutil.rmtree(tmp_path / "w" / "model")
    # a typed flag that differs from the recorded run is named, nothing runs
    argv = ["pretrain", "--resume", "--workdir", str(tmp_path / "w"), "--no-progress"]
    assert main([*argv, "--seed", "1", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "--seed 1 (the run has seed=0)" in err and "--steps" not in err.split("differ")[0]
    # the run's config (tiny model overrides, 4 SBM graphs, 4 steps) comes from run.json
    assert main(argv) == 0
    lines = _lines(capsys)
    assert [r["step"] for r in lines if "loss" in r] == [3, 4]
    assert lines[-1]["summary"]["datasets"] == 4 and (tmp_path / "w" / "model").is_dir()


def test_fimp_train_resume_with_only_workdir(tmp_path, capsys):
    w = str(tmp_path / "w")
    base = ["fimp", "train", "--task", "celltype", "--num-nodes", "60", "--epochs", "2",
            "--batch-size", "32", "--dim", "16", "--workdir", w, "--no-progress"]  # fmt: skip
    assert main(base) == 0
    first = _lines(capsys)[-1]["summary"]
    assert main(["fimp", "train", "--resume", "--workdir", w, "--epochs", "3"]) == 2
    assert "--epochs 3 (the run has epochs=2)" in capsys.readouterr().err
    assert main(["fimp", "train", "--resume", "--workdir", w, "--no-progress", "--dim", "16"]) == 0
    again = _lines(capsys)[-1]["summary"]
    assert again["task"] == "celltype" and again["num_nodes"] == first["num_nodes"]
    assert again["test"] == first["test"]  # the finished run, read back, not a new one


def test_fimp_train_value_hidden_flag_is_recorded_and_checked_on_resume(tmp_path, capsys):
    from jaxfm.model_dir import load_model_dir

    w, saved = str(tmp_path / "w"), str(tmp_path / "model")
    argv = ["fimp", "train", "--task", "expression", "--num-nodes", "40", "--epochs", "1",
            "--batch-size", "32", "--dim", "16", "--workdir", w, "--no-progress",
            "--value-hidden", "8", "--save", saved]  # fmt: skip
    assert main(argv) == 0
    recorded = json.loads((tmp_path / "w" / "run.json").read_text())["fimp_train"]
    assert recorded["overrides"]["tokenizer"] == {"value_hidden": 8}
    params, config = load_model_dir(saved)
    encoder = params["fimp"]["tokenizer"]["value_encoder"]  # an MLP 1 -> 8 -> D/2, not a Dense
    assert encoder["fc1"]["kernel"].shape == (1, 8) and encoder["fc2"]["kernel"].shape == (8, 8)
    assert config["fimp"]["tokenizer"]["value_hidden"] == 8
    resume = ["fimp", "train", "--resume", "--workdir", w, "--no-progress"]
    assert main([*resume, "--value-hidden", "4"]) == 2
    assert "--value-hidden 4 (the run has overrides.tokenizer.value_hidden=8)" in (
        capsys.readouterr().err
    )
