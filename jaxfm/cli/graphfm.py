"""`jaxfm pretrain`, `jaxfm finetune`, `jaxfm embed`, `jaxfm graphfm summary`.

jaxfm pretrain [--config NAME] [--data PATH ...] [--steps N] [--workdir DIR] [--resume]
               [--mesh data=4,fsdp=2] [--accum N] [--checkpoint-every N]
               [--coordinator HOST:PORT --num-processes N --process-id I]
jaxfm finetune --mode {mft,nft} --model-dir DIR --data PATH [--splits all] [--output-json F]
jaxfm finetune --resume --workdir DIR       (repeats the run recorded in DIR/run.json)
jaxfm embed --model-dir DIR --data PATH --out FILE.npy
jaxfm graphfm summary --config NAME [--mesh fsdp=8] [--explain-attention [--dtype bfloat16]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from jaxfm.cli.fields import observability

__all__ = ["add_parsers"]


PREEMPTED_EXIT = 143  # 128 + SIGTERM: a scheduler sees the job as stopped, not finished


# flags that are part of a pretraining run's identity -> their PretrainConfig path
_PRETRAIN_IDENTITY = {
    "model": ("--config", "model"),
    "data": ("--data", "data"),
    "synthetic_graphs": ("--synthetic", "synthetic_graphs"),
    "exclude": ("--exclude", "exclude"),
    "corpus": ("--corpus", "corpus"),
    "steps": ("--steps", "steps"),
    "accum": ("--accum", "accum"),
    "devices": ("--devices", "devices"),
    "node_budget": ("--node-budget", "node_budget"),
    "target_budget": ("--target-budget", "target_budget"),
    "lr": ("--lr", "optimizer.learning_rate"),
    "dtype": ("--dtype", "model_overrides.dtype"),
    "seed": ("--seed", "seed"),
}
# settings a resume may change (run.json's "outputs")
PRETRAIN_OUTPUTS = ("checkpoint_every", "keep", "log_every", "mesh", "eval_every", "eval_buckets")


def _pretrain_config(args):
    """The :class:`PretrainConfig` the flags describe."""
    from jaxfm.train.graphfm_pretrain import PretrainConfig
    from jaxfm.train.optim import OptimizerConfig

    defaults = PretrainConfig()
    opt = dataclasses.replace(
        defaults.optimizer, learning_rate=args.lr or defaults.optimizer.learning_rate
    )
    return PretrainConfig(
        model=args.model,
        data=tuple(args.data or ()),
        synthetic_graphs=args.synthetic_graphs,
        exclude=tuple(args.exclude or ()),
        corpus=args.corpus,
        steps=args.steps,
        accum=args.accum,
        devices=args.devices,
        mesh=args.mesh,
        node_budget=args.node_budget,
        target_budget=args.target_budget,
        keep=args.keep,
        optimizer=OptimizerConfig(**dataclasses.asdict(opt)),
        workdir=args.workdir,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        eval_every=args.eval_every,
        seed=args.seed,
        pe_cache_dir=args.pe_cache_dir,
        model_overrides={"dtype": args.dtype} if args.dtype else {},
    )


def _resumed_pretrain_config(args, cfg):
    """With ``--resume`` and ``WORKDIR/run.json``: the recorded run (typed flags must match)."""
    from pathlib import Path

    from jaxfm.cli.resume import check_given, config_from_dict, read_run_json
    from jaxfm.train.graphfm_pretrain import PretrainConfig

    run_json = Path(args.workdir) / "run.json"
    if not (args.resume and run_json.exists()):
        return cfg
    identity, outputs = read_run_json(args.workdir, "pretrain")
    identity.pop("datasets", None)
    recorded = config_from_dict(PretrainConfig, identity)
    given = getattr(args, "given", set())
    typed = {flag: path for dest, (flag, path) in _PRETRAIN_IDENTITY.items() if dest in given}
    check_given(typed, cfg, recorded, run_json)
    kept = {
        k: getattr(cfg, k) if k in given or k not in outputs else outputs[k]
        for k in PRETRAIN_OUTPUTS
    }
    return dataclasses.replace(
        recorded, workdir=args.workdir, pe_cache_dir=cfg.pe_cache_dir, **kept
    )


def _pretrain(args) -> int:
    from jaxfm.train.distributed import initialize

    # before anything touches a device: several processes form one mesh
    initialize(args.coordinator, args.num_processes, args.process_id)

    from jaxfm.train.graphfm_pretrain import pretrain

    cfg = _resumed_pretrain_config(args, _pretrain_config(args))
    summary = pretrain(
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        log_stream=sys.stdout,
        progress=not args.no_progress,
        **observability(args),
    )
    from jaxfm.train.distributed import is_main_process

    if is_main_process():
        out = sys.stderr if args.quiet_summary else sys.stdout
        print(json.dumps({"summary": summary}), file=out, flush=True)
    return PREEMPTED_EXIT if summary["preempted"] else 0


_FINETUNE_FIELDS = [
    "mode",
    "checkpoint",
    "dataset",
    "num_random_splits",
    "epochs",
    "batch_targets",
    "learning_rate",
    "weight_decay",
    "unfreeze_start",
    "unfreeze_every",
    "lr_decay",
    "feature_dim",
    "feature_hidden",
    "feature_init_gain",
    "input_dropout",
    "context_nodes",
    "test_on_whole_graph",
    "seed",
    "workdir",
]


# finetune flags with another spelling than --field-name (the first one is canonical)
_FINETUNE_FLAGS = {
    "num_random_splits": ("--random-splits",),
    "learning_rate": ("--lr",),
    "checkpoint": ("--model-dir", "--checkpoint"),
    "dataset": ("--data", "--dataset"),
}
# settings a finetune resume may change (run.json's "outputs"); --splits may change too: a
# resume may add splits (finished ones are read back)
FINETUNE_OUTPUTS = ("output_json",)


def _finetune_flag(path: str) -> str:
    return _FINETUNE_FLAGS.get(path, ("--" + path.replace("_", "-"),))[0]


def _finetune_config(args):
    """``(config, record)``: the :class:`FinetuneConfig` to run and the ``run.json`` to write.

    With ``--resume`` and ``WORKDIR/run.json`` the config is the recorded run (``--workdir``
    alone repeats it); a typed flag that differs from it is refused, naming both values, except
    ``--splits`` and ``--output-json``, which a resume may change.
    """
    from pathlib import Path

    from jaxfm.cli.fields import config_kwargs
    from jaxfm.cli.resume import check_given, config_from_dict, read_run_json
    from jaxfm.train.graphfm_finetune import FinetuneConfig

    splits = None if args.splits == "all" else [int(s) for s in args.splits.split(",")]
    from_flags = {**config_kwargs(args, FinetuneConfig, _FINETUNE_FIELDS), "splits": splits}
    outputs = {"output_json": args.output_json}
    run_json = Path(args.workdir) / "run.json" if args.workdir else None
    if args.resume and run_json is not None and run_json.exists():
        identity, recorded_outputs = read_run_json(args.workdir, "finetune")
        recorded = config_from_dict(FinetuneConfig, identity)
        given = getattr(args, "given", set())
        typed = {
            _finetune_flag(path): path
            for path in _FINETUNE_FIELDS
            if path in given and path != "workdir"
        }
        check_given(typed, from_flags, recorded, run_json)
        outputs = {
            k: outputs[k] if k in given else recorded_outputs.get(k, outputs[k])
            for k in FINETUNE_OUTPUTS
        }
        splits = from_flags["splits"] if "splits" in given else recorded.splits
        cfg = dataclasses.replace(recorded, workdir=args.workdir, splits=splits)
    else:
        missing = [_finetune_flag(k) for k in ("checkpoint", "dataset") if from_flags[k] is None]
        if missing:
            why = f"; {run_json} does not exist to read them from" if args.resume else ""
            raise ValueError(
                f"finetune: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                "required (`--resume --workdir DIR` alone "
                f"repeats the run recorded in DIR/run.json{why})"
            )
        cfg = FinetuneConfig(**from_flags)
    identity = json.loads(json.dumps(dataclasses.asdict(cfg)))
    identity.pop("workdir")
    return cfg, {"finetune": identity, "outputs": outputs}


def _finetune(args) -> int:
    from pathlib import Path

    from jaxfm.train.checkpoint import write_run_json
    from jaxfm.train.graphfm_finetune import finetune

    cfg, record = _finetune_config(args)
    if cfg.workdir is not None and (
        args.overwrite or not (Path(cfg.workdir) / "run.json").exists()
    ):
        write_run_json(cfg.workdir, record)  # before training: a killed run can be resumed
    result = finetune(
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **observability(args),
    )
    if cfg.workdir is not None:
        write_run_json(cfg.workdir, record)
    output_json = record["outputs"]["output_json"]
    if output_json:
        from jaxfm.model_dir import write_json_atomic

        write_json_atomic(output_json, result)
    print(
        json.dumps(
            {k: result[k] for k in ("dataset", "mode", "test_accuracy_mean", "test_accuracy_std")}
        )
    )
    return PREEMPTED_EXIT if result["preempted"] else 0


def _embed(args) -> int:
    from jaxfm.train.graphfm_finetune import embed_graph

    out = embed_graph(args.checkpoint, args.dataset, args.out)
    print(json.dumps(out))
    return 0


def _sharded_bytes(config, mesh: str) -> dict:
    """Parameter and LAMB-state bytes, total and per device, under the sharding rules."""
    import math

    from jaxfm.graphfm.summary import parameter_shapes
    from jaxfm.train.sharding import bytes_per_device, parse_mesh

    if "-1" in mesh:
        raise ValueError(f"--mesh {mesh!r}: give every axis size explicitly for a summary")
    sizes = parse_mesh(mesh, math.prod(int(x.split("=")[1]) for x in mesh.split(",")))
    total, per_device = bytes_per_device(parameter_shapes(config), sizes)
    return {
        "mesh": sizes,
        "param_bytes": total,
        "param_bytes_per_device": per_device,
        "optimizer_bytes_per_device": 2 * per_device,  # LAMB: two fp32 moments per parameter
        "per_device_fraction": round(per_device / total, 4),
    }


def _format_sharding(s: dict) -> str:
    mib = 2**20
    return "\n".join(
        [
            "",
            f"| sharded over mesh {s['mesh']} | MiB |",
            "|---|---:|",
            f"| parameters, total (fp32) | {s['param_bytes'] / mib:,.2f} |",
            f"| parameters per device | {s['param_bytes_per_device'] / mib:,.2f} |",
            f"| optimizer state per device (LAMB, 2 moments) "
            f"| {s['optimizer_bytes_per_device'] / mib:,.2f} |",
            f"| per device / total | {s['per_device_fraction']:.4f} |",
        ]
    )


def _summary(args) -> int:
    from jaxfm.graphfm import graphfm_config
    from jaxfm.graphfm.summary import format_summary, parameter_summary

    config = graphfm_config(args.config)
    summary = parameter_summary(config, name=args.config)
    print(format_summary(summary))
    if args.mesh:
        summary["sharding"] = _sharded_bytes(config, args.mesh)
        print(_format_sharding(summary["sharding"]))
    if args.explain_attention:
        from jaxfm.ops.explain import format_explanation
        from jaxfm.train.explain import explain_train_step

        summary["attention"] = explain_train_step(config, dtype=args.dtype)
        print(format_explanation(summary["attention"]))
    if args.json:
        print(json.dumps(summary))
    return 0


def add_parsers(sub) -> None:
    """Registers the GraphFM commands."""
    from jaxfm.cli.fields import add_field, add_observability_flags
    from jaxfm.train.graphfm_pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="GraphFM multi-graph pretraining (no arguments: small model, synthetic SBM corpus)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_field(p, PretrainConfig, "model", "--config", "--variant", "--model")
    p.add_argument(
        "--data",
        "--dataset",
        dest="data",
        action="append",
        help="dataset file or folder (scanned recursively); repeatable. Default: synthetic only",
    )
    add_field(p, PretrainConfig, "synthetic_graphs", "--synthetic", "--synthetic-graphs")
    p.add_argument(
        "--exclude",
        action="append",
        help="regex of dataset names to keep out of pretraining (evaluation graphs); repeatable",
    )
    from jaxfm.data.corpus_presets import CORPUS_PRESETS

    add_field(p, PretrainConfig, "corpus", choices=sorted(CORPUS_PRESETS))
    add_field(p, PretrainConfig, "steps")
    p.add_argument("--accum", type=int, default=1, help="gradient-accumulation buckets per step")
    p.add_argument(
        "--mesh",
        help="device mesh, e.g. data=4,fsdp=2 (axes data, fsdp, model; -1 = rest). "
        "Default: every device on fsdp",
    )
    p.add_argument(
        "--devices",
        type=int,
        help="buckets per accumulation step (default: the mesh's data x fsdp; a multiple of it)",
    )
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process, explicit)")
    p.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    p.add_argument("--process-id", type=int, help="this process (with --coordinator)")
    add_field(p, PretrainConfig, "node_budget")
    add_field(p, PretrainConfig, "target_budget")
    add_field(p, PretrainConfig, "keep")
    p.add_argument("--lr", type=float, help="peak learning rate (LAMB)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    add_field(p, PretrainConfig, "workdir")
    add_field(p, PretrainConfig, "checkpoint_every")
    add_field(p, PretrainConfig, "log_every")
    add_field(p, PretrainConfig, "eval_every")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run's checkpoints in --workdir"
    )
    add_field(p, PretrainConfig, "seed")
    add_field(p, PretrainConfig, "pe_cache_dir")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--quiet-summary", action="store_true", help="summary to stderr")
    add_observability_flags(p)
    p.set_defaults(func=_pretrain)

    from jaxfm.train.graphfm_finetune import FinetuneConfig

    f = sub.add_parser(
        "finetune",
        help="MFT / NFT finetuning of a pretrained GraphFM",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    metavars = {"checkpoint": "DIR", "dataset": "PATH"}
    for path in _FINETUNE_FIELDS:
        extra = {"choices": ["mft", "nft"]} if path == "mode" else {}
        if path in metavars:  # required, checked in _finetune: --resume reads them from run.json
            extra.update(metavar=metavars[path], required=False)
        add_field(f, FinetuneConfig, path, *_FINETUNE_FLAGS.get(path, ()), **extra)
    f.add_argument(
        "--splits",
        default="all",
        help="'all' or comma-separated split indices (public splits, else seeded 60/20/20)",
    )
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue the run recorded in WORKDIR/run.json (--workdir alone repeats it; typed "
        "flags must match it); finished splits are kept",
    )
    f.add_argument("--overwrite", action="store_true", help="replace an earlier run in --workdir")
    f.add_argument("--output-json", help="also write the results (all splits) to this JSON file")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_observability_flags(f)
    f.set_defaults(func=_finetune)

    e = sub.add_parser(
        "embed",
        help="node embeddings of a graph from a pretrained GraphFM (with --model "
        "fimp-vit|fimp-scgpt|fimp-brainlm: zero-shot FIMP, see `jaxfm fimp embed -h`)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument(
        "--model",
        default="graphfm",
        choices=["graphfm", "fimp-vit", "fimp-scgpt", "fimp-brainlm"],
        help="graphfm: a pretrained GraphFM; fimp-*: zero-shot FIMP with a converted foundation "
        "model (its options: `jaxfm fimp embed -h`)",
    )
    e.add_argument(
        "--model-dir",
        "--checkpoint",
        dest="checkpoint",
        metavar="DIR",
        required=True,
        help="model directory of `jaxfm pretrain` (WORKDIR/model; the WORKDIR works too)",
    )
    e.add_argument(
        "--data", "--dataset", dest="dataset", metavar="PATH", required=True, help="dataset file"
    )
    e.add_argument("--out", required=True, help="output .npy ([N, D] float32)")
    e.set_defaults(func=_embed)

    g = sub.add_parser("graphfm", help="GraphFM utilities")
    gsub = g.add_subparsers(dest="graphfm_command", required=True)
    s = gsub.add_parser(
        "summary",
        help="parameter counts of a config (shared trunk vs total)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--config", "--variant", default="small", help="GraphFM size preset")
    s.add_argument("--json", action="store_true", help="also print the summary as JSON")
    s.add_argument("--mesh", help="also bytes per device on this mesh, e.g. fsdp=8")
    s.add_argument(
        "--explain-attention",
        action="store_true",
        help="lower one train step; report each attention call's implementation",
    )
    s.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype to explain")
    s.set_defaults(func=_summary)
