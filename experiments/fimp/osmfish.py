"""FIMP on the real osmFISH mouse somatosensory cortex (Codeluppi et al. 2018): masked gene
expression prediction and cell-type classification, against a no-graph FIMP, the GNN baselines
(GCN, GraphSAGE, GAT, GIN, GPS), a no-graph MLP and trivial predictors (per-gene training mean /
majority class), on the same split.

    python experiments/fimp/osmfish.py                      # all tasks and models, 2 seeds
    python experiments/fimp/osmfish.py --models gcn sage gat gin gps   # only these; merged
    python experiments/fimp/osmfish.py --models fimp-scgpt --scgpt DIR  # a converted scGPT
    python experiments/fimp/osmfish.py --models fimp-scgpt --scgpt fixture --seeds 0

FIMP-scGPT (``fimp-scgpt``) needs ``--scgpt``: a ``jaxfm convert scgpt`` output directory
(osmFISH's mouse symbols are matched case-insensitively to its vocabulary), or ``fixture``: the
shipped random-init scGPT fixture (``../shared/fixtures/scgpt_small_torch``), converted here.
That fixture's 200-gene vocabulary holds none of osmFISH's genes, so ``fixture`` also writes a
*surrogate* vocabulary that assigns the 33 osmFISH genes to the fixture's first 33 gene ids: the
run exercises the whole pipeline (convert -> gene mapping -> grafted FIMP-scGPT -> train -> test
metrics), but its numbers are those of a random-init model, not of pretrained scGPT.

Writes ``results.json`` (every run) and ``results.md`` (mean ± std over seeds) to ``--out``.
Runs already in ``--out/results.json`` for other (task, model) pairs are kept, so a
subset of models can be (re)run and merged into the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxfm.fimp.data import DataOptions, prepare_fimp_data
from jaxfm.ops import metrics as M
from jaxfm.train.fimp import RunConfig, train_fimp
from jaxfm.train.optim import OptimizerConfig

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = (
    REPO.parent / "shared/datasets/spatial-datasets/data/2018_osmFISH_SScortex/raw_data/"
    "osmFISH_SScortex_mouse_all_cells.loom"
)
# fimp: the default FIMP (self loops through their own message creator); fimp-sharedself: one
# creator for self loops and neighbours (the node's own message weighs 1/(degree+1) in the mean);
# fimp-nograph: self loops only.
METRICS = {"celltype": ("accuracy", "macro_f1"), "expression": ("mse", "r2")}
FIMP_MODELS = ("fimp", "fimp-sharedself", "fimp-nograph", "fimp-scgpt")
GNN_MODELS = ("gcn", "sage", "gat", "gin", "gps")
MODELS = (*FIMP_MODELS, *GNN_MODELS, "mlp", "trivial")  # also the table's row order
DEFAULT_MODELS = [m for m in MODELS if m != "fimp-scgpt"]  # fimp-scgpt needs --scgpt
SCGPT_FIXTURE = REPO.parent / "shared/fixtures/scgpt_small_torch"


def scgpt_checkpoint(choice: str, data: str, workdir: Path) -> str:
    """The converted scGPT directory for ``--scgpt`` (``fixture``: converted + surrogate vocab)."""
    if choice != "fixture":
        if not (Path(choice) / "config.json").is_file():
            raise SystemExit(f"--scgpt {choice}: not a `jaxfm convert scgpt` output directory")
        return choice
    from converters.cli import main as convert
    from jaxfm.foundation.scgpt import load_vocab
    from jaxfm.model_dir import write_json_atomic

    out = workdir / "scgpt_fixture_surrogate"
    if not SCGPT_FIXTURE.is_dir():
        raise SystemExit(f"--scgpt fixture: {SCGPT_FIXTURE} is absent (needs ../shared)")
    if not (out / "config.json").is_file() and convert(["scgpt", str(SCGPT_FIXTURE), str(out)]):
        raise SystemExit(f"converting {SCGPT_FIXTURE} failed (see above)")
    genes = prepare_fimp_data("celltype", data, DataOptions(max_genes=64)).metadata["gene_names"]
    vocab = load_vocab(out)
    symbols = sorted((s for s in vocab if not s.startswith("<")), key=lambda s: vocab[s])
    surrogate = {s: i for s, i in vocab.items() if s.startswith("<")}
    surrogate.update({str(g): vocab[s] for g, s in zip(genes, symbols, strict=False)})
    write_json_atomic(out / "vocab.json", surrogate)
    return str(out)


def data_options(knn: int) -> DataOptions:
    """One split for every model (data seed 0); model seeds vary."""
    return DataOptions(max_genes=64, knn=knn, mask_rate=0.8, seed=0)


def run_config(task: str, model: str, seed: int, args, *, scgpt=None, overrides=None) -> RunConfig:
    """The run of ``model`` (a FIMP model name or a baseline) on ``task`` with the settings in
    ``args`` (``data``, ``variant``, ``epochs``, ``patience``, ``batch_size``, ``lr``, ``knn``).
    ``overrides`` adds FIMPConfig overrides (FIMP models) to those the model name implies."""
    fimp = model in FIMP_MODELS
    base = {"separate_self": model in ("fimp", "fimp-scgpt")} if fimp else {}
    return RunConfig(
        workdir=None,  # many runs: results go to --out
        task=task,
        model="fimp" if fimp else model,
        data=args.data,
        variant=args.variant,
        overrides={**base, **(overrides or {})},
        data_options=dataclasses.replace(
            data_options(args.knn), graph="none" if model == "fimp-nograph" else "knn"
        ),
        optimizer=OptimizerConfig(name="adamw", learning_rate=args.lr, weight_decay=1e-4),
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        seed=seed,
        init="scgpt" if model == "fimp-scgpt" else "scratch",
        checkpoint=scgpt if model == "fimp-scgpt" else None,
    )


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The data and training settings :func:`run_config` reads (shared with
    ``osmfish_study.py``)."""
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--knn", type=int, default=6)


