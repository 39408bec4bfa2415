"""GraphFM pretraining throughput: tokens/s, decoded targets/s and achieved FLOP/s (issue 14).

For each model size and target budget, runs the library's own pretraining (``pretrain()``: the
real corpus, packing pipeline, model, LAMB optimizer and jitted train step) for a few steps and
captures its train step. Then, in the same process and back to back:

- **step time**: the captured step re-run on its last batch (median of ``--repeats`` calls,
  each synchronised), i.e. the device time of one optimizer step without host packing;
- **end to end**: the median ``tokens_per_s`` that ``pretrain()`` logged per step (packing,
  logging and checkpoints included);
- **FLOPs per step**: *executed*, XLA's cost analysis of the compiled step (forward, backward,
  optimizer, and the masked-out score blocks of the ``segment`` attention layout), and *model*
  FLOPs, 3 x the forward's with the masked waste removed (``accelerator_check.model_flops``,
  the MFU numerator of the accelerator check);
- **dense rate**: a jitted float32 ``[n, n] @ [n, n]`` matmul timed right after each row, so
  ``fraction = (model FLOPs / step time) / dense FLOP/s`` compares like with like on a shared,
  noisy machine.

Tokens are real (non-padding) node rows, targets the decoded target nodes of a step.

    python experiments/benchmarks/graphfm_pretrain_step.py                    # small + medium
    python experiments/benchmarks/graphfm_pretrain_step.py --models small --targets 256,1024,2048
    python experiments/benchmarks/graphfm_pretrain_step.py --quick            # SBM corpus, 2 steps

Prints a Markdown table and, with ``--out``, writes it with the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accelerator_check import model_flops

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"


def dense_flops_per_s(n: int = 1024, repeats: int = 10) -> float:
    """float32 matmul rate of this machine right now (median of ``repeats``)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


class _Capture:
    """Wraps ``make_train_step`` so the step ``pretrain()`` builds can be re-run afterwards."""

    def __init__(self, make):
        self.make, self.step, self.args = make, None, None

    def __call__(self, *a, **k):
        step = self.make(*a, **k)

        def wrapped(state, batch, key):
            out = step(state, batch, key)
            self.step, self.args = step, (out[0], batch, key)  # the new state, not the donated one
            return out

        return wrapped


def measure(model: str, targets: int, args) -> dict:
    import jaxfm.train.graphfm_pretrain as gp
    from jaxfm.graphfm import GraphFM
    from jaxfm.train.graphfm_finetune import load_pretrained_graphfm

    capture = _Capture(gp.make_train_step)
    gp.make_train_step = capture
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = gp.PretrainConfig(
                model=model,
                data=() if args.quick else (str(SHARED),),
                corpus=None if args.quick else "paper-small",
                synthetic_graphs=8 if args.quick else 0,
                steps=args.steps,
                target_budget=targets,
                workdir=tmp,
                checkpoint_every=args.steps,
                log_every=1,
                eval_every=0,
                pe_cache_dir="auto",
            )
            gp.pretrain(cfg, progress=False, log_stream=None)
            logged = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").open()]
            model_cfg, params = load_pretrained_graphfm(Path(tmp) / "model")
    finally:
        gp.make_train_step = capture.make
    step, (state, batch, key) = capture.step, capture.args
    executed = _flops(step.lower(state, batch, key).compile())
    micro = jax.tree.map(lambda x: x[0, 0], batch)  # [accum, devices, ...] -> one bucket
    flops = model_flops(GraphFM(model_cfg), params, micro, model_cfg) * np.prod(
        np.asarray(batch.target_mask).shape[:2]
    )
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    dense = dense_flops_per_s()
    rows = int(np.asarray(batch.group_sizes).sum())
    decoded = int(np.asarray(batch.target_mask).sum())
    e2e = [r["tokens_per_s"] for r in logged if "tokens_per_s" in r][1:]  # the first compiles
    return {
        "model": model,
        "target_budget": targets,
        "node_rows": int(np.asarray(batch.features).shape[-2]),
        "real_rows": rows,
        "decoded_targets": decoded,
        "step_s": sec,
        "tokens_per_s": rows / sec,
        "targets_per_s": decoded / sec,
        "end_to_end_tokens_per_s": statistics.median(e2e) if e2e else float("nan"),
        "executed_flops_per_step": executed,
        "model_flops_per_step": flops,
        "achieved_flops_per_s": flops / sec,
        "dense_flops_per_s": dense,
        "fraction_of_dense": flops / sec / dense,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | targets/bucket | step (ms) | tokens/s | targets/s | end-to-end tokens/s | "
        "executed GFLOP/step | model GFLOP/step | model GFLOP/s | dense matmul GFLOP/s | "
        "fraction of dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target_budget']} | {1e3 * r['step_s']:.0f} | "
            f"{r['tokens_per_s']:,.0f} | {r['targets_per_s']:,.0f} | "
            f"{r['end_to_end_tokens_per_s']:,.0f} | {r['executed_flops_per_step'] / 1e9:.2f} | "
            f"{r['model_flops_per_step'] / 1e9:.2f} | "
            f"{r['achieved_flops_per_s'] / 1e9:.1f} | {r['dense_flops_per_s'] / 1e9:.1f} | "
            f"{100 * r['fraction_of_dense']:.0f} % |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="small,medium")
    ap.add_argument("--targets", default="256", help="target budgets per bucket (comma list)")
    ap.add_argument("--steps", type=int, default=6, help="pretraining steps per row")
    ap.add_argument("--repeats", type=int, default=5, help="timed re-runs of the step")
    ap.add_argument("--quick", action="store_true", help="synthetic SBM corpus (no ../shared)")
    ap.add_argument("--out", help="write the table (.md) and the numbers (.json) here")
    args = ap.parse_args(argv)
    if not args.quick and not SHARED.is_dir():
        print(f"{SHARED} is absent: use --quick for the synthetic corpus", file=sys.stderr)
        return 1
    rows = []
    for model in args.models.split(","):
        for targets in [int(t) for t in args.targets.split(",")]:
            rows.append(measure(model, targets, args))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(f"\njax {jax.__version__}, {jax.devices()[0].platform}\n\n{text}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text + "\n")
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
