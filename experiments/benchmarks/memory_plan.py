"""Per-device memory plan of GraphFM pretraining: small / medium / large at several FSDP sizes.

For each size preset and each ``fsdp`` mesh size (default 1, 8, 64; ``data = model = 1``) one
row, per device:

* **computed** from the parameter shapes (``jax.eval_shape``, nothing allocated) and the
  sharding rules of :mod:`jaxfm.train.sharding` (a dimension the mesh axis does not divide stays
  replicated, so small models stop shrinking at large ``fsdp``):

  - ``params``: float32 master weights, the shard one device stores;
  - ``optimizer``: the LAMB state of ``optax.lamb`` as ``jaxfm pretrain`` builds it (two float32
    moments ``mu`` / ``nu``, i.e. 2x params, plus a step count), the shard one device stores;
  - ``gathered``: the full float32 copy of every sharded parameter that the step all-gathers for
    the forward/backward pass (transient; 0 at ``fsdp=1``);
  - ``grads``: one full-size float32 gradient tree, what a bucket's backward pass produces before
    the reduce-scatter (transient). With more than one bucket per device per step (``--accum``
    > 1) the accumulator of ``jaxfm.train.step`` holds a second full-size copy (the step
    reduce-scatters once, after accumulating).

* **measured**: ``activations``, XLA's temporary buffers (``temp_size_in_bytes`` of
  ``jax.jit(value_and_grad(loss)).lower(...).compile().memory_analysis()``) for the loss and
  gradient of ONE packed bucket of the default budget (``PretrainConfig``: 2048 node rows, 16
  graph slots, 256 targets, 8 neighbours), compiled, never run, on the CPU backend, in float32
  and in bfloat16 compute (``graphfm_config(name, dtype="bfloat16")``; parameters stay
  float32). Every data-parallel device packs its own bucket of the same budget, so this does not
  depend on ``fsdp``. On CPU the packed cross attention takes the ``segment`` layout (dense
  ``[G K, T]`` scores); on GPU ``auto`` picks ``bucketed`` (cuDNN flash attention for bf16), which
  does not materialize those scores, so the GPU bf16 figure of the encoder is lower. The node
  decoder's ``[Q, H, 1+m+K, 1+m+K]`` scores (dense key mask, XLA path) are materialized on every
  backend and dominate at ``medium`` / ``large`` (``--fit-targets`` measures a second target
  budget and splits the activations into a fixed and a per-target part). XLA:CPU keeps the large
  intermediates of bf16 compute in float32 (its buffer assignment shows ``f32`` scores and FFN
  activations), so the CPU bf16 figure is an upper bound of what a GPU/TPU holds in bf16.

``peak`` = params + optimizer + gathered + grads + activations, an estimate (XLA may overlap or
reuse some of these buffers). The dataset table (which sizes the per-dataset feature MLPs and
heads) is ``--datasets`` entries of ``feature_dim`` inputs and ``--classes`` classes; the default
52 is the pretraining corpus of ``experiments/README.md`` (28 real graph families + 24 SBM).

    python experiments/benchmarks/memory_plan.py                    # ~2-4 min on 2 CPU cores
    python experiments/benchmarks/memory_plan.py --configs large --fsdp 16,256 --out /tmp/plan

Prints a Markdown table and writes ``memory_plan.json`` and ``memory_plan.md`` to
``experiments/results/benchmarks/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxfm.graphfm import DatasetSpec, GraphFM, GraphFMConfig, graphfm_config, loss_and_metrics
from jaxfm.graphfm.encoder import resolve_attention_path
from jaxfm.graphfm.summary import dummy_batch, parameter_shapes
from jaxfm.train.graphfm_pretrain import PretrainConfig
from jaxfm.train.sharding import bytes_per_device, specs_for

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20


def _dataset_table(num: int, classes: int, feature_dim: int) -> tuple[DatasetSpec, ...]:
    return tuple(
        DatasetSpec(name=f"dataset_{i:03d}", num_features=feature_dim, num_classes=classes)
        for i in range(num)
    )


def _gathered_bytes(tree, mesh_shape: dict[str, int]) -> int:
    """Full bytes of the leaves that are sharded (the all-gather's output buffers)."""
    specs = jax.tree.leaves(
        specs_for(tree, mesh_shape), is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)
    )
    total = 0
    for leaf, spec in zip(jax.tree.leaves(tree), specs, strict=True):
        if any(axis is not None for axis in spec):
            total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def _optimizer_state_shapes(params, pretrain: PretrainConfig):
    """``jax.eval_shape`` of the LAMB state ``jaxfm pretrain`` creates (clip and row scaling are
    stateless)."""
    opt = pretrain.optimizer
    tx = optax.lamb(opt.learning_rate, weight_decay=opt.weight_decay)
    return jax.eval_shape(tx.init, params)


