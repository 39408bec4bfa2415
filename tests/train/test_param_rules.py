import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfm.train import param_rules as pr


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


def test_masked_optimizer_leaves_frozen_params_exactly_unchanged():
    params = _params()
    opt = pr.masked_optimizer(optax.adam(0.1), params, ["^heads/", "^decoder/layer_0/"])
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


def test_scale_rows_scales_only_matched_rows():
    params = _params()
    scales = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    tx = pr.scale_rows(scales, params, ["^heads/"])
    updates = jax.tree.map(jnp.ones_like, params)
    out, _ = tx.update(updates, tx.init(params))
    np.testing.assert_array_equal(out["heads"]["kernel"][:, 0, 0], np.array(scales))
    np.testing.assert_array_equal(out["encoder"]["latents"], 1.0)
    bad = pr.scale_rows(jnp.ones(3), params, ["^heads/"])
    with pytest.raises(ValueError, match="dataset axis"):
        bad.update(updates, bad.init(params))


def test_describe_counts_groups():
    counts = pr.describe(_params(), {"trunk": ["^encoder/", "^decoder/"], "heads": ["^heads/"]})
    assert counts == {"trunk": 6 + 12 + 9 + 3, "heads": 30, "other": 0}
