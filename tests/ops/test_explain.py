"""jaxfm.ops.explain: per-call implementation report read back from the compiled HLO."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.ops import attention
from jaxfm.ops.explain import _scan, _verdict, explain_attention, format_explanation

attention_mod = importlib.import_module("jaxfm.ops.attention")


def _loss(q, k, v, seg):
    a = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
    b = attention(q, k, v, implementation="reference")
    return jnp.sum(a * b)


def _args():
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(2, 16, 2, 8)), jnp.float32) for _ in range(3))
    return q, k, v, jnp.asarray(r.integers(0, 3, (2, 16)), jnp.int32)


def test_reports_each_call_forward_and_backward():
    rows = explain_attention(jax.grad(_loss, argnums=(0, 1, 2)), *_args())
    assert [r["implementation"] for r in rows] == ["xla", "reference"]
    assert rows[0]["masking"] == ("segment_ids",)
    for r in rows:
        assert r["hlo_ops"] > r["hlo_bwd_ops"] > 0  # both passes found in the HLO
        assert r["fwd_kernels"] == r["bwd_kernels"] == []
    assert rows[0]["verdict"].startswith("XLA")
    table = format_explanation(rows)
    assert table.count("\n| ") == 3 and "segment_ids" in table


def test_splash_posing_as_tpu_is_reported_as_interpret(monkeypatch):
    monkeypatch.setattr(attention_mod, "_backend", lambda: "tpu")
    rows = explain_attention(_loss, *_args())
    assert rows[0]["implementation"] == "splash"
    assert rows[0]["verdict"].startswith("splash in Pallas interpret mode")


def test_gpu_hlo_custom_calls_are_attributed():
    tags = ["jaxfm_attention_1_cudnn", "jaxfm_attention_12_cudnn"]
    hlo = "\n".join(
        [
            '%cc = (bf16[2,4,8,64]) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax", '
            'metadata={op_name="jit(step)/jvp(Model)/enc/jaxfm_attention_12_cudnn/dpa"}',
            '%cb = (bf16[2,4,8,64]) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax'
            'Backward", metadata={op_name="jit(step)/transpose(jvp(Model))/enc/'
            'jaxfm_attention_12_cudnn/dpa"}',
            '%f = f32[2] fusion(%x), metadata={op_name="jit(step)/dec/jaxfm_attention_1_cudnn/x"}',
        ]
    )
    found = _scan(hlo, tags)
    assert found[tags[1]]["fwd"] == {"__cudnn$fmhaSoftmax"}
    assert found[tags[1]]["bwd"] == {"__cudnn$fmhaSoftmaxBackward"}
    assert found[tags[1]]["path"] == "Model/enc"
    assert _verdict("cudnn", found[tags[1]], "gpu") == "flash kernel"
    assert _verdict("cudnn", found[tags[0]], "gpu").startswith("EXPECTED __cudnn$fmha")
    assert _verdict("cudnn", dict(fwd=set(), bwd=set(), ops=0), "gpu").startswith("not in")


@pytest.mark.slow  # compiles a whole GraphFM train step (~10-20 s on 2 shared cores)
def test_graphfm_train_step_explanation():
    from jaxfm.graphfm import graphfm_config
    from jaxfm.graphfm.encoder import resolve_attention_path
    from jaxfm.train.explain import explain_train_step

    rows = explain_train_step(graphfm_config("small"), nodes=64, graphs=2, targets=8)
    paths = [r["path"] for r in rows]
    # the latents' queries: one packed sequence of G*K rows (segment), or [G, K] (bucketed)
    q = {"segment": (1, 64, 4, 8), "bucketed": (2, 32, 4, 8)}[resolve_attention_path("auto")]
    assert paths[0] == "GraphFM/encoder/cross_attention" and rows[0]["q"] == q
    assert sum(p.startswith("GraphFM/encoder/layer_") for p in paths) == 4
    assert sum(p.startswith("GraphFM/decoder/") for p in paths) == 2
    assert all(r["hlo_bwd_ops"] > 0 for r in rows)  # a train step: backward present
