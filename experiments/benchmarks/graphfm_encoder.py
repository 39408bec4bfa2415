"""GraphFM encoder benchmarks: packed vs padded, step time vs T, ragged_dot feature MLPs.

Three measurements on the ``small`` GraphFM config (D = K = 32, encoder depth 4), each a jitted
forward + backward step (``grad`` of ``sum(out**2)`` w.r.t. the parameters):

(a) **Packed vs padded encoder step** on the real size distribution of ``../shared/datasets``
    (``jaxfm.data.registry.find_datasets``; node-level graphs above ``T/4`` nodes are cut into
    GraphSAINT-sized units, uniform in [0.6, 1] x T/4; the graphs of TU sets are drawn around
    their mean size). Batches are filled in random order up to T rows / G slots. Variants:
    All variants get G = the batch's number of graphs (the latent blocks cost G K^2 per layer
    whatever the layout, so a loose slot budget G costs the same in every variant).
    ``packed/segment`` (one [T, D] sequence, segment ids, ``jaxfm.ops.attention`` XLA path),
    ``packed/bucketed`` (rows gathered into [G, S] with key lengths, the cuDNN layout on GPU;
    S = the largest unit), and ``padded`` (every graph of the batch padded to the batch's largest
    graph: [n_graphs x S_max] rows, the usual graph-transformer batching). Reported: real tokens/s
    and XLA's compiled temp memory (``memory_analysis().temp_size_in_bytes``).
(b) **Step time vs total nodes T** with graphs of 128 nodes (G = T / 128 slots): segment and
    bucketed paths.
(c) **Per-dataset feature MLPs**: ``ragged`` (``jax.lax.ragged_dot``) vs ``gather`` (per-row
    weight gather) vs ``loop`` (every dataset's MLP on every row, then select: the S-fold waste).

    python experiments/benchmarks/graphfm_encoder.py            # a few minutes on 2 CPU cores
    python experiments/benchmarks/graphfm_encoder.py --quick    # smaller budgets

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxfm.graphfm import graphfm_config
from jaxfm.graphfm.encoder import PerceiverEncoder
from jaxfm.graphfm.tokens import FeatureMLPs

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"


def corpus_units(cap: int, seed: int = 0) -> np.ndarray:
    """Unit sizes of the real corpus (whole small graphs, GraphSAINT-sized pieces of big ones)."""
    rng = np.random.default_rng(seed)
    try:
        from jaxfm.data.registry import find_datasets

        refs = [(r.num_nodes, r.num_graphs) for r in find_datasets(DATASETS) if r.num_nodes]
    except Exception as e:
        print(f"(find_datasets unavailable: {e}; using SBM-like sizes)")
        refs = [(int(n), 1) for n in np.exp(rng.uniform(np.log(32), np.log(50_000), 60))]
    units = []
    for n, graphs in refs:
        if graphs > 1:  # a graph-classification set: its graphs around the mean size
            mean = n / graphs
            units += list(np.maximum(2, rng.uniform(0.5, 1.5, graphs) * mean).astype(int))
            continue
        while n > cap:  # GraphSAINT units of a big graph
            u = int(rng.uniform(0.6, 1.0) * cap)
            units.append(u)
            n -= u
        units.append(n)
    return np.array(units)


def fill_batches(units, t: int, g: int, count: int, seed: int = 0) -> list[list[int]]:
    """Random-order first-fit batches of at most t rows and g graphs."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    batches, cur, used = [], [], 0
    for i in order:
        n = int(units[i])
        if used + n > t or len(cur) == g:
            batches.append(cur)
            cur, used = [], 0
            if len(batches) == count:
                break
        cur.append(n)
        used += n
    return batches


def _params(module, *args):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: (rng.normal(size=s.shape) * (s.shape[-2] ** -0.5 if s.ndim > 1 else 0.1)).astype(
            np.float32
        ),
        shapes,
    )


def _timed(fn, args, repeats: int):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), temp


def encoder_step(cfg, attention, tokens, seg, mask, bucket, repeats):
    enc = PerceiverEncoder(
        num_latents=cfg.num_latents, depth=cfg.encoder_depth, cross_heads=cfg.cross_heads,
        self_heads=cfg.self_heads, mlp_ratio=cfg.mlp_ratio, attention=attention,
        bucket_nodes=bucket,
    )  # fmt: skip
    params = _params(enc, tokens, seg, mask)

    def step(p, x):
        return jax.grad(lambda p: jnp.sum(enc.apply({"params": p}, x, seg, mask) ** 2))(p)

    return _timed(step, (params, tokens), repeats)


def _layout(sizes, rows: int, slots: int, stride: int | None = None):
    """Segment ids for graphs of ``sizes`` packed back to back (or every ``stride`` rows)."""
    seg = np.zeros(rows, np.int32)
    start = 0
    for i, n in enumerate(sizes):
        seg[start : start + n] = i + 1
        start += stride if stride else n
    mask = np.zeros(slots, bool)
    mask[: len(sizes)] = True
    return seg, mask


