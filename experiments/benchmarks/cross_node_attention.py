"""Benchmark: forward + backward throughput of ``jaxfm.ops.cross_node_attention`` vs PyTorch.

Every variant (JAX "grouped" per row width and chunk size, JAX "per_edge", the PyTorch version in
``_torch_cross_node.py``) runs in its own worker process; the driver alternates timed runs
between the workers round by round (so slow drifts of a shared machine hit all alike) and reports
medians. Useful FLOPs count only the real edges: forward ``4 E H Lq Lk Dh``, forward + backward
three times that. The dense fp32 matmul rate (2048 x 2048 ``jnp.dot``) is measured in the JAX
worker in the same run. Memory: XLA's compiled temp allocation of the jitted forward + backward
(``memory_analysis().temp_size_in_bytes``) and each worker's peak RSS.

    python experiments/benchmarks/cross_node_attention.py --grid small
    python experiments/benchmarks/cross_node_attention.py --grid full --repeats 7 --out r.json

Prints a Markdown table and writes JSON. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Problem:
    N: int
    E: int
    L: int
    H: int
    Dh: int
    seed: int = 0

    @property
    def fwd_flops(self) -> int:
        return 4 * self.E * self.H * self.L * self.L * self.Dh


@dataclasses.dataclass(frozen=True)
class Variant:
    lib: str  # "jax" | "torch"
    impl: str = ""  # jax: "grouped" | "per_edge"
    row_width: int = 0
    chunk: int = 0
    dtype: str = "float32"  # of q, k, v (jax only)
    cpu_devices: int = 1  # jax grouped: CPU devices the row chunks are split over (cpu_shards)

    @property
    def name(self) -> str:
        if self.lib == "torch":
            return "torch (gather+SDPA+index_add_)"
        suffix = "" if self.dtype == "float32" else f" {self.dtype}"
        if self.cpu_devices > 1:
            suffix += f" cpu_shards={self.cpu_devices}"
        if self.impl == "grouped":
            return f"jax grouped W={self.row_width} chunk={self.chunk}{suffix}"
        return f"jax per_edge chunk={self.chunk}{suffix}"


# grouped entries: (row width W, chunk) or (W, chunk, CPU devices)
GRIDS = {
    "small": [
        (Problem(256, 2048, 16, 4, 16), [(4, 64), (8, 128), (4, 64, 2)], [256]),
    ],
    "shards": [
        (Problem(2048, 16384, 32, 4, 32), [(4, 128), (4, 128, 2), (2, 128, 2), (4, 512, 2)], []),
    ],
    "full": [
        (
            Problem(2048, 16384, 32, 4, 32),
            [(4, 64), (4, 128), (4, 512), (4, 2048), (2, 128), (8, 128), (16, 256), (4, 128, 2)],
            [256],
        ),
        (Problem(1024, 16384, 16, 4, 32), [(4, 128), (8, 128), (4, 128, 2)], [512]),
        (Problem(512, 4096, 64, 4, 32), [(4, 64), (8, 64), (4, 64, 2)], [64]),
    ],
}


def make_graph(cfg):
    """Random graph and inputs shared by both workers (numpy only, seeded)."""
    rng = np.random.default_rng(cfg["seed"])
    n, e, lq, h, dh = cfg["N"], cfg["E"], cfg["L"], cfg["H"], cfg["Dh"]
    senders = rng.integers(0, n, e)
    receivers = rng.integers(0, n, e)
    q, k, v = (rng.standard_normal((n, lq, h, dh), dtype=np.float32) for _ in range(3))
    return senders, receivers, q, k, v


# ----------------------------------------------------------------------------- JAX worker


def _jax_worker():
    import jax
    import jax.numpy as jnp

    from jaxfm.ops import cross_node_attention

    def dense_rate(size=2048, reps=5):
        a = jnp.ones((size, size), jnp.float32)
        f = jax.jit(jnp.dot)
        f(a, a).block_until_ready()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - t)
        return 2 * size**3 / float(np.median(times)) / 1e9

    step = args = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "setup":
            cfg, var = msg["config"], msg["variant"]
            if var["cpu_devices"] > 1:  # before the backend starts (first array below)
                jax.config.update("jax_num_cpu_devices", var["cpu_devices"])
            senders, receivers, q, k, v = make_graph(cfg)
            q, k, v = (jnp.asarray(x, var["dtype"]) for x in (q, k, v))
            args = (q, k, v, jnp.asarray(senders), jnp.asarray(receivers))

            def loss(q, k, v, s, r, var=var):
                out = cross_node_attention(
                    q,
                    k,
                    v,
                    s,
                    r,
                    implementation=var["impl"],
                    row_width=var["row_width"] or None,
                    edge_chunk_size=var["chunk"],
                    cpu_shards=var["cpu_devices"] if var["impl"] == "grouped" else None,
                )
                out = out.astype(jnp.float32)
                return 0.5 * jnp.sum(out * out)  # needs the forward output, like a real loss

            step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            compiled = step.lower(*args).compile()
            mem = compiled.memory_analysis()
            jax.block_until_ready(step(*args))  # warm-up
            reply = {
                "ok": True,
                "backend": jax.default_backend(),
                "device": str(jax.devices()[0]),
                "devices": len(jax.devices()),
                "version": jax.__version__,
                "temp_mb": None if mem is None else mem.temp_size_in_bytes / 2**20,
                "dense_gflops": dense_rate(),
            }
        elif msg["cmd"] == "run":
            times = []
            for _ in range(msg["n"]):
                t = time.perf_counter()
                jax.block_until_ready(step(*args))
                times.append(time.perf_counter() - t)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            reply = {"times": times, "max_rss_mb": rss}
        else:
            break
        print(json.dumps(reply), flush=True)


# ----------------------------------------------------------------------------- driver


class Worker:
    def __init__(self, variant: Variant, problem: Problem, torch_device: str):
        if variant.lib == "torch":
            cmd = [sys.executable, os.path.join(HERE, "_torch_cross_node.py"), torch_device]
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "jax"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.ask(
            {
                "cmd": "setup",
                "config": dataclasses.asdict(problem),
                "variant": dataclasses.asdict(variant),
            }
        )

    def ask(self, msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died: {self.proc.args}")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def _variants(problem_grid, with_torch: bool, gpu: bool):
    problem, grouped, per_edge = problem_grid
    out = [Variant("jax", "grouped", g[0], g[1], cpu_devices=(*g, 1)[2]) for g in grouped]
    out += [Variant("jax", "per_edge", 0, c) for c in per_edge]
    if gpu:  # cuDNN flash path through jaxfm.ops.attention (cuDNN needs bf16/fp16)
        out.append(Variant("jax", "per_edge", 0, 4096, "bfloat16"))
    if with_torch:
        out.append(Variant("torch"))
    return problem, out


def run_problem(problem: Problem, variants, repeats: int, torch_device: str):
    """Starts one worker per variant (one at a time), then alternates timed runs round by round."""
    workers = []
    for var in variants:
        print(f"  setting up {var.name} ...", file=sys.stderr, flush=True)
        workers.append(Worker(var, problem, torch_device))
    times = {var: [] for var in variants}
    rss = {}
    try:
        for rnd in range(repeats):
            order = workers if rnd % 2 == 0 else workers[::-1]
            for wk, var in zip(order, variants if rnd % 2 == 0 else variants[::-1], strict=True):
                reply = wk.ask({"cmd": "run", "n": 1})
                times[var] += reply["times"]
                rss[var] = reply["max_rss_mb"]
    finally:
        for wk in workers:
            wk.close()
    rows = []
    for var, wk in zip(variants, workers, strict=True):
        med = float(np.median(times[var]))
        rows.append(
            {
                "problem": dataclasses.asdict(problem),
                "variant": dataclasses.asdict(var),
                "name": var.name,
                "median_s": med,
                "min_s": float(np.min(times[var])),
                "times_s": times[var],
                "edges_per_s": problem.E / med,
                "gflops": 3 * problem.fwd_flops / med / 1e9,
                "temp_mb": wk.info.get("temp_mb"),
                "max_rss_mb": rss[var],
                "dense_gflops": wk.info.get("dense_gflops"),
                "info": wk.info,
            }
        )
    torch_rows = [r for r in rows if r["variant"]["lib"] == "torch"]
    jax_dense = [r["dense_gflops"] for r in rows if r["variant"]["lib"] == "jax"]
    for r in rows:
        r["speedup_vs_torch"] = torch_rows[0]["median_s"] / r["median_s"] if torch_rows else None
        r["pct_of_dense"] = 100 * r["gflops"] / float(np.median(jax_dense)) if jax_dense else None
    return rows


def markdown(rows) -> str:
    lines = [
        "| N | E | L | H | Dh | variant | median ms | edges/s | GFLOP/s | % dense | vs torch "
        "| XLA temp MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["problem"]
        lines.append(
            f"| {p['N']} | {p['E']} | {p['L']} | {p['H']} | {p['Dh']} | {r['name']} "
            f"| {1e3 * r['median_s']:.0f} | {r['edges_per_s']:.3g} | {r['gflops']:.1f} "
            f"| {r['pct_of_dense']:.1f} | "
            + (f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-")
            + " | "
            + (f"{r['temp_mb']:.1f}" if r["temp_mb"] is not None else "-")
            + f" | {r['max_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--out", default=None, help="write results JSON here")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch variant")
    parser.add_argument("--worker", choices=["jax"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "jax":
        return _jax_worker()

    try:
        import torch

        with_torch = not args.no_torch
        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        with_torch, torch_device = False, "cpu"
        print("torch not installed: skipping the PyTorch variant", file=sys.stderr)
    import jax

    gpu = jax.default_backend() == "gpu"
    load = os.getloadavg()
    print(f"load average before: {load}", file=sys.stderr)
    rows = []
    for grid in GRIDS[args.grid]:
        problem, variants = _variants(grid, with_torch, gpu)
        print(f"{problem}", file=sys.stderr, flush=True)
        rows += run_problem(problem, variants, args.repeats, torch_device)
    table = markdown(rows)
    dense = [r["dense_gflops"] for r in rows if r["variant"]["lib"] == "jax"]
    header = (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"dense fp32 matmul (jnp.dot 2048^2, median over workers): {np.median(dense):.0f} GFLOP/s; "
        f"load average before/after: {load[0]:.2f} / {os.getloadavg()[0]:.2f}"
    )
    print(header)
    print(table)
    if args.out:
        meta = {
            "header": header,
            "grid": args.grid,
            "repeats": args.repeats,
            "load_before": load,
            "load_after": os.getloadavg(),
            "python": sys.version,
            "argv": sys.argv,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
