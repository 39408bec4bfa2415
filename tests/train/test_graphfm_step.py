import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfm.train.graphfm_step import make_train_step
from jaxfm.train.loop import TrainState


def _loss(params, batch, rng, train):
    del rng, train
    pred = batch["x"] @ params["w"]
    err = (pred - batch["y"]) ** 2
    return err.mean(), {"count": jnp.float32(batch["x"].shape[0]), "sse": err.sum()}


def test_accumulated_step_equals_one_step_on_the_mean_gradient():
    rng = np.random.default_rng(0)
    batches = {
        "x": jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
    }
    params = {"w": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    opt = optax.sgd(0.1)
    step = make_train_step(_loss, opt)
    state0 = TrainState.create(jax.tree.map(jnp.copy, params), opt)  # donated
    state, metrics = step(state0, batches, jax.random.key(0))

    def mean_loss(p):
        return jnp.mean(
            jnp.stack(
                [
                    _loss(p, jax.tree.map(lambda a, i=i: a[i], batches), None, True)[0]
                    for i in range(3)
                ]
            )
        )

    g = jax.grad(mean_loss)(params)
    np.testing.assert_allclose(state.params["w"], params["w"] - 0.1 * g["w"], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], mean_loss(params), rtol=1e-6)
    assert float(metrics["count"]) == 15.0
    assert int(state.step) == 1
