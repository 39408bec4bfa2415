import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfm import params as pr
from jaxfm.train.optim import OptimizerConfig, make_optimizer, scale_rows


def _params():
    return {
        "encoder": {"layer_0": {"kernel": jnp.ones((2, 3))}, "latents": jnp.ones((4, 3))},
        "decoder": {"layer_0": {"kernel": jnp.ones((3, 3))}, "layer_1": {"kernel": jnp.ones(3)}},
        "heads": {"kernel": jnp.ones((5, 3, 2))},
    }


def test_first_matching_rule_wins_and_default():
    labels = pr.label_params(
        _params(), [("^decoder/layer_1/", "b"), ("^decoder/", "a")], default="z"
    )
    assert labels["decoder"]["layer_1"]["kernel"] == "b"
    assert labels["decoder"]["layer_0"]["kernel"] == "a"
    assert labels["encoder"]["latents"] == "z"


def test_strict_rules_name_the_unmatched_regex():
    with pytest.raises(ValueError, match="nodecoder"):
        pr.label_params(_params(), [("^nodecoder/", 1)], strict=True)
    with pytest.raises(ValueError, match="not a valid regex"):
        pr.label_params(_params(), [("(", 1)])


def test_trainable_rules_leave_frozen_params_exactly_unchanged_and_without_state():
    params = _params()
    opt = make_optimizer(
        OptimizerConfig(name="adam", learning_rate=0.1, clip_norm=None),
        params,
        trainable=["^heads/", "^decoder/layer_0/"],
    )
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["encoder"]["latents"], params["encoder"]["latents"])
    np.testing.assert_array_equal(
        new["decoder"]["layer_1"]["kernel"], params["decoder"]["layer_1"]["kernel"]
    )
    assert not np.allclose(new["heads"]["kernel"], params["heads"]["kernel"])
    assert not np.allclose(new["decoder"]["layer_0"]["kernel"], 1.0)
    moments = sum(np.size(x) for x in jax.tree.leaves(state))
    trained = params["heads"]["kernel"].size + params["decoder"]["layer_0"]["kernel"].size
    assert moments <= 2 * trained + 4  # frozen leaves hold no Adam moments


def test_weight_decay_skips_biases_norm_scales_and_vectors():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "norm": {"scale": jnp.ones(2)}}  # fmt: skip
    opt = make_optimizer(OptimizerConfig(name="adamw", weight_decay=0.5, clip_norm=None), params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)  # zero grads: only decay moves
    assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-1e-3 * 0.5)
    assert float(abs(updates["dense"]["bias"]).max()) == 0.0
    assert float(abs(updates["norm"]["scale"]).max()) == 0.0


def test_unfreeze_starts_a_group_at_its_step_with_a_fresh_state_and_the_decayed_rate():
    params = {"head": {"kernel": jnp.ones((2, 2))}, "dec": {"kernel": jnp.ones((2, 2))}}
    cfg = OptimizerConfig(name="adam", learning_rate=1e-2, schedule="step_decay",
                          decay_factor=2.0, clip_norm=None)  # fmt: skip
    opt = make_optimizer(cfg, params, trainable=["^head/"], unfreeze=[("^dec/", 2)],
                         boundaries=[2])  # fmt: skip
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    seen = []
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        seen.append((float(updates["head"]["kernel"][0, 0]), float(updates["dec"]["kernel"][0, 0])))
    # Adam's first step is -lr * sign: head at lr 1e-2 then 5e-3; dec frozen, then its own
    # fresh first step at the decayed rate.
    assert seen[0] == pytest.approx((-1e-2, 0.0), rel=1e-4)
    assert seen[1][1] == 0.0
    assert seen[2] == pytest.approx((-5e-3, -5e-3), rel=1e-4)


def test_an_optimizer_that_would_train_nothing_is_refused():
    with pytest.raises(ValueError, match="no parameter is trainable"):
        make_optimizer(OptimizerConfig(), _params(), trainable=["^nothing/"])


def test_scale_rows_scales_only_matched_rows():
    params = _params()
    scales = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    tx = scale_rows(scales, params, ["^heads/"])
    updates = jax.tree.map(jnp.ones_like, params)
    out, _ = tx.update(updates, tx.init(params))
    np.testing.assert_array_equal(out["heads"]["kernel"][:, 0, 0], np.array(scales))
    np.testing.assert_array_equal(out["encoder"]["latents"], 1.0)
    bad = scale_rows(jnp.ones(3), params, ["^heads/"])
    with pytest.raises(ValueError, match="dataset axis"):
        bad.update(updates, bad.init(params))


def test_describe_counts_groups():
    counts = pr.describe(_params(), {"trunk": ["^encoder/", "^decoder/"], "heads": ["^heads/"]})
    assert counts == {"trunk": 6 + 12 + 9 + 3, "heads": 30, "other": 0}
