"""The one train step (jaxfm.train.step): accumulation, micro-batch layout, bad batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfm.train.step import TrainState, make_train_step, stack_batches


def _loss(params, batch, rng, train):
    del rng, train
    pred = batch["x"] @ params["w"]
    err = (pred - batch["y"]) ** 2
    return err.mean(), {"count": jnp.float32(batch["x"].shape[0]), "sse": err.sum()}


def _micro(rng, n=6):
    return [
        {
            "x": rng.normal(size=(5, 4)).astype(np.float32),
            "y": rng.normal(size=(5,)).astype(np.float32),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_a_step_over_micro_batches_is_one_sgd_step_on_their_mean_gradient(accum):
    rng = np.random.default_rng(0)
    micro = _micro(rng)
    params = {"w": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    opt = optax.sgd(0.1)
    step = make_train_step(_loss, opt)
    state0 = TrainState.create(jax.tree.map(jnp.copy, params), opt)  # donated
    batch = stack_batches(micro, accum)
    assert batch["x"].shape == (accum, 6 // accum, 5, 4)
    state, metrics = step(state0, batch, jax.random.key(0))

    def mean_loss(p):
        return jnp.mean(jnp.stack([_loss(p, b, None, True)[0] for b in micro]))

    g = jax.grad(mean_loss)(params)
    np.testing.assert_allclose(state.params["w"], params["w"] - 0.1 * g["w"], rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], mean_loss(params), rtol=1e-5)
    assert float(metrics["count"]) == 30.0
    assert int(state.step) == 1


def test_stack_batches_puts_micro_batch_b_at_accumulation_step_b_mod_a():
    micro = [{"i": np.array(b)} for b in range(6)]
    out = stack_batches(micro, 2)["i"]  # [A=2, D=3]
    assert out.tolist() == [[0, 2, 4], [1, 3, 5]]


def test_stack_batches_keeps_zero_size_leaves():
    # pretraining with neighbors=0 packs [256, 0] neighbour indices per micro-batch
    micro = [{"nbr": np.zeros((256, 0), np.int32), "i": np.array(b)} for b in range(6)]
    out = stack_batches(micro, 3)
    assert out["nbr"].shape == (3, 2, 256, 0) and out["i"].tolist() == [[0, 3], [1, 4], [2, 5]]


def test_a_batch_without_the_micro_batch_axes_is_refused():
    opt = optax.sgd(0.1)
    step = make_train_step(_loss, opt)
    state = TrainState.create({"w": jnp.zeros(4)}, opt)
    with pytest.raises(ValueError, match=r"leading axes \[A, D"):
        step(state, {"x": np.zeros((5, 4), np.float32)[0], "y": np.zeros(5)[0]}, jax.random.key(0))