def state_bytes(config: GraphFMConfig, fsdp: int, pretrain: PretrainConfig) -> dict:
    """Computed bytes of parameters / optimizer state / gathered params / gradients per device.

    Args:
      config: the model config with its dataset table.
      fsdp: size of the ``fsdp`` mesh axis (``data = model = 1``).
      pretrain: the run whose optimizer is planned.

    Returns:
      ``{"parameters", "params_total", "params", "optimizer_total", "optimizer", "gathered",
      "grads"}``: a parameter count and bytes (``*_total`` unsharded, the others per device).
    """
    mesh_shape = {"data": 1, "fsdp": fsdp, "model": 1}
    params = parameter_shapes(config)
    p_total, p_dev = bytes_per_device(params, mesh_shape)
    o_total, o_dev = bytes_per_device(_optimizer_state_shapes(params, pretrain), mesh_shape)
    return {
        "parameters": int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))),
        "params_total": p_total,
        "params": p_dev,
        "optimizer_total": o_total,
        "optimizer": o_dev,
        "gathered": _gathered_bytes(params, mesh_shape) if fsdp > 1 else 0,
        "grads": p_total,
    }


def activation_bytes(config: GraphFMConfig, pretrain: PretrainConfig) -> dict:
    """Measured XLA buffers of loss + gradient for one bucket (compiled on the default backend).

    Returns:
      ``{"temp", "arguments", "outputs", "compile_s"}`` in bytes (``outputs`` is the gradient
      tree plus the loss and metrics: a check on the computed ``grads``).
    """
    model = GraphFM(config)

    def loss(params, batch, key):
        out = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": key})
        return loss_and_metrics(out, batch, config)

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    batch = dummy_batch(
        config, rows=pretrain.node_budget, graphs=pretrain.graph_budget,
        targets=pretrain.target_budget,
    )  # fmt: skip
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), batch)
    t0 = time.perf_counter()
    compiled = grad_fn.lower(parameter_shapes(config), batch, jax.random.key(0)).compile()
    seconds = time.perf_counter() - t0
    stats = compiled.memory_analysis()
    return {
        "temp": int(stats.temp_size_in_bytes),
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "compile_s": round(seconds, 1),
    }


def memory_plan(
    configs,
    fsdp_sizes,
    *,
    datasets: int = 52,
    classes: int = 40,
    fit_targets: int = 64,
    pretrain: PretrainConfig | None = None,
    log=print,
) -> dict:
    """The plan (see the module docstring) as a JSON-able dict.

    Args:
      configs: size presets (``small`` / ``medium`` / ``large``).
      fsdp_sizes: ``fsdp`` mesh sizes, one row each.
      datasets: entries of the dataset table; ``classes``: classes of each.
      fit_targets: a second, smaller target budget Q' (0: none); activations are also measured
        there and fitted as ``fixed + per_target * Q`` (the per-target part is the node decoder).
      pretrain: the run (budgets, optimizer); default ``PretrainConfig()``.
      log: progress messages.
    """
    pretrain = pretrain or PretrainConfig()
    if not 0 <= fit_targets < pretrain.target_budget:
        raise ValueError(
            f"memory_plan: fit_targets must be in [0, target_budget={pretrain.target_budget}), "
            f"got {fit_targets}"
        )
    out = {
        "budget": {
            "node_rows": pretrain.node_budget,
            "graph_slots": pretrain.graph_budget,
            "targets": pretrain.target_budget,
            "neighbors": pretrain.neighbors,
        },
        "dataset_table": {"datasets": datasets, "classes": classes},
        "fit_targets": fit_targets,
        "measured": ["activations_float32", "activations_bfloat16", "activations.*.temp*"],
        "computed": ["params", "optimizer", "gathered", "grads", "peak_*"],
        "backend": jax.default_backend(),
        "attention_layout": resolve_attention_path("auto"),
        "jax": jax.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "units": "bytes",
        "rows": [],
        "activations": {},
    }
    for name in configs:
        base = graphfm_config(name, num_neighbors=pretrain.neighbors)
        specs = _dataset_table(datasets, classes, base.feature_dim)
        acts = {}
        for dtype in ("float32", "bfloat16"):
            cfg = dataclasses.replace(base, dtype=dtype, datasets=specs)
            acts[dtype] = a = activation_bytes(cfg, pretrain)
            if fit_targets:
                small_q = dataclasses.replace(pretrain, target_budget=fit_targets)
                a["temp_at_fit_targets"] = activation_bytes(cfg, small_q)["temp"]
                per_target = (a["temp"] - a["temp_at_fit_targets"]) / (
                    pretrain.target_budget - fit_targets
                )
                a["per_target"] = round(per_target)
                a["fixed"] = round(a["temp"] - per_target * pretrain.target_budget)
            log(f"{name} {dtype}: activations {a['temp'] / MIB:,.1f} MiB ({a['compile_s']} s)")
        out["activations"][name] = acts
        cfg = dataclasses.replace(base, datasets=specs)
        for fsdp in fsdp_sizes:
            st = state_bytes(cfg, fsdp, pretrain)
            fixed = st["params"] + st["optimizer"] + st["gathered"] + st["grads"]
            row = {"config": name, "fsdp": fsdp, **st}
            row["activations_float32"] = acts["float32"]["temp"]
            row["activations_bfloat16"] = acts["bfloat16"]["temp"]
            row["peak_float32"] = fixed + acts["float32"]["temp"]
            row["peak_bfloat16"] = fixed + acts["bfloat16"]["temp"]
            out["rows"].append(row)
    return out


