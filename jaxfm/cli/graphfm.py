"""`jaxfm pretrain`, `jaxfm finetune`, `jaxfm embed`, `jaxfm graphfm summary`.

jaxfm pretrain [--config NAME] [--data PATH ...] [--steps N] [--workdir DIR] [--resume]
jaxfm finetune --mode {mft,nft} --checkpoint DIR --dataset PATH [--splits all] [--output-json F]
jaxfm embed --checkpoint DIR --dataset PATH --out FILE.npy
jaxfm graphfm summary --config NAME
"""

from __future__ import annotations

import dataclasses
import json
import sys

__all__ = ["add_parsers"]


def _pretrain(args) -> int:
    from jaxfm.train.graphfm_pretrain import PretrainConfig, pretrain
    from jaxfm.train.optim import OptimizerConfig

    defaults = PretrainConfig()
    opt = dataclasses.replace(
        defaults.optimizer,
        learning_rate=args.lr or defaults.optimizer.learning_rate,
        total_steps=args.steps,
        warmup_steps=min(defaults.optimizer.warmup_steps, max(args.steps // 10, 1)),
    )
    if args.steps <= opt.warmup_steps:
        opt = dataclasses.replace(opt, schedule="constant", warmup_steps=0)
    cfg = PretrainConfig(
        model=args.config,
        data=tuple(args.data or ()),
        synthetic_graphs=args.synthetic,
        exclude=tuple(args.exclude or ()),
        steps=args.steps,
        accum=args.accum,
        node_budget=args.node_budget,
        optimizer=OptimizerConfig(**dataclasses.asdict(opt)),
        workdir=args.workdir,
        checkpoint_every=args.checkpoint_every or args.steps,
        log_every=args.log_every,
        seed=args.seed,
        model_overrides={"dtype": args.dtype} if args.dtype else {},
    )
    summary = pretrain(
        cfg, resume=args.resume, log_stream=sys.stdout, progress=not args.no_progress
    )
    print(json.dumps({"summary": summary}), file=sys.stderr if args.quiet_summary else sys.stdout)
    return 0


def _finetune(args) -> int:
    from jaxfm.train.graphfm_finetune import FinetuneConfig, finetune

    splits = None if args.splits == "all" else [int(s) for s in args.splits.split(",")]
    cfg = FinetuneConfig(
        mode=args.mode,
        checkpoint=args.checkpoint,
        dataset=args.dataset,
        splits=splits,
        num_random_splits=args.random_splits,
        epochs=args.epochs,
        seed=args.seed,
    )
    result = finetune(cfg, progress=not args.no_progress)
    if args.output_json:
        from jaxfm.train.graphfm_finetune import write_json_atomic

        write_json_atomic(args.output_json, result)
    print(
        json.dumps(
            {k: result[k] for k in ("dataset", "mode", "test_accuracy_mean", "test_accuracy_std")}
        )
    )
    return 0


def _embed(args) -> int:
    from jaxfm.train.graphfm_finetune import embed_graph

    out = embed_graph(args.checkpoint, args.dataset, args.out)
    print(json.dumps(out))
    return 0


def _summary(args) -> int:
    from jaxfm.graphfm import graphfm_config
    from jaxfm.graphfm.summary import format_summary, parameter_summary

    summary = parameter_summary(graphfm_config(args.config), name=args.config)
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary))
    return 0


def add_parsers(sub) -> None:
    """Registers the GraphFM commands."""
    p = sub.add_parser(
        "pretrain",
        help="GraphFM multi-graph pretraining (no arguments: small model, synthetic SBM corpus)",
    )
    p.add_argument("--config", default="small", help="small | medium | large")
    p.add_argument(
        "--data",
        action="append",
        help="dataset file or folder (scanned recursively); repeatable. Default: synthetic only",
    )
    p.add_argument("--synthetic", type=int, default=24, help="synthetic SBM graphs to add")
    p.add_argument(
        "--exclude",
        action="append",
        help="regex of dataset names to keep out of pretraining (evaluation graphs); repeatable",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--accum", type=int, default=1, help="gradient-accumulation buckets per step")
    p.add_argument("--node-budget", type=int, default=2048, help="node rows per packed bucket")
    p.add_argument("--lr", type=float, help="peak learning rate (LAMB)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--workdir", default="runs/pretrain")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet-summary", action="store_true", help="summary to stderr")
    p.set_defaults(func=_pretrain)

    f = sub.add_parser("finetune", help="MFT / NFT finetuning of a pretrained GraphFM")
    f.add_argument("--mode", required=True, choices=["mft", "nft"])
    f.add_argument("--checkpoint", required=True, help="model directory (WORKDIR/model)")
    f.add_argument("--dataset", required=True, help="dataset file or folder")
    f.add_argument(
        "--splits",
        default="all",
        help="'all' or comma-separated split indices (public splits, else seeded 60/20/20)",
    )
    f.add_argument("--random-splits", type=int, default=5, help="seeded splits if none public")
    f.add_argument("--epochs", type=int, default=60)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--output-json")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_finetune)

    e = sub.add_parser(
        "embed",
        help="node embeddings of a graph from a pretrained GraphFM (with --model "
        "fimp-vit|fimp-scgpt|fimp-brainlm: zero-shot FIMP, see `jaxfm fimp embed -h`)",
    )
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", required=True)
    e.add_argument("--out", required=True, help="output .npy ([N, D] float32)")
    e.set_defaults(func=_embed)

    g = sub.add_parser("graphfm", help="GraphFM utilities")
    gsub = g.add_subparsers(dest="graphfm_command", required=True)
    s = gsub.add_parser("summary", help="parameter counts of a config (shared trunk vs total)")
    s.add_argument("--config", default="small")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_summary)
