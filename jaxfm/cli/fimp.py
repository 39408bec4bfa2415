"""`jaxfm fimp ...`: FIMP training, zero-shot embeddings and attention maps.

jaxfm fimp train --task {expression,celltype,fmri,image} --data PATH|synthetic
                 [--model {fimp,mlp,gcn,sage,gat,gin,gps}] [--fill {zero,noise,mean,interp}]
                 [--init {scratch,vit,scgpt,genept,brainlm} --checkpoint OUT|TABLE] [...]
jaxfm fimp embed --model {fimp-vit,fimp-scgpt,fimp-brainlm} --checkpoint OUT --data PATH|synthetic
                 --out FILE.npy [...]
jaxfm fimp attention-map --model DIR [--data PATH] --out DIR [...]
"""

from __future__ import annotations

import json
import sys

__all__ = ["add_parser"]


def _data_options(args, task: str):
    from jaxfm.train.fimp_data import DataOptions

    return DataOptions(
        max_genes=args.max_genes,
        knn=args.knn,
        radius_miles=args.radius_miles,
        graph=args.graph,
        mask_rate=args.mask_rate
        if args.mask_rate is not None
        else (0.8 if task == "expression" else 0.5),
        num_nodes=args.num_nodes,
        num_recordings=args.num_recordings,
        image_size=args.image_size,
        seed=args.data_seed,
    )


def _fimp_train(args) -> int:
    from jaxfm.train.fimp import RunConfig, train_fimp
    from jaxfm.train.optim import OptimizerConfig

    overrides = {}
    for name in ("num_layers", "dim", "edge_chunk_size", "dropout"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.shared_self:
        overrides["separate_self"] = False
    run = RunConfig(
        task=args.task,
        model=args.model,
        baseline_hidden=args.hidden,
        baseline_depth=args.depth,
        fill=args.fill,
        data=args.data,
        variant=args.variant,
        overrides=overrides,
        data_options=_data_options(args, args.task),
        optimizer=OptimizerConfig(
            name=args.optimizer,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            schedule="warmup_cosine" if args.warmup_steps else "constant",
            warmup_steps=args.warmup_steps,
            total_steps=max(args.warmup_steps + 1, 2),
        ),
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        max_neighbors=args.max_neighbors,
        seed=args.seed,
        save_dir=args.save,
        output_json=args.output_json,
        init=args.init,
        checkpoint=args.checkpoint,
        freeze_pretrained=args.freeze_pretrained,
        pretrained_layers=args.pretrained_layers,
    )
    results = train_fimp(
        run, log_stream=sys.stdout if args.log_epochs else None, progress=not args.no_progress
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
            "seconds",
        )
    }
    print(json.dumps({"summary": summary}))
    return 0


def _fimp_embed(args) -> int:
    from jaxfm.train.fimp_embed import ZERO_SHOT_MODELS, embed_zero_shot

    task = ZERO_SHOT_MODELS[args.model][1]
    res = embed_zero_shot(
        args.model,
        args.checkpoint,
        data=args.data,
        data_options=_data_options(args, task),
        out=args.out,
        edge_chunk_size=args.edge_chunk_size,
    )
    print(json.dumps({"embed": res["summary"]}))
    return 0


def _add_data_arguments(t) -> None:
    t.add_argument(
        "--graph",
        default="file",
        choices=["file", "knn", "none"],
        help="neighbour graph: the file's own, kNN on coordinates, or none (self "
        "loops only: the no-graph ablation)",
    )
    t.add_argument("--knn", type=int, default=6, help="neighbours per node for kNN graphs")
    t.add_argument(
        "--radius-miles",
        type=float,
        help="image networks: connect images within this distance (haversine)",
    )
    t.add_argument("--max-genes", type=int, default=64, help="gene tokens sampled per cell")
    t.add_argument(
        "--mask-rate", type=float, help="masked fraction (expression default 0.8, fmri 0.5)"
    )
    t.add_argument("--num-nodes", type=int, default=1200, help="synthetic cells/images")
    t.add_argument("--num-recordings", type=int, default=60, help="synthetic fMRI recordings")
    t.add_argument(
        "--image-size",
        type=int,
        help="side of synthetic images (default 16; with --init vit the checkpoint's size)",
    )
    t.add_argument("--data-seed", type=int, default=0, help="seed of splits, gene samples, masks")


