"""Graph classification on MUTAG and PROTEINS (10-fold CV): GIN and GCN baselines vs GraphFM-MFT.

One command (from the repository root, after the README install and a pretrained model, e.g.
the one ``experiments/graphfm/evaluate.py`` writes):

    python experiments/graphfm/graph_classification.py --model-dir runs/graphfm_eval/model
    python experiments/graphfm/graph_classification.py --quick     # smoke: 1 fold, 2 epochs

Every learner sees the same 10 stratified folds (test part k, validation part k + 1, training
the rest; ``jaxfm.data.graph_batches.stratified_folds``) and reports test accuracy at
its best validation epoch. Epoch budgets (``EPOCHS``) keep the whole run near 15 minutes on 2
shared CPU cores; they are far below the papers' (GIN: 350 epochs), see the reading in
``experiments/README.md``.

Writes ``experiments/results/graph_classification/{results.json,results.md}`` after every
model, with the GraphFM paper's Table A7 numbers and the GIN paper's numbers beside ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TU = REPO.parent / "shared" / "datasets" / "TUDataset" / "data" / "TUDataset"
OUT = REPO / "experiments" / "results" / "graph_classification"
DATASETS = ("MUTAG", "PROTEINS")
#: Epochs per (dataset, model): fewer for PROTEINS (6x the graphs) and for GraphFM (slower step).
EPOCHS = {
    "MUTAG": {"gin": 60, "gcn": 60, "graphfm-mft": 20},
    "PROTEINS": {"gin": 25, "gcn": 25, "graphfm-mft": 6},
}
# Mean ± std test accuracy (%), 10-fold CV. GraphFM paper Table A7 (MFT with a learnable graph
# decoder; the baseline rows of that table are empty in our copy of the paper). GIN paper (Xu et
# al., ICLR 2019, Table 1): GIN-0 and GCN, 350 epochs, the epoch picked on the 10-fold-averaged
# *test* curve (an optimistic protocol; ours selects on a held-out validation part per fold).
PAPER = {
    "graphfm-mft": {"MUTAG": "93.8 ± 6.6", "PROTEINS": "76.4 ± 3.7", "source": "GraphFM A7"},
    "gin": {"MUTAG": "89.4 ± 5.6", "PROTEINS": "76.2 ± 2.8", "source": "GIN paper (GIN-0)"},
    "gcn": {"MUTAG": "85.6 ± 5.8", "PROTEINS": "76.0 ± 3.2", "source": "GIN paper"},
}
LABELS = {"gin": "GIN", "gcn": "GCN", "graphfm-mft": "GraphFM-MFT"}


def _fmt(r: dict) -> str:
    return f"{100 * r['test_accuracy_mean']:.1f} ± {100 * r['test_accuracy_std']:.1f}"


def _write(rows: list[dict], out: Path, command: str, runtime: float) -> None:
    from jaxfm.model_dir import write_json_atomic

    write_json_atomic(out / "results.json", {"command": command, "runtime_s": runtime,
                                             "rows": rows})  # fmt: skip
    by = {(r["dataset"], r["model"]): r for r in rows}
    lines = [
        "# Graph classification, 10-fold CV (test accuracy %, mean ± std over folds)",
        "",
        f"Command: `{command}` ({runtime / 60:.1f} min on this machine).",
        "",
        "| Model | MUTAG (ours) | MUTAG (paper) | PROTEINS (ours) | PROTEINS (paper) | "
        "epochs (MUTAG / PROTEINS) | paper source |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, label in LABELS.items():
        ours = [by.get((d, model)) for d in DATASETS]
        eps = " / ".join(str(r["epochs"]) if r else "–" for r in ours)
        cells = []
        for d, r in zip(DATASETS, ours, strict=True):
            cells += [_fmt(r) if r else "–", PAPER[model][d]]
        lines.append(f"| {label} | {' | '.join(cells)} | {eps} | {PAPER[model]['source']} |")
    lines += [
        "",
        "Ours: folds = `stratified_folds(y, 10, seed=0)`; test accuracy at the epoch of best "
        "validation accuracy (validation = the next fold's test part). Baselines: 4 layers, "
        "hidden 64, sum readout over layers, dropout 0.5, Adam lr 0.01 halved every 50 epochs, "
        "batch 32. GraphFM-MFT: new feature MLP + graph decoder + graph head trained (AdamW "
        "1e-3, wd 1e-2), encoder frozen. The GIN paper's numbers pick the epoch on the averaged "
        "test curve and train 350 epochs; ours use far fewer epochs (column) to fit the time "
        "budget.",
        "",
        "Per-fold test accuracy:",
        "",
    ]
    for r in rows:
        accs = ", ".join(f"{100 * f['test_accuracy']:.0f}" for f in r["per_fold"])
        lines.append(f"- {r['dataset']} {LABELS[r['model']]}: {accs}")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default="runs/graphfm_eval/model")
    ap.add_argument("--models", default="gin,gcn,graphfm-mft")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--folds", type=int, default=10, help="run the first N of the 10 folds")
    ap.add_argument("--quick", action="store_true", help="1 fold, 2 epochs (smoke test)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    from jaxfm.data.registry import load_dataset
    from jaxfm.train.graph_classification import finetune_graphfm_graph, train_graph_baseline

    models = args.models.split(",")
    if "graphfm-mft" in models and not (Path(args.model_dir) / "config.json").is_file():
        ap.error(f"--model-dir {args.model_dir}: no pretrained GraphFM model there")
    folds = list(range(1 if args.quick else args.folds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/graphfm/graph_classification.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    rows, start = [], time.time()
    for name in args.datasets.split(","):
        ds = load_dataset(TU / name / "raw")
        for model in models:
            epochs = 2 if args.quick else EPOCHS[name][model]
            t = time.time()
            if model == "graphfm-mft":
                r = finetune_graphfm_graph(args.model_dir, ds, folds, epochs)
            else:
                r = train_graph_baseline(ds, model, folds=folds, epochs=epochs)
            r.update(dataset=name, model=model, runtime_s=time.time() - t)
            rows.append(r)
            print(json.dumps({k: r[k] for k in ("dataset", "model", "epochs", "runtime_s")})
                  + f" test {_fmt(r)}", flush=True)  # fmt: skip
            _write(rows, out, command, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
