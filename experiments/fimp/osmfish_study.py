"""Why FIMP-base trails the MLP and the GNNs on osmFISH masked expression (issue 14, part 3).

    python experiments/fimp/osmfish_study.py                      # every variant, seed 0
    python experiments/fimp/osmfish_study.py --variants dim_128 sage_h32 --seeds 0 1

Each variant changes one thing against ``fimp`` (FIMP-base ``tiny``: D = 32, 2 heads, 1 hop,
linear value encoder, concatenated gene ⊕ value tokens, self loops through their own creator,
30 epochs of AdamW at a constant 3e-3, early stopping on validation MSE with patience 6), on the
data, split and masks of ``osmfish.py`` (4,839 labelled cells, 33 genes, 80 % of each cell's
expressed genes masked, 6-NN graph). The questions and the variants that answer them:

- budget: ``epochs_10``, ``epochs_100`` (patience 10), the same model for other lengths;
- capacity: ``dim_64``, ``dim_128`` (width), ``layers_2`` (2 hops, as the GNNs have), ``small``
  (the preset: D = 128, 2 hops, 4 heads, dropout 0.1);
- tokenization: ``value_mlp`` (a 1 -> 64 -> D/2 MLP encodes each value instead of one Dense),
  ``sum_tokens`` (gene + value embeddings summed at full width, scGPT's way, not concatenated);
  ``value_mlp_100`` (the value MLP and the 100-epoch budget together);
- the self path: ``sharedself`` (one creator and one mean for self loops and neighbours),
  ``nograph`` (self loops only: the per-cell model);
- COMBINE: ``no_combine_mlp`` (no MLP after the message);
- the baselines at matched capacity and reach: ``mlp`` and ``sage`` (hidden 128, 2 hops, as in
  ``osmfish.py``), ``sage_h32`` (hidden 32, FIMP tiny's width), ``sage_d1`` (1 hop), and
  ``mlp_100`` / ``sage_100`` (the 100-epoch budget).

Every finished (variant, seed) row is written to ``--out/results.json`` at once (atomically) and
skipped when the command is run again, so an interrupted study resumes where it stopped; a run
stopped by a signal is not stored. ``results.md`` and ``val_curves.png`` (validation R² per
epoch of every run) are rebuilt from all stored rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from osmfish import add_training_arguments, data_exists, run_config

from jaxfm.model_dir import write_json_atomic
from jaxfm.train.fimp import train_fimp

REPO = Path(__file__).resolve().parents[2]
# name -> (model of osmfish.py, what changes, FIMPConfig overrides, RunConfig / args changes)
VARIANTS: dict[str, tuple[str, str, dict, dict]] = {
    "fimp": ("fimp", "nothing: FIMP-base tiny, 30 epochs", {}, {}),
    "epochs_10": ("fimp", "10 epochs", {}, {"epochs": 10}),
    "epochs_100": ("fimp", "100 epochs, patience 10", {}, {"epochs": 100, "patience": 10}),
    "dim_64": ("fimp", "D = 64", {"dim": 64}, {}),
    "dim_128": ("fimp", "D = 128", {"dim": 128}, {}),
    "layers_2": ("fimp", "2 FIMP layers (2 hops)", {"num_layers": 2}, {}),
    "small": ("fimp", "preset small: D 128, 2 hops, 4 heads, drop 0.1", {}, {"variant": "small"}),
    "value_mlp": ("fimp", "value MLP 1 -> 64 -> D/2", {"tokenizer": {"value_hidden": 64}}, {}),
    "value_mlp_100": (
        "fimp",
        "value MLP and 100 epochs, patience 10",
        {"tokenizer": {"value_hidden": 64}},
        {"epochs": 100, "patience": 10},
    ),
    "sum_tokens": ("fimp", "gene + value summed, width D", {"tokenizer": {"combine": "sum"}}, {}),
    "no_combine_mlp": ("fimp", "no COMBINE MLP", {"combine_mlp": False}, {}),
    "sharedself": ("fimp-sharedself", "self loops share the neighbours' creator and mean", {}, {}),
    "nograph": ("fimp-nograph", "self loops only (no neighbours)", {}, {}),
    "mlp": ("mlp", "baseline MLP, hidden 128", {}, {}),
    "sage": ("sage", "baseline GraphSAGE, hidden 128, 2 hops", {}, {}),
    "mlp_100": ("mlp", "MLP, 100 epochs, patience 10", {}, {"epochs": 100, "patience": 10}),
    "sage_100": ("sage", "GraphSAGE, 100 epochs, patience 10", {}, {"epochs": 100, "patience": 10}),
    "sage_h32": ("sage", "GraphSAGE, hidden 32", {}, {"baseline_hidden": 32}),
    "sage_d1": ("sage", "GraphSAGE, 1 hop", {}, {"baseline_depth": 1}),
}
_ARGS = ("epochs", "patience", "variant")  # changes that go through osmfish.run_config's args


def make_run(name: str, seed: int, args):
    """The RunConfig of variant ``name`` with model seed ``seed``."""
    model, _, overrides, changes = VARIANTS[name]
    a = argparse.Namespace(**{**vars(args), **{k: v for k, v in changes.items() if k in _ARGS}})
    run = run_config("expression", model, seed, a, overrides=overrides)
    rest = {k: v for k, v in changes.items() if k not in _ARGS}
    return dataclasses.replace(run, **rest)


def summarize(rows: list[dict]) -> list[str]:
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    base = by.get("fimp")
    base_r2 = np.mean([r["test"]["r2"] for r in base]) if base else None
    lines = [
        "osmFISH masked expression (80 % of each cell's expressed genes masked), test cells, "
        "best-validation parameters; mean ± std over seeds. Δ R² = variant − fimp.",
        "",
        "| variant | what changes | test R² | Δ R² | test MSE | best epoch | epochs run | "
        "params | seeds | s/run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        rs = by.get(name)
        if not rs:
            continue
        r2 = np.array([r["test"]["r2"] for r in rs])
        mse = np.array([r["test"]["mse"] for r in rs])
        delta = "" if base_r2 is None or name == "fimp" else f"{r2.mean() - base_r2:+.3f}"
        best = "/".join(str(r["best_epoch"] + 1) for r in rs)
        ran = "/".join(str(len(r["val_r2"])) for r in rs)
        lines.append(
            f"| {name} | {VARIANTS[name][1]} | {r2.mean():.3f} ± {r2.std():.3f} | {delta} | "
            f"{mse.mean():.3f} | {best} | {ran} | {rs[0]['num_params']:,} | {len(rs)} | "
            f"{np.mean([r['seconds'] for r in rs]):.0f} |"
        )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors
    names = [n for n in VARIANTS if any(r["variant"] == n for r in rows)]
    for r in rows:
        i = names.index(r["variant"])
        baseline = VARIANTS[r["variant"]][0] in ("mlp", "sage")
        ax.plot(
            range(1, len(r["val_r2"]) + 1),
            r["val_r2"],
            color=colors[i % len(colors)],
            ls="--" if baseline else "-",
            lw=1.2 if r["seed"] else 1.8,
            label=f"{r['variant']} (seed {r['seed']})",
        )
    top = max(max(r["val_r2"]) for r in rows)
    ax.set_ylim(0.0, top + 0.05)  # the first epochs' negative R² would flatten the rest
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation R² (masked genes)")
    ax.set_title("osmFISH masked expression: FIMP variants (solid), baselines (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--variant", default="tiny", help=argparse.SUPPRESS)  # set per variant
    add_training_arguments(p)
    p.add_argument("--out", default=str(REPO / "experiments/results/fimp_osmfish_study"))
    args = p.parse_args(argv)
    if not data_exists(args.data):
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["variant"], r["seed"]) for r in rows}
    for name in args.variants:
        for seed in args.seeds:
            if (name, seed) in done:
                print(f"{name} seed {seed}: stored, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            res = train_fimp(make_run(name, seed, args), log_stream=None, progress=True)
            if res["preempted"]:
                print(f"{name} seed {seed}: stopped by a signal; not stored", file=sys.stderr)
                return 1
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "test": res["test"],
                    "val": res["val"],
                    "best_epoch": res["best_epoch"],
                    "val_r2": [h["val_r2"] for h in res["history"]],
                    "num_params": res["num_params"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            write_json_atomic(path, rows)
            print(json.dumps({k: rows[-1][k] for k in ("variant", "seed", "test")}), flush=True)
    lines = summarize(rows)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "val_curves.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