def _fimp_attention_map(args) -> int:
    from jaxfm.train.fimp_attention import export_attention_map

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

    t = fsub.add_parser("train", help="train FIMP on a task; prints JSON metrics")
    t.add_argument("--task", required=True, choices=["expression", "celltype", "fmri", "image"])
    t.add_argument(
        "--data",
        default="synthetic",
        help="dataset file (.h5ad/.loom for expression/celltype, .npz for image/fmri) "
        "or 'synthetic' (default)",
    )
    t.add_argument(
        "--model",
        default="fimp",
        choices=["fimp", "mlp", "gcn", "sage", "gat", "gin", "gps"],
        help="FIMP, or a baseline: mlp (no graph) or a GNN (GCN, GraphSAGE, GAT, GIN, GPS)",
    )
    t.add_argument("--hidden", type=int, default=128, help="baselines: hidden width")
    t.add_argument(
        "--depth", type=int, default=2, help="baselines: layers (message-passing hops for GNNs)"
    )
    t.add_argument(
        "--fill",
        default="zero",
        choices=["zero", "noise", "mean", "interp"],
        help="baselines on fmri: fill masked patches with zeros, noise, the region mean or "
        "linear interpolation in time (FIMP paper, appendix B.3)",
    )
    t.add_argument("--variant", default="tiny", help="FIMP size preset: tiny, small, base")
    t.add_argument("--num-layers", type=int, help="FIMP layers (message-passing hops)")
    t.add_argument("--dim", type=int, help="token width")
    t.add_argument("--dropout", type=float)
    t.add_argument("--dtype", choices=["float32", "bfloat16"])
    t.add_argument(
        "--shared-self",
        action="store_true",
        help="one message creator and one mean for self loops and neighbours (default: self "
        "loops get their own creator, H + M_self + mean M_nbr)",
    )
    t.add_argument("--edge-chunk-size", type=int, help="edges per attention chunk (memory bound)")
    _add_data_arguments(t)
    t.add_argument(
        "--init",
        default="scratch",
        choices=["scratch", "vit", "scgpt", "genept", "brainlm"],
        help="FIMP-base from scratch, or a pretrained variant (needs --checkpoint)",
    )
    t.add_argument(
        "--checkpoint",
        help="vit/scgpt/brainlm: a model directory from `jaxfm convert`; genept: a gene "
        "embedding table (.csv gene,v1,...; .json {gene: [..]}; .npy + gene list; .npz)",
    )
    t.add_argument(
        "--freeze-pretrained", action="store_true", help="keep the pretrained weights fixed"
    )
    t.add_argument(
        "--pretrained-layers",
        type=int,
        help="use only the first k pretrained encoder layers as the message creator",
    )
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--patience", type=int, default=5, help="early stopping on validation")
    t.add_argument(
        "--batch-size", type=int, default=128, help="seed nodes (or fMRI recordings) per batch"
    )
    t.add_argument("--max-neighbors", type=int, help="sample at most this many in-neighbours")
    t.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "lamb"])
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", help="write the best model (params + config) to this directory")
    t.add_argument("--output-json", help="write the full results (history, val, test) here")
    t.add_argument("--log-epochs", action="store_true", help="print one JSON line per epoch")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_fimp_train)

    e = fsub.add_parser(
        "embed",
        help="zero-shot node embeddings from a pretrained model run in cross-node form over "
        "the node graph (no graph training); writes .npy + .json",
    )
    e.add_argument("--model", required=True, choices=["fimp-vit", "fimp-scgpt", "fimp-brainlm"])
    e.add_argument("--checkpoint", required=True, help="model directory from `jaxfm convert`")
    e.add_argument(
        "--data",
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
    )
    a.add_argument("--model", required=True, help="model directory from `fimp train --save`")
    a.add_argument("--data", help="dataset (default: the one the model was trained on)")
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
