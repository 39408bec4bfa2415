"""`jaxfm fimp ...`: FIMP training, zero-shot embeddings and attention maps.

jaxfm fimp train --task {expression,celltype,fmri,image} --data PATH|synthetic
                 [--model {fimp,mlp,gcn,sage,gat,gin,gps}] [--fill {zero,noise,mean,interp}]
                 [--init {scratch,vit,scgpt,genept,brainlm} --model-dir OUT|TABLE] [...]
jaxfm fimp embed --model {fimp-vit,fimp-scgpt,fimp-brainlm} --model-dir OUT --data PATH|synthetic
                 --out FILE.npy [...]
jaxfm fimp attention-map --model-dir DIR [--data PATH] --out DIR [...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jaxfm.cli.fields import add_field, add_observability_flags, config_kwargs, observability

__all__ = ["add_parser"]


_DATA_FIELDS = [
    "data_options.graph",
    "data_options.knn",
    "data_options.radius_miles",
    "data_options.max_genes",
    "data_options.mask_rate",
    "data_options.patch_mask_rate",
    "data_options.num_nodes",
    "data_options.num_recordings",
    "data_options.num_timepoints",
    "data_options.image_size",
    "data_options.seed",
]
_RUN_FIELDS = [
    "task",
    "model",
    "data",
    "variant",
    "baseline_hidden",
    "baseline_depth",
    "fill",
    "init",
    "checkpoint",
    "freeze_pretrained",
    "pretrained_layers",
    "epochs",
    "patience",
    "batch_size",
    "recordings_per_batch",
    "max_neighbors",
    "mesh",
    "accum",
    "devices",
    "seed",
    "workdir",
    "save_dir",
    "output_json",
    "optimizer.name",
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "optimizer.schedule",
    "optimizer.warmup_steps",
    "optimizer.clip_norm",
]


def _data_options(args):
    from jaxfm.train.fimp import RunConfig

    return config_kwargs(args, RunConfig, _DATA_FIELDS)["data_options"]


# FIMPConfig overrides given as their own flags: dest -> overrides key
_OVERRIDE_FLAGS = {
    "num_layers": "num_layers",
    "dim": "dim",
    "edge_chunk_size": "edge_chunk_size",
    "dropout": "dropout",
    "dtype": "dtype",
    "shared_self": "separate_self",
    "value_hidden": "tokenizer.value_hidden",
}
_OUTPUT_FIELDS = ("save_dir", "output_json")


def _resumed_run(args, run):
    """With ``--resume`` and ``WORKDIR/run.json``: the recorded run (typed flags must match)."""
    from jaxfm.cli.resume import check_given, config_from_dict, read_run_json
    from jaxfm.train.fimp import RunConfig

    if not (args.resume and args.workdir and (Path(args.workdir) / "run.json").exists()):
        return run
    run_json = Path(args.workdir) / "run.json"
    identity, outputs = read_run_json(args.workdir, "fimp_train")
    recorded = config_from_dict(RunConfig, identity)
    given = getattr(args, "given", set())
    typed = {}
    for path in [*_RUN_FIELDS, *_DATA_FIELDS]:
        if path.replace(".", "__") in given and path not in ("workdir", *_OUTPUT_FIELDS):
            typed["--" + path.split(".")[-1].replace("_", "-")] = path
    for dest, key in _OVERRIDE_FLAGS.items():
        if dest in given:
            typed["--" + dest.replace("_", "-")] = f"overrides.{key}"
    check_given(typed, run, recorded, run_json)
    kept = {
        k: getattr(run, k) if k in given or k not in outputs else outputs[k] for k in _OUTPUT_FIELDS
    }
    return dataclasses.replace(recorded, workdir=args.workdir, **kept)


def _fimp_train(args) -> int:
    from jaxfm.train.fimp import RunConfig, train_fimp

    if args.task is None and not args.resume:
        raise ValueError(
            "fimp train: --task is required (with --resume it is read from WORKDIR/run.json)"
        )
    overrides = {}
    for name in ("num_layers", "dim", "edge_chunk_size", "dropout"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.shared_self:
        overrides["separate_self"] = False
    if args.value_hidden is not None:
        overrides["tokenizer"] = {"value_hidden": args.value_hidden}
    kwargs = config_kwargs(args, RunConfig, _RUN_FIELDS)
    if kwargs["task"] is None:  # --resume without --task: a placeholder until run.json is read
        kwargs["task"] = "expression"
        if not (Path(args.workdir or ".") / "run.json").exists():
            raise ValueError(
                f"fimp train --resume: no run.json in --workdir {args.workdir}; pass --task "
                "and the run's other flags"
            )
    run = RunConfig(**kwargs, data_options=_data_options(args), overrides=overrides)
    run = _resumed_run(args, run)
    results = train_fimp(
        run,
        resume=args.resume,
        overwrite=args.overwrite,
        log_stream=sys.stdout if args.log_epochs else None,
        progress=not args.no_progress,
        **observability(args),
    )
    summary = {
        k: results[k]
        for k in (
            "task",
            "model",
            "dataset",
            "init",
            "pretrained",
            "num_params",
            "num_nodes",
            "num_edges",
            "best_epoch",
            "val",
            "test",
            "preempted",
            "seconds",
        )
    }
    print(json.dumps({"summary": summary}))
    return 143 if results["preempted"] else 0


def _fimp_embed(args) -> int:
    from jaxfm.fimp.embed import embed_zero_shot

    res = embed_zero_shot(
        args.model,
        args.checkpoint,
        data=args.data,
        data_options=_data_options(args),
        out=args.out,
        edge_chunk_size=args.edge_chunk_size,
    )
    print(json.dumps({"embed": res["summary"]}))
    return 0


def _add_data_arguments(t) -> None:
    from jaxfm.train.fimp import RunConfig

    for path in _DATA_FIELDS:
        flags = ("--data-seed",) if path == "data_options.seed" else ()
        choices = ["file", "knn", "none"] if path == "data_options.graph" else None
        add_field(t, RunConfig, path, *flags, **({"choices": choices} if choices else {}))


def _fimp_attention_map(args) -> int:
    from jaxfm.fimp.attention_export import export_attention_map

    out = export_attention_map(
        args.model,
        args.out,
        data=args.data,
        group_by=args.group_by,
        layer=args.layer,
        max_edges=args.max_edges,
    )
    print(json.dumps({"attention_map": out}))
    return 0


def add_parser(sub) -> None:
    """Registers `jaxfm fimp ...`."""

    fimp = sub.add_parser("fimp", help="FIMP: foundation-informed message passing")
    fsub = fimp.add_subparsers(dest="fimp_command", required=True)

    from jaxfm.train.fimp import MODELS, RunConfig

    t = fsub.add_parser(
        "train",
        help="train FIMP on a task; prints JSON metrics",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    choices = {
        "task": ["expression", "celltype", "fmri", "image"],
        "model": list(MODELS),
        "fill": ["zero", "noise", "mean", "interp"],
        "init": ["scratch", "vit", "scgpt", "genept", "brainlm"],
        "optimizer.name": ["adam", "adamw", "lamb", "sgd"],
        "optimizer.schedule": ["constant", "warmup_cosine", "step_decay"],
    }
    flags = {
        "variant": ("--variant", "--config"),
        "data": ("--data", "--dataset"),
        "checkpoint": ("--model-dir", "--checkpoint"),
        "baseline_hidden": ("--hidden", "--baseline-hidden"),
        "baseline_depth": ("--depth", "--baseline-depth"),
        "save_dir": ("--save", "--save-dir"),
        "optimizer.name": ("--optimizer",),
        "optimizer.learning_rate": ("--lr", "--learning-rate"),
        "optimizer.weight_decay": ("--weight-decay",),
        "optimizer.schedule": ("--schedule",),
        "optimizer.warmup_steps": ("--warmup-steps",),
        "optimizer.clip_norm": ("--clip-norm",),
    }
    for path in _RUN_FIELDS:
        extra = {"choices": choices[path]} if path in choices else {}
        if path == "task":  # checked in _fimp_train: --resume reads it from run.json
            extra["required"] = False
        add_field(t, RunConfig, path, *flags.get(path, ()), **extra)
    _add_data_arguments(t)
    t.add_argument("--num-layers", type=int, help="FIMP layers (message-passing hops)")
    t.add_argument("--dim", type=int, help="token width")
    t.add_argument("--dropout", type=float, help="dropout rate (default: the variant's)")
    t.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    t.add_argument(
        "--shared-self",
        action="store_true",
        help="one message creator and one mean for self loops and neighbours (default: self "
        "loops get their own creator, H + M_self + mean M_nbr)",
    )
    t.add_argument(
        "--value-hidden",
        type=int,
        help="gene tokens: encode each expression value with a 1 -> N -> D/2 MLP (default: one "
        "Dense, the paper's eq. 5; 64 adds 0.06 R2 on osmFISH expression, experiments/README)",
    )
    t.add_argument("--edge-chunk-size", type=int, help="edges per attention chunk (memory bound)")
    t.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    t.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run's checkpoints in --workdir"
    )
    t.add_argument("--log-epochs", action="store_true", help="print one JSON line per epoch")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_observability_flags(t)
    t.set_defaults(func=_fimp_train)

    e = fsub.add_parser(
        "embed",
        help="zero-shot node embeddings from a pretrained model run in cross-node form over "
        "the node graph (no graph training); writes .npy + .json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument(
        "--model",
        required=True,
        choices=["fimp-vit", "fimp-scgpt", "fimp-brainlm"],
        help="which foundation model family runs the cross-node messages",
    )
    e.add_argument(
        "--model-dir",
        "--checkpoint",
        dest="checkpoint",
        metavar="DIR",
        required=True,
        help="model directory from `jaxfm convert`",
    )
    e.add_argument(
        "--data",
        "--dataset",
        default="synthetic",
        help="dataset file (images .npz, spatial .h5ad/.loom, fMRI .npz) or 'synthetic'",
    )
    e.add_argument("--out", required=True, help="output .npy ([N, D], or [R, V, D] for fMRI)")
    e.add_argument("--edge-chunk-size", type=int, help="edges per attention chunk (memory bound)")
    _add_data_arguments(e)
    e.set_defaults(func=_fimp_embed)

    a = fsub.add_parser(
        "attention-map",
        help="token x token cross-attention between neighbours, averaged by node "
        "group; writes .npz + heatmap .png",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument(
        "--model-dir",
        "--model",
        "--checkpoint",
        dest="model",
        metavar="DIR",
        required=True,
        help="model directory from `fimp train --save`",
    )
    a.add_argument(
        "--data",
        "--dataset",
        dest="data",
        help="dataset (default: the one the model was trained on)",
    )
    a.add_argument("--out", required=True, help="output directory")
    a.add_argument(
        "--group-by",
        default="label",
        help="node groups: 'label' (cell types / classes) or 'region' (fMRI functional "
        "groups by coordinate clusters)",
    )
    a.add_argument("--layer", type=int, default=0, help="which FIMP layer's attention")
    a.add_argument("--max-edges", type=int, help="use at most this many edges")
    a.set_defaults(func=_fimp_attention_map)
