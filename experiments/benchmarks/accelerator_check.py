"""One-command accelerator check: which attention paths run, and how fast the hot spots are.

    python experiments/benchmarks/accelerator_check.py              # GPU or TPU host, < 8 min
    python experiments/benchmarks/accelerator_check.py --cpu-smoke  # tiny sizes, CI, < 1 min
    python experiments/benchmarks/accelerator_check.py --out check.json

Prints one Markdown table (and optionally JSON). Rows:

* ``attention``: every attention call of one compiled GraphFM ``small`` train step, with the
  implementation :func:`jaxfm.ops.attention` chose and the kernels found in the compiled HLO
  (:func:`jaxfm.ops.explain.explain_attention`): the proof that the flash path was taken.
* ``fimp``: ``cross_node_attention`` forward + backward in bf16, useful TFLOP/s (real edges,
  ``3 x 4 E H L^2 Dh``) and % of the chip's peak.
* ``graphfm``: ``small`` and ``medium`` train steps (loss gradient + AdamW update, donated state)
  on packed synthetic SBM batches: node tokens/s and MFU = model FLOPs / step time / peak. Model
  FLOPs: XLA's cost analysis of the forward pass lowered with the XLA attention path, minus the
  masked-out part of the packed cross attention (``4 G K T D`` computed, ``4 K T_real D``
  useful), times 3 for forward + backward. Flash kernels are custom calls that cost analysis
  cannot see, hence the XLA lowering for counting only.
* ``input``: host batch preparation (packing one bucket + transfer) vs device step time, and the
  input share ``host / (host + device)`` of a step when the two do not overlap. Then the same
  step in the training loop (:func:`jaxfm.train.trainer.fit`, batches packed afresh each step),
  in the same run: the median loop step with ``prefetch=0`` (packing + ``device_put`` in the
  loop's thread, between dispatches) and ``prefetch=1`` (in a background thread one step ahead),
  and each one's measured input share ``(loop step - device step) / loop step``: what the device
  still waits for per step.
* ``packed vs padded``: the Perceiver cross attention (latents -> packed nodes) forward +
  backward in the ``segment`` layout (packed; splash on TPU, XLA dense mask elsewhere), the
  ``bucketed`` layout (padded per graph; cuDNN on GPU) and, on Hopper, ``cudnn_packed``.
* ``feature MLP``: the per-dataset MLPs with ``jax.lax.ragged_dot`` vs a per-row weight gather.

Peak FLOP/s: a table of dense bf16 peaks per chip (``--peak-tflops`` overrides); on CPU the
measured fp32 ``jnp.dot`` 2048^2 rate stands in for the peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

PEAK_BF16_TFLOPS = {  # dense bf16, per chip (vendor figures)
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    fimp: tuple[int, int, int, int, int]  # N, E, L, H, Dh
    nodes: int  # packed rows T per batch
    graphs: int  # graph slots G
    targets: int  # Q
    corpus: int  # synthetic SBM graphs
    node_range: tuple[int, int]
    models: tuple[str, ...]
    repeats: int
    dtype: str  # GraphFM compute dtype
    shrink: dict  # config overrides (smoke: shallow models, so that CI compiles fast)
    mlp: tuple[int, int, int, int]  # T, S, F, hidden


FULL = Sizes((4096, 65536, 64, 4, 64), 8192, 32, 1024, 48, (64, 1500), ("small", "medium"), 10,
             "bfloat16", {}, (16384, 8, 512, 256))  # fmt: skip
# smoke: float32 (bf16 matmuls are emulated on CPU) and one-block models of the presets' widths
SMOKE = Sizes((64, 256, 8, 2, 8), 128, 4, 16, 4, (16, 40), ("small", "medium"), 1, "float32",
              dict(encoder_depth=1, decoder_depth=1, num_latents=16), (512, 3, 32, 16))  # fmt: skip


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def peak_flops(override_tflops: float | None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from)."""
    dev = jax.devices()[0]
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    kind = getattr(dev, "device_kind", "")
    if dev.platform != "cpu":
        for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
            if name.lower() in kind.lower():
                return PEAK_BF16_TFLOPS[name] * 1e12, f"{name} bf16 dense peak"
        return float("nan"), f"unknown chip {kind!r} (pass --peak-tflops)"
    a = jnp.ones((2048, 2048), jnp.float32)
    t = _median_time(jax.jit(jnp.dot), a, a, repeats=5)
    return 2 * 2048**3 / t, "measured fp32 jnp.dot 2048^2 (CPU)"


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, item: str, value, unit: str = "", note: str = ""):
        self.rows.append(dict(section=section, item=item, value=value, unit=unit, note=note))
        v = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {section}: {item} = {v} {unit} {note}", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| section | item | value | unit | note |", "|---|---|---:|---|---|"]
        for r in self.rows:
            v = r["value"]
            v = f"{v:.4g}" if isinstance(v, float) else str(v)
            lines.append(f"| {r['section']} | {r['item']} | {v} | {r['unit']} | {r['note']} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- GraphFM


def _corpus(sizes: Sizes, base):
    from jaxfm.data.corpus import build_corpus
    from jaxfm.data.sbm import sbm_corpus

    datasets = sbm_corpus(sizes.corpus, seed=0, node_range=sizes.node_range)
    return build_corpus(datasets, feature_dim=base.feature_dim, pe_dim=base.pe_dim,
                        node_budget=sizes.nodes, seed=0)  # fmt: skip


def model_flops(model, params, batch, cfg) -> float:
    """Forward FLOPs from XLA's cost analysis (XLA attention lowering), minus masked waste."""
    attn = importlib.import_module("jaxfm.ops.attention")
    real_backend = attn._backend
    attn._backend = lambda: "cpu"  # count with the XLA path: custom calls report no FLOPs
    try:
        fwd = jax.jit(lambda p, b: model.apply({"params": p}, b)["logits"])
        cost = fwd.lower(params, batch).cost_analysis()
    finally:
        attn._backend = real_backend
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0))
    t = batch.segment_ids.shape[0]
    g, k, d = batch.graph_mask.shape[0], cfg.num_latents, cfg.dim
    real = float(np.sum(np.asarray(batch.segment_ids) > 0))
    return 3.0 * (flops - 4.0 * g * k * t * d + 4.0 * k * real * d)


