"""experiments/fimp/osmfish_study.py: each variant changes exactly the setting it names."""

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _study():
    sys.path.insert(0, str(REPO / "experiments" / "fimp"))
    try:
        spec = importlib.util.spec_from_file_location(
            "osmfish_study", REPO / "experiments" / "fimp" / "osmfish_study.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "experiments" / "fimp"))


ARGS = argparse.Namespace(
    data="cells.loom", variant="tiny", epochs=30, patience=6, batch_size=128, lr=3e-3, knn=6
)


def _diff(a, b) -> dict:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k: db[k] for k in da if da[k] != db[k]}


def test_each_variant_changes_only_its_setting():
    study = _study()
    base = study.make_run("fimp", 0, ARGS)
    assert base.model == "fimp" and base.overrides == {"separate_self": True}
    assert base.task == "expression" and base.epochs == 30 and base.data_options.mask_rate == 0.8
    expected = {
        "epochs_100": {"epochs": 100, "patience": 10},
        "dim_64": {"overrides": {"separate_self": True, "dim": 64}},
        "small": {"variant": "small"},
        "value_mlp": {"overrides": {"separate_self": True, "tokenizer": {"value_hidden": 64}}},
        "value_mlp_100": {
            "overrides": {"separate_self": True, "tokenizer": {"value_hidden": 64}},
            "epochs": 100,
            "patience": 10,
        },
        "sharedself": {"overrides": {"separate_self": False}},
        "sage_h32": {"model": "sage", "overrides": {}, "baseline_hidden": 32},
        "sage_d1": {"model": "sage", "overrides": {}, "baseline_depth": 1},
    }
    for name, changes in expected.items():
        assert _diff(base, study.make_run(name, 0, ARGS)) == changes, name
    nograph = study.make_run("nograph", 1, ARGS)
    assert nograph.data_options.graph == "none" and nograph.seed == 1
    assert base.data_options.graph == "knn"


def test_summary_reports_deltas_against_fimp():
    study = _study()
    row = lambda v, r2, seed=0: {
        "variant": v, "seed": seed, "test": {"r2": r2, "mse": 1 - r2}, "best_epoch": 4,
        "val_r2": [0.1] * 5, "num_params": 10, "seconds": 1.0,
    }  # fmt: skip
    lines = study.summarize([row("fimp", 0.30), row("value_mlp", 0.40), row("value_mlp", 0.44, 1)])
    fimp = next(x for x in lines if x.startswith("| fimp |"))
    vm = next(x for x in lines if x.startswith("| value_mlp |"))
    assert "0.300 ± 0.000" in fimp and "| 5 | 5 |" in fimp
    assert "0.420 ± 0.020" in vm and "+0.120" in vm and "| 2 |" in vm
