"""Every model directory carries a README.md model card built from its config."""

import numpy as np

from jaxfm.model_dir import CARD_FILE, load_extra_file, load_model_dir, model_card, save_model_dir


def _params():
    return {"dense": {"kernel": np.ones((3, 4), np.float32), "bias": np.zeros(4, np.float32)}}


def test_card_written_with_family_config_source_version_and_loading(tmp_path):
    from jaxfm import __version__

    config = {
        "family": "graphfm",
        "graphfm": {
            "num_latents": 32,
            "dim": 32,
            "encoder_depth": 4,
            "datasets": [{"name": "cora"}, {"name": "sbm_3"}],
        },
    }
    out = save_model_dir(tmp_path / "m", _params(), config)
    card = (out / CARD_FILE).read_text()
    assert card.startswith("# jaxfm model: graphfm")
    assert f"jaxfm {__version__}" in card
    assert "| num_latents | 32 |" in card and "| encoder_depth | 4 |" in card
    assert "| parameters | 16 |" in card
    assert "2 pretraining datasets: cora, sbm_3" in card
    assert "jaxfm.load_model(" in card
    params, cfg = load_model_dir(out)  # the card does not disturb loading
    assert cfg == config and params["dense"]["kernel"].shape == (3, 4)


def test_card_names_source_checkpoint_and_fimp_task():
    card = model_card({"family": "vit", "hidden_size": 8}, source="google/vit-base-patch16-224")
    assert "google/vit-base-patch16-224" in card and "| hidden_size | 8 |" in card
    card = model_card(
        {"family": "fimp", "task": "celltype", "num_classes": 5, "fimp": {"dim": 16},
         "data": "cells.h5ad"}
    )  # fmt: skip
    assert "| task | celltype |" in card and "| dim | 16 |" in card and "cells.h5ad" in card
    assert "not recorded" in model_card({"family": "scgpt"})


def test_caller_card_kept(tmp_path):
    out = save_model_dir(tmp_path / "m", _params(), {"family": "vit"}, extra_files={
        CARD_FILE: "# mine\n"})  # fmt: skip
    assert load_extra_file(out, CARD_FILE, text=True) == "# mine\n"