def graphfm_rows(table: Table, sizes: Sizes, peak: float, dtype: str) -> None:
    import optax

    from jaxfm.data.packing import PackingBudget
    from jaxfm.data.pipeline import PackedPipeline
    from jaxfm.graphfm import GraphFM, graphfm_config, loss_and_metrics
    from jaxfm.ops.attention import record_attention_calls
    from jaxfm.ops.explain import attribute_calls

    for name in sizes.models:
        base = graphfm_config(name, dtype=dtype, **sizes.shrink)
        corpus = _corpus(sizes, base)
        cfg = dataclasses.replace(base, datasets=tuple(corpus.dataset_specs))
        budget = PackingBudget(nodes=sizes.nodes, graphs=sizes.graphs, targets=sizes.targets,
                               neighbors=cfg.num_neighbors)  # fmt: skip
        pipe = PackedPipeline(corpus, budget=budget, num_buckets=1, seed=0)
        host = []
        batches = []
        for _ in range(sizes.repeats + 1):
            t0 = time.perf_counter()
            b = jax.device_put(next(pipe)[0])
            jax.block_until_ready(b)
            host.append(time.perf_counter() - t0)
            batches.append(b)
        model = GraphFM(cfg)
        params = jax.jit(model.init)(jax.random.key(0), batches[0])["params"]
        opt = optax.adamw(1e-3)
        state = (params, opt.init(params))

        def step(state, batch, model=model, cfg=cfg, opt=opt):
            params, opt_state = state

            def loss(p):
                return loss_and_metrics(model.apply({"params": p}, batch), batch, cfg)[0]

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        with record_attention_calls() as calls:
            lowered = jax.jit(step, donate_argnums=0).lower(state, batches[0])
        compiled = lowered.compile()
        if name == sizes.models[0]:
            for r in attribute_calls(calls, compiled.as_text()):
                kernels = ", ".join(r["fwd_kernels"] + r["bwd_kernels"]) or "-"
                table.add("attention", f"{name} #{r['call']} {r['path']}", r["implementation"],
                          "", f"kernels: {kernels}; {r['verdict']}")  # fmt: skip
        state, value = compiled(state, batches[0])
        jax.block_until_ready(state)
        times = []
        for b in batches[1:]:
            t0 = time.perf_counter()
            state, value = compiled(state, b)
            jax.block_until_ready(value)
            times.append(time.perf_counter() - t0)
        dev_s = float(np.median(times))
        host_s = float(np.median(host[1:]))
        rows = float(np.mean([np.sum(np.asarray(b.segment_ids) > 0) for b in batches[1:]]))
        flops = model_flops(model, jax.tree.map(lambda x: x, state[0]), batches[1], cfg)
        label = (
            f"{name}{' (1 block)' if sizes.shrink else ''} T={sizes.nodes} G={sizes.graphs} {dtype}"
        )
        table.add("graphfm", f"{label} step", 1e3 * dev_s, "ms", f"loss {float(value):.3f}")
        table.add("graphfm", f"{label} tokens/s", rows / dev_s, "tok/s",
                  f"{rows:.0f} real node rows per batch")  # fmt: skip
        table.add("graphfm", f"{label} MFU", 100 * flops / dev_s / peak, "%",
                  f"{flops / 1e9:.2f} model GFLOP/step")  # fmt: skip
        table.add("input", f"{label} host batch prep", 1e3 * host_s, "ms", "pack + device_put")
        table.add("input", f"{label} input share", 100 * host_s / (host_s + dev_s), "%",
                  "host / (host + device), if not overlapped")  # fmt: skip
        state = loop_rows(table, label, sizes, compiled, state, corpus, budget, dev_s)