def data_exists(path: str) -> bool:
    """Whether the osmFISH file is there (else says so on stderr)."""
    if Path(path).exists():
        return True
    print(f"osmFISH file not found: {path} (pass --data)", file=sys.stderr)
    return False


def trivial_baseline(task: str, data: str, opts: DataOptions) -> dict:
    """Per-gene training-mean predictor (expression) or majority class (celltype)."""
    fd = prepare_fimp_data(task, data, opts)
    nodes, train, test = fd.graphs[0].nodes, fd.splits["train"], fd.splits["test"]
    if task == "celltype":
        labels = nodes["label"]
        majority = np.bincount(labels[train], minlength=fd.num_classes).argmax()
        logits = np.eye(fd.num_classes)[np.full(len(test), majority)]
        m = np.ones(len(test), bool)
        return {
            "accuracy": float(M.accuracy(logits, labels[test], m)),
            "macro_f1": float(M.macro_f1(logits, labels[test], m)),
        }
    ids, vals, tok = nodes["gene_ids"], nodes["target_values"], nodes["token_mask"]
    g = fd.tokenizer.num_genes
    tr = tok[train]
    sums = np.bincount(ids[train][tr], weights=vals[train][tr], minlength=g)
    cnt = np.bincount(ids[train][tr], minlength=g)
    gene_mean = sums / np.maximum(cnt, 1)
    pred = gene_mean[ids[test]]
    mask = nodes["value_mask"][test] & tok[test]
    return {
        "mse": float(M.masked_mse(pred, vals[test], mask)),
        "r2": float(M.r2_score(pred, vals[test], mask)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=["celltype", "expression"])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=MODELS)
    p.add_argument(
        "--scgpt",
        help="fimp-scgpt's checkpoint: a `jaxfm convert scgpt` directory, or `fixture`",
    )
    p.add_argument("--workdir", default=str(REPO / "runs/osmfish"), help="converted checkpoints")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--variant", default="tiny")
    add_training_arguments(p)
    p.add_argument("--out", default=str(REPO / "experiments/results/fimp_osmfish"))
    args = p.parse_args(argv)
    if not data_exists(args.data):
        return 2
    if "fimp-scgpt" in args.models and not args.scgpt:
        p.error("--models fimp-scgpt needs --scgpt DIR (a converted scGPT) or --scgpt fixture")
    scgpt = scgpt_checkpoint(args.scgpt, args.data, Path(args.workdir)) if args.scgpt else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = _previous_runs(out, args.tasks, args.models)
    for task in args.tasks:
        opts = data_options(args.knn)
        for model in args.models:
            for seed in args.seeds:
                t0 = time.perf_counter()
                if model == "trivial":
                    test = trivial_baseline(task, args.data, opts)
                    val, extra = None, {}
                else:
                    run = run_config(task, model, seed, args, scgpt=scgpt)
                    res = train_fimp(run, log_stream=None, progress=True)
                    test, val = res["test"], res["val"]
                    extra = {
                        "best_epoch": res["best_epoch"],
                        "num_params": res["num_params"],
                        "num_edges": res["num_edges"],
                        "split_sizes": res["split_sizes"],
                    }
                    if res.get("pretrained"):  # checkpoint, layers, gene mapping report
                        extra["pretrained"] = res["pretrained"]
                rec = {
                    "task": task,
                    "model": model,
                    "seed": seed,
                    "test": test,
                    "val": val,
                    "seconds": round(time.perf_counter() - t0, 1),
                    **extra,
                }
                print(json.dumps(rec), flush=True)
                runs.append(rec)
                (out / "results.json").write_text(json.dumps(runs, indent=2))
                if model == "trivial":
                    break  # deterministic: one seed is enough
    lines = _table(runs)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _previous_runs(out: Path, tasks, models) -> list[dict]:
    """Runs of an earlier invocation that this one does not redo (other tasks or models)."""
    path = out / "results.json"
    if not path.is_file():
        return []
    return [
        r
        for r in json.loads(path.read_text())
        if r["task"] not in tasks or r["model"] not in models
    ]


def _table(runs: list[dict]) -> list[str]:
    """Markdown rows, mean ± std of the test metrics over seeds, models in :data:`MODELS` order."""
    lines = [
        "| task | model | " + " | ".join(["metric 1", "metric 2"]) + " | seeds | s/run |",
        "|---|---|---|---|---|---|",
    ]
    tasks = [t for t in METRICS if any(r["task"] == t for r in runs)]
    for task in tasks:
        for model in MODELS:
            rs = [r for r in runs if r["task"] == task and r["model"] == model]
            if not rs:
                continue
            cells = []
            for m in METRICS[task]:
                v = np.array([r["test"][m] for r in rs])
                cells.append(f"{m} {v.mean():.4f} ± {v.std():.4f}")
            secs = np.mean([r["seconds"] for r in rs])
            lines.append(f"| {task} | {model} | {cells[0]} | {cells[1]} | {len(rs)} | {secs:.0f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
