"""Multi-task loss and metrics on hand-computed numbers."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.graph.packed import PackedBatch
from jaxfm.graphfm import DatasetSpec, graphfm_config, loss_and_metrics
from jaxfm.graphfm.heads import NEG_INF

SPECS = (
    DatasetSpec(name="cls3", num_features=2, num_classes=3),
    DatasetSpec(name="reg", num_features=2, num_classes=0, task="regression"),
    DatasetSpec(name="cls2", num_features=2, num_classes=2),
)
LN2 = math.log(2.0)


def _batch(graph_label=(1, -1)):
    # Targets: 0 cls3 label 0; 1 reg value 0.5; 2 cls3 label 2; 3 cls3 unlabelled (-1);
    # 4 cls2 label 1 but not in the loss split; 5 padding.
    z = np.zeros
    return PackedBatch(
        features=z((4, 2), np.float32), pe=z((4, 1), np.float32),
        segment_ids=np.array([1, 1, 2, 2], np.int32), group_sizes=np.array([2, 0, 2], np.int32),
        graph_dataset=np.array([0, 2], np.int32), graph_mask=np.array([True, True]),
        graph_label=np.array(graph_label, np.int32),
        target_index=z(6, np.int32), target_mask=np.array([1, 1, 1, 1, 1, 0], bool),
        target_graph=z(6, np.int32), target_dataset=np.array([0, 1, 0, 0, 2, 0], np.int32),
        target_label=np.array([0, -1, 2, -1, 1, 0], np.int32),
        target_value=np.array([0, 0.5, 0, 0, 0, 0], np.float32),
        target_loss_mask=np.array([1, 1, 1, 1, 0, 0], bool),
        neighbor_index=z((6, 1), np.int32), neighbor_mask=z((6, 1), bool),
    )  # fmt: skip


def _outputs(graph=True):
    n = NEG_INF
    logits = np.array(
        [
            [LN2, 0.0, 0.0],  # label 0: p = 2/4 -> CE ln 2, correct
            [n, n, n],  # regression target: logits unused
            [0.0, 0.0, 0.0],  # label 2: CE ln 3, argmax 0 -> wrong
            [5.0, 0.0, 0.0],  # unlabelled: ignored
            [0.0, 9.0, n],  # not in the loss split: ignored
            [0.0, 0.0, 0.0],  # padding
        ],
        np.float32,
    )
    out = {"logits": jnp.asarray(logits), "prediction": jnp.array([0, 1.5, 0, 0, 0, 7.0])}
    if graph:
        out["graph_logits"] = jnp.array([[0.0, 0.0, n], [LN2, 0.0, n]])
    return out


@pytest.fixture
def cfg():
    return graphfm_config("small", dim=16, feature_dim=2, datasets=SPECS)


def test_loss_is_masked_ce_plus_mse_plus_graph_ce(cfg):
    loss, m = loss_and_metrics(_outputs(), _batch(), cfg)
    ce = (LN2 + math.log(3.0)) / 2  # targets 0 and 2
    mse = (1.5 - 0.5) ** 2  # target 1
    graph_ce = LN2  # slot 0, label 1 of [0, 0]; slot 1 unlabelled
    np.testing.assert_allclose(float(loss), ce + mse + graph_ce, rtol=1e-6)
    assert float(m["correct"]) == 1 and float(m["count"]) == 2
    assert float(m["sse"]) == 1.0 and float(m["reg_count"]) == 1
    np.testing.assert_array_equal(m["dataset_correct"], [1, 0, 0])
    np.testing.assert_array_equal(m["dataset_count"], [2, 0, 0])
    assert float(m["graph_correct"]) == 0 and float(m["graph_count"]) == 1


def test_terms_without_members_are_zero(cfg):
    out = _outputs(graph=False)
    loss, m = loss_and_metrics(out, _batch(), cfg)
    np.testing.assert_allclose(float(loss), (LN2 + math.log(3.0)) / 2 + 1.0, rtol=1e-6)
    assert "graph_count" not in m
    # No labelled graph: the graph term is 0, not NaN.
    loss, m = loss_and_metrics(_outputs(), _batch(graph_label=(-1, -1)), cfg)
    np.testing.assert_allclose(float(loss), (LN2 + math.log(3.0)) / 2 + 1.0, rtol=1e-6)
    assert float(m["graph_count"]) == 0
    # Nothing carries a loss: loss 0, counts 0.
    b = _batch().replace(target_loss_mask=np.zeros(6, bool), graph_label=np.array([-1, -1]))
    loss, m = loss_and_metrics(_outputs(), b, cfg)
    assert float(loss) == 0.0 and float(m["count"]) == 0 and float(m["reg_count"]) == 0
