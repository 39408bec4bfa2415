"""cross_node_attention "grouped" split over 2 CPU devices equals the single-device result.

Runs in a subprocess: the CPU device count is fixed when the backend starts.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jaxfm.ops import cross_node_attention, cross_node_attention_reference
    from jaxfm.ops.cross_node import default_cpu_shards
    assert len(jax.devices()) == 2 and default_cpu_shards() == 2
    r = np.random.default_rng(0)
    n, e, l, h, d = 40, 300, 6, 2, 8
    q, k, v = (jnp.asarray(r.normal(size=(n, l, h, d)), jnp.float32) for _ in range(3))
    s, t = (jnp.asarray(r.integers(0, n, e), jnp.int32) for _ in range(2))
    km = jnp.asarray(r.random((n, l)) < 0.8); em = jnp.asarray(r.random(e) < 0.9)
    kw = dict(kv_mask=km, edge_mask=em, edge_chunk_size=16)
    def loss(shards):
        return lambda q, k, v: jnp.sum(
            cross_node_attention(q, k, v, s, t, cpu_shards=shards, **kw) ** 2)
    ref = cross_node_attention_reference(q, k, v, s, t, kv_mask=km, edge_mask=em)
    out2 = cross_node_attention(q, k, v, s, t, **kw)  # auto: 2 shards
    np.testing.assert_allclose(out2, ref, atol=2e-5)
    np.testing.assert_allclose(out2, cross_node_attention(q, k, v, s, t, cpu_shards=1, **kw),
                               atol=1e-6)
    g1 = jax.grad(loss(1), argnums=(0, 1, 2))(q, k, v)
    g2 = jax.jit(jax.grad(loss(2), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    hlo = jax.jit(loss(2)).lower(q, k, v).as_text()
    assert "all-reduce" in hlo or "psum" in hlo or "all_reduce" in hlo
    try:
        cross_node_attention(q, k, v, s, t, cpu_shards=3)
    except ValueError as err:
        assert "exceeds the 2 local CPU devices" in str(err)
    else:
        raise AssertionError("cpu_shards=3 accepted")
    print("OK")
    """
)


def test_two_cpu_devices_match_one():
    env = {
        **os.environ,
        "JAX_NUM_CPU_DEVICES": "2",
        "JAX_PLATFORMS": "cpu",
        "JAXFM_CPU_SHARDS": "all",
    }
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
