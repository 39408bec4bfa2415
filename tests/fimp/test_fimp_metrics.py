"""jaxfm.ops.metrics: exact small cases, masking, empty masks, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.ops import metrics


def _logits_for(preds, num_classes):
    return jax.nn.one_hot(jnp.asarray(preds), num_classes) * 5.0


def test_macro_f1_hand_computed():
    labels = jnp.array([0, 0, 1, 1, 2, 0])
    preds = [0, 1, 1, 1, 0, 3]
    mask = jnp.array([1, 1, 1, 1, 1, 0], bool)  # the masked row would add class 3
    # class 0: TP 1, FP 1, FN 1 -> 0.5; class 1: TP 2, FP 1 -> 0.8; class 2: FN 1 -> 0;
    # class 3 appears nowhere valid -> excluded.
    f1 = jax.jit(functools.partial(metrics.macro_f1, num_classes=4))(
        _logits_for(preds, 4), labels, mask
    )
    np.testing.assert_allclose(f1, (0.5 + 0.8 + 0.0) / 3, atol=1e-6)
    acc = metrics.accuracy(_logits_for(preds, 4), labels, mask)
    np.testing.assert_allclose(acc, 3 / 5, atol=1e-6)
    perfect = metrics.macro_f1(_logits_for([0, 0, 1, 1, 2, 0], 4), labels, mask)
    np.testing.assert_allclose(perfect, 1.0, atol=1e-6)


def test_r2_and_mse():
    t = jnp.array([1.0, 2.0, 3.0, 4.0, 7.0])
    p = jnp.array([1.0, 2.0, 3.0, 5.0, -100.0])
    mask = jnp.array([1, 1, 1, 1, 0], bool)
    # mean 2.5, SS_tot = 5, SS_res = 1.
    np.testing.assert_allclose(metrics.r2_score(p, t, mask), 0.8, atol=1e-6)
    np.testing.assert_allclose(metrics.masked_mse(p, t, mask), 0.25, atol=1e-6)
    # Mask over leading dims broadcasts over trailing ones ([N, P] mask for [N, P, patch]).
    pred = jnp.zeros((2, 3, 4))
    target = jnp.ones((2, 3, 4)).at[1].set(10.0)
    np.testing.assert_allclose(
        metrics.masked_mse(pred, target, jnp.array([[1, 1, 0], [0, 0, 0]], bool)), 1.0
    )
    # Constant targets: 1 for a perfect fit, else 0 (never NaN).
    assert float(metrics.r2_score(t[:1], t[:1], mask[:1])) == 1.0
    assert float(metrics.r2_score(p[3:4], t[3:4], mask[3:4])) == 0.0


def test_cross_entropy():
    logits = jnp.array([[0.0, 0.0], [0.0, np.log(3.0)], [9.0, -9.0]])
    labels = jnp.array([0, 1, 99])  # the masked row's label is out of range
    mask = jnp.array([1, 1, 0], bool)
    expected = (np.log(2.0) + np.log(4.0 / 3.0)) / 2
    np.testing.assert_allclose(
        metrics.softmax_cross_entropy(logits, labels, mask), expected, atol=1e-6
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda m: metrics.masked_mse(jnp.ones(3), jnp.zeros(3), m),
        lambda m: metrics.r2_score(jnp.arange(3.0), jnp.zeros(3), m),
        lambda m: metrics.softmax_cross_entropy(jnp.ones((3, 2)), jnp.zeros(3, int), m),
        lambda m: metrics.accuracy(jnp.ones((3, 2)), jnp.zeros(3, int), m),
        lambda m: metrics.macro_f1(jnp.ones((3, 2)), jnp.zeros(3, int), m),
        lambda m: metrics.masked_mean(jnp.ones(3), m),
    ],
)
def test_empty_mask_gives_zero(fn):
    value = fn(jnp.zeros(3, bool))
    assert float(value) == 0.0


def test_empty_mask_gradient_is_finite():
    g = jax.grad(lambda p: metrics.masked_mse(p, jnp.zeros(3), jnp.zeros(3, bool)))(jnp.ones(3))
    np.testing.assert_array_equal(g, 0.0)
