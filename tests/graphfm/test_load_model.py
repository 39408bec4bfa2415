"""jaxfm.load_model: one loader for every model directory family."""

import numpy as np
import pytest
from conftest import trunk_only

import jaxfm
from jaxfm.graphfm import GraphFM
from jaxfm.model_dir import save_model_dir


def test_a_graphfm_model_directory_loads_into_the_same_model(tiny, tmp_path):
    params = trunk_only(tiny.params)
    save_model_dir(tmp_path / "m", params, {"family": "graphfm", "graphfm": tiny.cfg.to_dict()})
    model, config, loaded = jaxfm.load_model(tmp_path / "m")
    assert isinstance(model, GraphFM) and config["family"] == "graphfm"
    batch = tiny.pack([0, 1])
    want = GraphFM(tiny.cfg).apply({"params": params}, batch)["logits"]
    got = model.apply({"params": loaded}, batch)["logits"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_an_older_graphfm_directory_without_family_still_loads(tiny, tmp_path):
    save_model_dir(tmp_path / "m", trunk_only(tiny.params), {"graphfm": tiny.cfg.to_dict()})
    model, _, _ = jaxfm.load_model(tmp_path / "m", as_jax=False)
    assert isinstance(model, GraphFM)


def test_unknown_family_missing_dir_and_unreachable_hub_id_are_named(tmp_path, monkeypatch):
    save_model_dir(tmp_path / "m", {"w": np.zeros(2, np.float32)}, {"family": "bert"})
    with pytest.raises(ValueError, match="family 'bert' is not a jaxfm model family"):
        jaxfm.load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        jaxfm.load_model(tmp_path / "absent" / "deeper")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"hub could not provide it.*HF_HUB_OFFLINE"):
        jaxfm.load_model("nobody-here/no-such-model")