def _mib(b: int) -> str:
    return f"{b / MIB:,.1f}"


def format_table(plan: dict) -> str:
    """The Markdown tables of :func:`memory_plan` (MiB per device)."""
    lines = [
        "| config | parameters | fsdp | params | optimizer | gathered (transient) "
        "| grads (transient) | activations fp32 | activations bf16 | peak fp32 | peak bf16 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in plan["rows"]:
        cells = [r["config"], f"{r['parameters'] / 1e6:.2f}M", str(r["fsdp"])]
        keys = ("params", "optimizer", "gathered", "grads", "activations_float32")
        cells += [_mib(r[k]) for k in keys]
        cells += [_mib(r["activations_bfloat16"]), _mib(r["peak_float32"])]
        cells += [_mib(r["peak_bfloat16"])]
        lines.append("| " + " | ".join(cells) + " |")
    b = plan["budget"]
    d = plan["dataset_table"]
    notes = [
        "",
        f"MiB per device. One bucket = {b['node_rows']} node rows, {b['graph_slots']} graph slots, "
        f"{b['targets']} targets x {b['neighbors']} neighbours; dataset table: {d['datasets']} "
        f"datasets x {d['classes']} classes. **Measured**: activations (XLA temp buffers of "
        f"loss + grad of one bucket, compiled on {plan['backend']}, jax {plan['jax']}, "
        f"`{plan['attention_layout']}` cross-attention layout). **Computed**: params "
        "(fp32, stored shard), optimizer (LAMB mu + nu, stored shard), gathered (full fp32 "
        "copy of the sharded parameters during forward/backward), grads (full fp32, before "
        "reduce-scatter) and peak (their sum, an estimate). XLA:CPU keeps the big bf16 "
        "intermediates in f32, so the bf16 activations are an upper bound for GPU/TPU.",
    ]
    q, q2 = b["targets"], plan["fit_targets"]
    if q2:
        notes += [
            "",
            f"Activations against the target budget Q (measured at Q = {q} and Q = {q2}, fitted "
            "as fixed + per-target x Q; the per-target part is the node decoder's "
            "`[Q, 1+m+K, D]` sequences):",
            "",
            f"| config | compute | Q = {q} | Q = {q2} | per target | fixed (Q = 0) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, acts in plan["activations"].items():
            for dtype, a in acts.items():
                cells = [name, dtype, _mib(a["temp"]), _mib(a["temp_at_fit_targets"])]
                cells += [f"{a['per_target'] / MIB:,.2f}", _mib(a["fixed"])]
                notes.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + notes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="small,medium,large")
    ap.add_argument("--fsdp", default="1,8,64", help="fsdp mesh sizes, comma-separated")
    ap.add_argument("--datasets", type=int, default=52, help="entries of the dataset table")
    ap.add_argument("--classes", type=int, default=40, help="classes per dataset (head width)")
    ap.add_argument(
        "--fit-targets", type=int, default=64,
        help="second target budget for the activations fit (0: skip)",
    )  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    plan = memory_plan(
        [c.strip() for c in args.configs.split(",")],
        [int(f) for f in args.fsdp.split(",")],
        datasets=args.datasets,
        classes=args.classes,
        fit_targets=args.fit_targets,
    )
    plan["seconds"] = round(time.perf_counter() - t0, 1)
    table = format_table(plan)
    print(table)
    print(f"\n({plan['seconds']} s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    (out / "memory_plan.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
