"""Task registry, losses on hand-made outputs, task models for every modality, tiny overfit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfm.fimp import (
    TASKS,
    FIMPTaskModel,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
    MessageCreatorConfig,
    fimp_config,
    loss_and_metrics,
)
from jaxfm.testing import random_params


def test_registry():
    assert set(TASKS) == {"expression", "celltype", "fmri", "image"}
    assert TASKS["image"].tokenizer is ImageTokenizerConfig
    with pytest.raises(ValueError, match="unknown FIMP task"):
        loss_and_metrics("segmentation", {}, {}, None)


def test_expression_loss_counts_masked_values_of_target_nodes_only():
    rng = np.random.default_rng(0)
    n, length = 4, 5
    pred = rng.normal(size=(n, length)).astype(np.float32)
    target = rng.normal(size=(n, length)).astype(np.float32)
    value_mask = rng.random((n, length)) < 0.8
    token_mask = np.ones((n, length), bool)
    token_mask[0, 3:] = False
    nodes = {
        "target_values": target,
        "value_mask": value_mask,
        "token_mask": token_mask,
        "target_mask": np.array([1, 1, 0, 1], bool),
    }
    node_mask = np.array([1, 1, 1, 0], bool)
    loss, m = loss_and_metrics("expression", {"predictions": pred}, nodes, node_mask)
    valid = value_mask & token_mask & np.array([1, 1, 0, 0], bool)[:, None]
    np.testing.assert_allclose(loss, np.mean((pred - target)[valid] ** 2), rtol=1e-5)
    assert float(m["count"]) == valid.sum() and set(m) == {"loss", "mse", "r2", "count"}


def test_classification_and_fmri_losses():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]], np.float32)
    nodes = {"label": np.array([0, 0, 1]), "target_mask": np.array([1, 1, 0], bool)}
    loss, m = loss_and_metrics("celltype", {"predictions": logits}, nodes, None)
    assert float(m["accuracy"]) == 0.5 and float(m["count"]) == 2
    np.testing.assert_allclose(
        loss, -np.mean(jax.nn.log_softmax(logits[:2])[[0, 1], [0, 0]]), rtol=1e-6
    )

    signal = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)  # 3 patches of 2
    pred = signal.reshape(2, 3, 2).copy()
    pred[0, 1] += 1.0  # error on a masked patch
    pred[0, 2] += 50.0  # error on an unmasked patch: ignored
    nodes = {
        "signal": signal,
        "patch_mask": np.array([[0, 1, 0], [1, 0, 0]], bool),
        "target_mask": np.ones(2, bool),
    }
    loss, m = loss_and_metrics("fmri", {"predictions": pred}, nodes, None)
    np.testing.assert_allclose(loss, 2 * 1.0 / 4, rtol=1e-6)
    assert float(m["count"]) == 4


def _small_graph(n=4):
    senders = np.concatenate([np.arange(n), np.arange(n)])
    receivers = np.concatenate([np.arange(n), np.roll(np.arange(n), 1)])
    return senders, receivers


@pytest.mark.parametrize("task", ["image", "fmri", "expression"])
def test_task_models_run_and_have_finite_grads(task):
    rng = np.random.default_rng(0)
    n = 4
    common = {"target_mask": np.ones(n, bool), "label": np.array([0, 1, 2, 1])}
    if task == "image":
        tok = ImageTokenizerConfig(image_size=8, patch_size=4, channels=3)
        nodes = {"image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32), **common}
        shape = (n, 3)
    elif task == "fmri":
        tok = FMRITokenizerConfig(patch_size=5, num_patches=4)
        nodes = {
            "signal": rng.normal(size=(n, 20)).astype(np.float32),
            "xyz": rng.normal(size=(n, 3)).astype(np.float32),
            "patch_mask": rng.random((n, 4)) < 0.5,
            **common,
        }
        shape = (n, 4, 5)
    else:
        tok = GeneTokenizerConfig(num_genes=9)
        nodes = {
            "gene_ids": rng.integers(0, 9, (n, 6)),
            "values": rng.normal(size=(n, 6)).astype(np.float32),
            "target_values": rng.normal(size=(n, 6)).astype(np.float32),
            "token_mask": np.ones((n, 6), bool),
            "value_mask": rng.random((n, 6)) < 0.8,
            **common,
        }
        shape = (n, 6)
    cfg = fimp_config("tiny", tokenizer=tok, dim=16)
    model = FIMPTaskModel(cfg, task, num_classes=3)
    senders, receivers = _small_graph(n)
    node_mask = np.array([1, 1, 1, 0], bool)

    @jax.jit
    def run(params):

        def loss_fn(p):
            out = model.apply({"params": p}, nodes, senders, receivers, node_mask=node_mask)
            return loss_and_metrics(task, out, nodes, node_mask)[0], out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return params, loss, out, grads

    params, loss, out, grads = run(random_params(model, nodes, senders, receivers))
    assert set(params) == {"fimp", "head"}
    assert out["predictions"].shape == shape and out["predictions"].dtype == jnp.float32
    assert set(out) == {"predictions", "node_embedding", "token_mask"}
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_task_model_validation():
    cfg = fimp_config("tiny", tokenizer=GeneTokenizerConfig(num_genes=5))
    nodes = {
        "gene_ids": np.zeros((1, 2), int),
        "values": np.zeros((1, 2)),
        "token_mask": np.ones((1, 2), bool),
    }
    s = r = np.zeros(1, int)
    with pytest.raises(ValueError, match="needs a ImageTokenizerConfig"):
        FIMPTaskModel(cfg, "image", num_classes=3).init(jax.random.key(0), nodes, s, r)
    with pytest.raises(ValueError, match="num_classes"):
        FIMPTaskModel(cfg, "celltype").init(jax.random.key(0), nodes, s, r)


def test_overfit_celltype_tiny_graph():
    rng = np.random.default_rng(0)
    n, length = 6, 5
    nodes = {
        "gene_ids": rng.integers(0, 20, (n, length)),
        "values": rng.normal(size=(n, length)).astype(np.float32),
        "token_mask": np.ones((n, length), bool),
        "label": np.array([0, 1, 2, 0, 1, 2]),
        "target_mask": np.ones(n, bool),
    }
    senders = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    receivers = np.array([0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 0])
    cfg = fimp_config(
        "tiny",
        tokenizer=GeneTokenizerConfig(num_genes=20),
        dim=16,
        message=MessageCreatorConfig(num_heads=2),
    )
    cfg = dataclasses.replace(cfg, combine_mlp_ratio=2.0)
    model = FIMPTaskModel(cfg, "celltype", num_classes=3)
    opt = optax.adam(1e-2)

    @jax.jit
    def train(params):

        def loss_fn(p):
            out = model.apply({"params": p}, nodes, senders, receivers)
            return loss_and_metrics("celltype", out, nodes, None)

        def step(carry, _):
            p, s = carry
            (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), metrics["loss"]

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=200)
        return losses, loss_fn(params)[1]

    losses, final = train(random_params(model, nodes, senders, receivers, scale=0.1))
    assert float(final["accuracy"]) == 1.0
    assert float(final["macro_f1"]) == 1.0
    assert float(losses[-1]) < 0.05 < float(losses[0])