class _Held:
    """The benchmark's ``(params, opt_state)`` as the train state :func:`fit` expects."""

    def __init__(self, state):
        self.state = state

    @property
    def params(self):
        return self.state[0]


class _Buckets:
    """One packed bucket per step, packed afresh (the pipeline as fit's batch source)."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __next__(self):
        return next(self.pipe)[0]

    def get_state(self) -> dict:
        return self.pipe.get_state()

    def set_state(self, state: dict) -> None:
        self.pipe.set_state(state)


def loop_rows(table: Table, label: str, sizes: Sizes, compiled, state, corpus, budget, dev_s):
    """The compiled step in the training loop with ``prefetch`` 0 and 1; returns the state."""
    from jaxfm.data.pipeline import PackedPipeline
    from jaxfm.train.trainer import fit

    def step(held, batch, key):
        del key
        new, value = compiled(held.state, batch)
        return _Held(new), {"loss": value}

    steps = max(sizes.repeats, 5) + 1  # the first step's time (its batch unprepared) is dropped
    for prefetch in (0, 1):
        pipe = PackedPipeline(corpus, budget=budget, num_buckets=1, seed=1)
        result = fit(_Held(state), step, _Buckets(pipe), total_steps=steps,
                     rng=jax.random.key(0), step_record=lambda *a: {}, put=jax.device_put,
                     log_stream=None, progress=False, prefetch=prefetch)  # fmt: skip
        state = result.state.state
        loop_s = float(np.median([r["step_seconds"] for r in result.steps[1:]]))
        how = "in the loop's thread" if prefetch == 0 else "in a background thread, 1 ahead"
        table.add("input", f"{label} loop step, prefetch {prefetch}", 1e3 * loop_s, "ms",
                  f"fit, pack + device_put {how}; median of {steps - 1}")  # fmt: skip
        table.add("input", f"{label} input share, prefetch {prefetch}",
                  100 * max(loop_s - dev_s, 0.0) / loop_s, "%",
                  "measured: (loop step - device step) / loop step")  # fmt: skip
    return state


# ----------------------------------------------------------------------------- ops


def fimp_rows(table: Table, sizes: Sizes, peak: float) -> None:
    from jaxfm.ops import cross_node_attention

    n, e, lt, h, dh = sizes.fimp
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(n, lt, h, dh)), jnp.bfloat16) for _ in range(3))
    s, t = (jnp.asarray(r.integers(0, n, e), jnp.int32) for _ in range(2))
    impls = ["grouped", "per_edge"]
    for impl in impls:

        def loss(q, k, v, impl=impl):
            out = cross_node_attention(q, k, v, s, t, implementation=impl).astype(jnp.float32)
            return 0.5 * jnp.sum(out * out)

        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        sec = _median_time(f, q, k, v, repeats=sizes.repeats)
        flops = 3 * 4 * e * h * lt * lt * dh
        label = f"cross_node {impl} N={n} E={e} L={lt} H={h} Dh={dh} bf16 fwd+bwd"
        table.add("fimp", label, flops / sec / 1e12, "TFLOP/s",
                  f"{100 * flops / sec / peak:.2f} % of peak, {1e3 * sec:.1f} ms")  # fmt: skip


def packed_vs_padded_rows(table: Table, sizes: Sizes) -> None:
    from jaxfm.graphfm.encoder import scatter_graphs
    from jaxfm.ops import attention, resolve_implementation

    g, kl, t, h, dh = sizes.graphs, 32, sizes.nodes, 4, 64
    r = np.random.default_rng(1)
    lengths = r.integers(1, max(2, 2 * t // g), g)
    lengths = np.minimum(lengths, t // g)
    seg = np.concatenate([np.full(n_, i + 1) for i, n_ in enumerate(lengths)])
    seg = jnp.asarray(np.pad(seg, (0, t - seg.size)), jnp.int32)
    dt = jnp.bfloat16
    q = jnp.asarray(r.normal(size=(1, g * kl, h, dh)), dt)
    kv = jnp.asarray(r.normal(size=(t, 2 * h * dh)), dt)
    qid = jnp.repeat(jnp.arange(1, g + 1, dtype=jnp.int32), kl)[None]
    bucket = int(lengths.max())

    def packed(q, kv, impl=None):
        k, v = jnp.split(kv.reshape(1, t, 2 * h, dh), 2, axis=2)
        out = attention(q, k, v, q_segment_ids=qid, kv_segment_ids=seg[None], implementation=impl)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    def padded(q, kv):
        x, n_ = scatter_graphs(kv, seg, g, bucket)  # [G, S, 2 H Dh]
        k, v = jnp.split(x.reshape(g, bucket, 2 * h, dh), 2, axis=2)
        out = attention(q.reshape(g, kl, h, dh), k, v, kv_seq_lengths=n_)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    variants = [("packed (segment)", packed), ("padded (bucketed)", padded)]
    if jax.default_backend() == "gpu":
        variants.append(("packed (cudnn_packed)", lambda q, kv: packed(q, kv, "cudnn_packed")))
    k0 = jnp.zeros((1, t, h, dh), dt)
    impl_of = {
        "packed (segment)": resolve_implementation(q, k0, k0, dense_masking=True),
        "padded (bucketed)": resolve_implementation(q, k0, k0),
        "packed (cudnn_packed)": "cudnn_packed",
    }
    for name, fn in variants:
        try:
            sec = _median_time(jax.jit(jax.grad(fn, argnums=(0, 1))), q, kv, repeats=sizes.repeats)
        except Exception as err:  # report it, do not abort the whole check
            table.add("packed vs padded", name, "failed", "", f"{type(err).__name__}: {err}"[:160])
            continue
        table.add("packed vs padded", f"{name} G={g} K={kl} T={t}", 1e3 * sec, "ms",
                  f"impl {impl_of[name]}, fwd+bwd bf16, bucket S={bucket}")  # fmt: skip


def feature_mlp_rows(table: Table, sizes: Sizes) -> None:
    from jaxfm.graphfm.tokens import FeatureMLPs

    t, s, f, hid = sizes.mlp
    r = np.random.default_rng(2)
    x = jnp.asarray(r.normal(size=(t, f)), jnp.float32)
    groups = np.full(s, t // s)
    groups[-1] += t - groups.sum()
    groups = jnp.asarray(groups, jnp.int32)
    base = None
    for impl in ("ragged", "gather"):
        mod = FeatureMLPs(num_datasets=s, hidden=hid, out=hid, implementation=impl)
        params = jax.jit(mod.init)(jax.random.key(0), x, groups)
        loss = lambda p, x, mod=mod: jnp.sum(mod.apply(p, x, groups) ** 2)
        sec = _median_time(jax.jit(jax.grad(loss)), params, x, repeats=sizes.repeats)
        base = base or sec
        table.add("feature MLP", f"{impl} T={t} S={s} F={f} hidden={hid} fwd+bwd", 1e3 * sec, "ms",
                  f"{base / sec:.2f}x of ragged speed")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes (CI, < 1 min)")
    parser.add_argument("--peak-tflops", type=float, help="chip peak to use for %% and MFU")
    parser.add_argument("--dtype", help="GraphFM compute dtype (default: bf16; smoke: f32)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else FULL
    t_start = time.perf_counter()
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {getattr(dev, 'device_kind', '')} x{jax.device_count()}, "
          f"jax {jax.__version__}", file=sys.stderr)  # fmt: skip
    peak, peak_note = peak_flops(args.peak_tflops)
    table = Table()
    table.add("device", f"{dev.platform} {getattr(dev, 'device_kind', '')}", peak / 1e12,
              "TFLOP/s peak", peak_note)  # fmt: skip
    graphfm_rows(table, sizes, peak, args.dtype or sizes.dtype)
    fimp_rows(table, sizes, peak)
    packed_vs_padded_rows(table, sizes)
    feature_mlp_rows(table, sizes)
    table.add("total", "wall time", time.perf_counter() - t_start, "s")
    print(table.markdown())
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": str(dev), "rows": table.rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
