"""experiments/graphfm/evaluate.py writes to its workdir unless --update-results is given."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _evaluate():
    spec = importlib.util.spec_from_file_location(
        "graphfm_evaluate", REPO / "experiments" / "graphfm" / "evaluate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_go_to_the_workdir_by_default(tmp_path):
    ev = _evaluate()
    out = ev.results_dir(tmp_path / "w", "graphfm_eval", update=False, quick=True)
    assert out == tmp_path / "w" / "results" / "graphfm_eval"
    committed = ev.results_dir(tmp_path / "w", "graphfm_eval", update=True, quick=False)
    assert committed == REPO / "experiments" / "results" / "graphfm_eval"


def test_quick_never_updates_committed_results(tmp_path, capsys):
    ev = _evaluate()
    with pytest.raises(ValueError, match="--update-results with --quick"):
        ev.results_dir(tmp_path, "graphfm_eval", update=True, quick=True)
    with pytest.raises(SystemExit) as e:
        ev.main(["--quick", "--update-results", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and "--update-results" in capsys.readouterr().err