def bench_packed_vs_padded(cfg, t, g, n_batches, repeats):
    cap = t // 4
    units = corpus_units(cap)
    batches = fill_batches(units, t, g, n_batches)
    rng = np.random.default_rng(1)
    print(f"\n(a) packed vs padded encoder step: small config, T={t}, G={g}, {len(units)} units "
          f"(median {int(np.median(units))}, max {units.max()} nodes)\n")  # fmt: skip
    print("| batch | graphs | real nodes | S_max | variant | rows | step ms | tokens/s | "
          "temp MiB |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    totals: dict[str, list[float]] = {}
    for b, sizes in enumerate(batches):
        real, smax = sum(sizes), max(sizes)
        seg, mask = _layout(sizes, t, len(sizes))  # G = the batch's graphs, as for padded
        pseg, pmask = _layout(sizes, len(sizes) * smax, len(sizes), stride=smax)
        variants = {
            "packed/segment": ("segment", t, seg, mask, None),
            "packed/bucketed": ("bucketed", t, seg, mask, cap),
            "padded": ("bucketed", len(sizes) * smax, pseg, pmask, smax),
        }
        for name, (attention, rows, s, m, bucket) in variants.items():
            x = rng.normal(size=(rows, cfg.dim)).astype(np.float32)
            sec, temp = encoder_step(cfg, attention, x, s, m, bucket, repeats)
            totals.setdefault(name, []).append(real / sec)
            print(f"| {b} | {len(sizes)} | {real} | {smax} | {name} | {rows} | {1e3 * sec:.1f} | "
                  f"{real / sec:,.0f} | {temp / 2**20:.1f} |")  # fmt: skip
    print("\n| variant | mean tokens/s over batches |\n|---|---:|")
    for name, v in totals.items():
        print(f"| {name} | {statistics.mean(v):,.0f} |")


def bench_scaling(cfg, ts, repeats, graph_nodes=128):
    print(f"\n(b) encoder step time vs total nodes T (graphs of {graph_nodes} nodes, G = T/"
          f"{graph_nodes})\n")  # fmt: skip
    print("| T | G | segment ms | bucketed ms | segment temp MiB | bucketed temp MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(2)
    for t in ts:
        g = t // graph_nodes
        seg, mask = _layout([graph_nodes] * g, t, g)
        x = rng.normal(size=(t, cfg.dim)).astype(np.float32)
        s_sec, s_mem = encoder_step(cfg, "segment", x, seg, mask, None, repeats)
        b_sec, b_mem = encoder_step(cfg, "bucketed", x, seg, mask, graph_nodes, repeats)
        print(f"| {t} | {g} | {1e3 * s_sec:.1f} | {1e3 * b_sec:.1f} | {s_mem / 2**20:.1f} | "
              f"{b_mem / 2**20:.1f} |")  # fmt: skip


def bench_feature_mlps(t, f, hidden, out, datasets, repeats):
    print(f"\n(c) per-dataset feature MLPs, T={t}, F={f}, hidden={hidden}, out={out} (fwd + bwd)\n")
    print("| S | ragged ms | gather ms | loop ms | ragged MiB | gather MiB | loop MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(t, f)).astype(np.float32)
    for s in datasets:
        sizes = np.full(s, (t - 16) // s, np.int32)  # 16+ padding rows at the end
        row = {}
        for impl in ("ragged", "gather"):
            mlp = FeatureMLPs(num_datasets=s, hidden=hidden, out=out, implementation=impl)
            p = _params(mlp, x, sizes)

            def step(p, x, mlp=mlp, sizes=sizes):
                return jax.grad(lambda p: jnp.sum(mlp.apply({"params": p}, x, sizes) ** 2))(p)

            row[impl] = _timed(step, (p, x), repeats)
        ds = np.minimum(np.searchsorted(np.cumsum(sizes), np.arange(t), side="right"), s - 1)

        def loop(p, x, s=s, ds=ds):
            def f_(p):
                y = 0.0
                for d in range(s):
                    h = jax.nn.gelu(x @ p["kernel_0"][d] + p["bias_0"][d], approximate=False)
                    y = jnp.where((ds == d)[:, None], h @ p["kernel_1"][d] + p["bias_1"][d], y)
                return jnp.sum(y**2)

            return jax.grad(f_)(p)

        row["loop"] = _timed(loop, (p, x), repeats)
        ms = " | ".join(f"{1e3 * row[k][0]:.2f}" for k in ("ragged", "gather", "loop"))
        mib = " | ".join(f"{row[k][1] / 2**20:.1f}" for k in ("ragged", "gather", "loop"))
        print(f"| {s} | {ms} | {mib} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller budgets (CI smoke)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=(), choices=("a", "b", "c"))
    args = ap.parse_args(argv)
    cfg = graphfm_config("small")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    t, g, nb = (1024, 32, 2) if args.quick else (4096, 64, 4)
    if "a" not in args.skip:
        bench_packed_vs_padded(cfg, t, g, nb, args.repeats)
    if "b" not in args.skip:
        ts = (512, 1024, 2048) if args.quick else (1024, 2048, 4096, 8192)
        bench_scaling(cfg, ts, args.repeats)
    if "c" not in args.skip:
        bench_feature_mlps(t, 128, 32, 24, (4, 16) if args.quick else (4, 16, 64), args.repeats)


if __name__ == "__main__":
    main()
