"""End to end: `jaxfm convert vit` -> `jaxfm fimp train --init vit` and `jaxfm fimp embed`."""

import json

import jax
import numpy as np
import pytest

from converters.cli import main as convert_main
from jaxfm.cli import main
from jaxfm.data import synthetic_images
from jaxfm.foundation import load_pretrained
from jaxfm.model_dir import load_model_dir


@pytest.fixture(scope="module")
def vit_dir(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "vit_out"
    assert convert_main(["vit", str(fixtures_dir / "vit_hf_small"), str(out)]) == 0
    return out


def test_train_init_vit_frozen_writes_json_and_keeps_weights(vit_dir, tmp_path):
    res, save = tmp_path / "res.json", tmp_path / "model"
    argv = ["fimp", "train", "--task", "image", "--init", "vit", "--checkpoint", str(vit_dir)]
    argv += ["--num-nodes", "40", "--knn", "3", "--epochs", "1", "--batch-size", "40"]
    argv += ["--freeze-pretrained", "--no-progress", "--output-json", str(res), "--save", str(save)]
    assert main(argv) == 0
    out = json.loads(res.read_text())
    assert out["init"] == "vit" and len(out["history"]) == 1
    pre = out["pretrained"]
    # tokenizer (4) + 2 hops' creators? one hop (tiny): message + self_message, 2 layers x 16.
    assert (pre["family"], pre["message_layers"], pre["frozen"]) == ("vit", 2, True)
    assert pre["loaded_tensors"] == 4 + 2 * 2 * 16
    assert out["config"]["dim"] == 64 and out["config"]["pretrained"]["family"] == "vit"
    assert 0.0 <= out["test"]["accuracy"] <= 1.0
    # Frozen: the saved model still holds the checkpoint's weights; the head was trained.
    params, config = load_model_dir(save)
    vit, _ = load_model_dir(vit_dir)
    for creator in ("message", "self_message"):
        np.testing.assert_array_equal(
            params["fimp"]["layers_0"][creator]["layers_1"]["mlp"]["fc1"]["kernel"],
            vit["encoder"]["layer_1"]["mlp"]["fc1"]["kernel"],
        )
    np.testing.assert_array_equal(
        params["fimp"]["tokenizer"]["vit"]["embeddings"]["cls_token"],
        vit["embeddings"]["cls_token"],
    )
    assert config["fimp"]["pretrained"]["foundation"]["image_size"] == [32, 32]


def test_embed_zero_shot_self_loops_equals_vit(vit_dir, tmp_path):
    """With --graph none (self-loops only), a node's zero-shot embedding is the mean over tokens
    of the ViT's own last_hidden_state for its image."""
    out = tmp_path / "emb.npy"
    argv = ["fimp", "embed", "--model", "fimp-vit", "--checkpoint", str(vit_dir)]
    argv += ["--num-nodes", "12", "--graph", "none", "--out", str(out)]
    assert main(argv) == 0
    emb = np.load(out)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert emb.shape == (12, 64) and summary["num_edges"] == 12
    images = synthetic_images(num_nodes=12, image_size=32, seed=0, k=6).images
    model, variables = load_pretrained(vit_dir)
    with jax.default_matmul_precision("highest"):
        ref = model.apply(variables, images)["last_hidden_state"].mean(axis=1)
    np.testing.assert_allclose(emb, ref, atol=2e-4)
    # With a kNN graph the neighbours change the embeddings.
    argv2 = [*argv[:-4], "--knn", "3", "--out", str(tmp_path / "knn.npy")]
    assert main(argv2) == 0
    assert np.abs(np.load(tmp_path / "knn.npy") - emb).max() > 1e-3


def test_checkpoint_mismatches_exit_2(vit_dir, tmp_path, capsys):
    base = ["fimp", "train", "--task", "image", "--checkpoint", str(vit_dir), "--epochs", "1"]
    assert main([*base, "--init", "vit", "--image-size", "16", "--num-nodes", "20"]) == 2
    assert "32x32 images with 3 channels" in capsys.readouterr().err
    assert main([*base, "--init", "scgpt"]) == 2
    assert "--init scgpt but --checkpoint" in capsys.readouterr().err
    assert main(["fimp", "train", "--task", "image", "--init", "vit"]) == 2
    assert "--init vit needs --checkpoint" in capsys.readouterr().err
    missing = ["fimp", "embed", "--model", "fimp-vit", "--checkpoint", str(tmp_path / "nope")]
    assert main([*missing, "--out", str(tmp_path / "x.npy")]) == 2
    assert "no such directory" in capsys.readouterr().err
