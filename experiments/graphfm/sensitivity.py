"""Hyperparameter sensitivity of GraphFM-MFT vs GCN around their best settings (GraphFM Q4, Fig. 7).

For each graph, random configurations are drawn around each model's reference configuration (the
one used in ``experiments/graphfm/evaluate.py``): every hyperparameter is perturbed in log space
(learning rate and weight decay by up to 10x either way; GCN hidden width by up to 4x and dropout
uniformly in [0, 0.8]; MFT batch targets by up to 4x and epochs by up to 2x). Each configuration
is trained on the same split; we report test accuracy against the normalised L2 distance of its
log-hyperparameter vector to the reference.

    python experiments/graphfm/sensitivity.py --workdir runs/graphfm_eval --configs 8

Needs the pretrained model of ``evaluate.py`` (``WORKDIR/model``). Writes
``experiments/results/graphfm_sensitivity/{results.json,results.md,sensitivity.png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
GRAPHS = {  # one homophilic and one heterophilic graph, both kept out of pretraining
    "Computers": ("GraphData/datasets/amazon_cs.npz", 8),
    "Chameleon": ("heterophilous-graphs/data/chameleon.npz", 15),
}
MFT_REF = {"learning_rate": 3e-3, "weight_decay": 1e-2, "batch_targets": 1.0, "epochs": 1.0}
GCN_REF = {"learning_rate": 1e-2, "weight_decay": 5e-4, "hidden": 64, "dropout": 0.5}


def _draw(ref: dict, rng: np.random.Generator, spans: dict) -> dict:
    """One configuration: log-uniform factors within ``spans`` (dropout: uniform)."""
    out = {}
    for k, v in ref.items():
        if k == "dropout":
            out[k] = float(rng.uniform(0.0, 0.8))
        else:
            out[k] = float(v * np.exp(rng.uniform(-1, 1) * np.log(spans[k])))
    return out


def _distance(cfg: dict, ref: dict, spans: dict) -> float:
    """L2 norm of per-dimension deviations, each scaled to [-1, 1] by its span, / sqrt(dims)."""
    d = []
    for k, v in ref.items():
        if k == "dropout":
            d.append((cfg[k] - v) / 0.5)
        else:
            d.append(np.log(cfg[k] / v) / np.log(spans[k]))
    return float(np.linalg.norm(d) / np.sqrt(len(d)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "graphfm_eval"))
    ap.add_argument("--configs", type=int, default=8, help="random configurations per model")
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model_dir = Path(args.workdir) / "model"
    if not SHARED.is_dir() or not model_dir.is_dir():
        print(f"needs {SHARED} and a pretrained {model_dir} (evaluate.py)", file=sys.stderr)
        return 1

    from jaxfm.data.registry import load_dataset
    from jaxfm.model_dir import write_json_atomic
    from jaxfm.train.graphfm_finetune import FinetuneConfig, finetune
    from jaxfm.train.node_baselines import BaselineConfig, train_node_baseline

    rng = np.random.default_rng(args.seed)
    mft_spans = {"learning_rate": 10, "weight_decay": 10, "batch_targets": 4, "epochs": 2}
    gcn_spans = {"learning_rate": 10, "weight_decay": 10, "hidden": 4}
    out = REPO / "experiments" / "results" / "graphfm_sensitivity"
    rows = []
    t0 = time.perf_counter()
    for name in args.graphs.split(","):
        rel, epochs = GRAPHS[name]
        ds = load_dataset(SHARED / rel)
        n_train = int(ds.splits[0].train.sum()) if ds.splits else int(0.6 * ds.num_nodes)
        base_targets = int(min(2048, max(128, n_train // 8)))
        mft_cfgs = [MFT_REF] + [_draw(MFT_REF, rng, mft_spans) for _ in range(args.configs)]
        gcn_cfgs = [GCN_REF] + [_draw(GCN_REF, rng, gcn_spans) for _ in range(args.configs)]
        for i, c in enumerate(mft_cfgs):
            res = finetune(
                FinetuneConfig(
                    workdir=None,  # many runs: results go to --out
                    mode="mft",
                    checkpoint=str(model_dir),
                    dataset=str(SHARED / rel),
                    splits=[0],
                    num_random_splits=1,
                    epochs=max(2, round(epochs * c["epochs"])),
                    batch_targets=max(32, round(base_targets * c["batch_targets"])),
                    context_nodes=None,  # the whole graph, as the committed table was measured
                    learning_rate=c["learning_rate"],
                    weight_decay=c["weight_decay"],
                ),
                progress=False,
            )
            rows.append(_row(name, "MFT", i, c, _distance(c, MFT_REF, mft_spans), res))
        for i, c in enumerate(gcn_cfgs):
            res = train_node_baseline(
                ds,
                BaselineConfig(
                    model="gcn",
                    hidden=max(4, round(c["hidden"])),
                    dropout=c["dropout"],
                    learning_rate=c["learning_rate"],
                    weight_decay=c["weight_decay"],
                ),
                splits=[0],
                progress=False,
            )
            rows.append(_row(name, "GCN", i, c, _distance(c, GCN_REF, gcn_spans), res))
        write_json_atomic(out / "results.json", {"rows": rows, "args": vars(args)})
        print(json.dumps({"graph": name, "seconds": round(time.perf_counter() - t0, 1)}))
    lines = _table(rows)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "sensitivity.png")
    print("\n".join(lines))
    return 0


def _row(graph, model, i, cfg, dist, res) -> dict:
    return {"graph": graph, "model": model, "config": i, "hyperparameters": cfg,
            "distance": dist, "test_accuracy": res["test_accuracy_mean"]}  # fmt: skip


def _table(rows) -> list[str]:
    lines = [
        "| graph | model | reference acc. | mean ± std over random configs | worst | "
        "slope (acc. per unit distance) |",
        "|---|---|---|---|---|---|",
    ]
    for graph in dict.fromkeys(r["graph"] for r in rows):
        for model in ("MFT", "GCN"):
            rs = [r for r in rows if r["graph"] == graph and r["model"] == model]
            ref = next(r for r in rs if r["config"] == 0)["test_accuracy"]
            acc = np.array([r["test_accuracy"] for r in rs if r["config"] > 0])
            dist = np.array([r["distance"] for r in rs if r["config"] > 0])
            slope = np.polyfit(dist, acc, 1)[0] if len(acc) > 1 else float("nan")
            lines.append(
                f"| {graph} | {model} | {100 * ref:.2f} | {100 * acc.mean():.2f} ± "
                f"{100 * acc.std():.2f} | {100 * acc.min():.2f} | {100 * slope:.1f} |"
            )
    return lines


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graphs = list(dict.fromkeys(r["graph"] for r in rows))
    fig, axes = plt.subplots(1, len(graphs), figsize=(5 * len(graphs), 3.6), squeeze=False)
    for ax, graph in zip(axes[0], graphs, strict=True):
        for model, color in (("MFT", "tab:green"), ("GCN", "tab:blue")):
            rs = [r for r in rows if r["graph"] == graph and r["model"] == model]
            ax.scatter([r["distance"] for r in rs], [100 * r["test_accuracy"] for r in rs],
                       color=color, label=model, alpha=0.8)  # fmt: skip
            ref = next(r for r in rs if r["config"] == 0)
            ax.scatter([0], [100 * ref["test_accuracy"]], marker="*", s=200, color=color)
        ax.set_title(graph)
        ax.set_xlabel("normalised distance to the reference hyperparameters")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
