"""FIMP fMRI reconstruction (FIMP paper, Table 4) on synthetic recordings over the real A424 atlas
region coordinates: one graph per recording, 424 regions as nodes, a kNN graph over the region
coordinates, masked-patch reconstruction scored by MSE and R² on the masked patches.

Models: FIMP-base (mask token, as in the paper), the no-graph MLP and the GNN baselines (GCN,
GraphSAGE, GAT, GIN, GPS), each baseline with the paper's three fillings of the masked values in
its input (appendix B.3): random noise, the region's mean, linear interpolation in time. The
fillings alone, used as predictions (``fill-only``), are the no-learning reference.

    python experiments/fimp/fmri.py                          # everything, 1 seed (~12 min, 2 cores)
    python experiments/fimp/fmri.py --models gcn --fills mean interp   # a subset; merged
    python experiments/fimp/fmri.py --models fimp-brainlm --brainlm fixture   # FIMP-BrainLM

FIMP-BrainLM (``fimp-brainlm``) needs ``--brainlm``: a ``jaxfm convert brainlm`` output directory,
or ``fixture``: the shipped random-init BrainLM fixture (``../shared/fixtures/brainlm_small``),
converted here. With the fixture the run exercises the whole pipeline (convert -> grafted
BrainLM tokenizer + Nystromformer message layers -> train -> test metrics), but its numbers are
those of a random-init 2-layer, width-32 model, not of pretrained BrainLM.

Writes ``results.json`` (every run) and ``results.md`` (mean ± std over seeds, the paper's
numbers beside) to ``--out``. Runs already there for other (model, fill) pairs are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxfm.baselines.node_mlp import fill_masked
from jaxfm.fimp.data import DataOptions, prepare_fimp_data
from jaxfm.ops import metrics as M
from jaxfm.train.fimp import RunConfig, train_fimp
from jaxfm.train.optim import OptimizerConfig

REPO = Path(__file__).resolve().parents[2]
GNN_MODELS = ("gcn", "sage", "gat", "gin", "gps")
MODELS = ("fimp", "fimp-brainlm", *GNN_MODELS, "mlp", "fill-only")  # the table's row order
RUN_ORDER = ("fill-only", "mlp", *GNN_MODELS, "fimp")  # cheapest first; fimp-brainlm on request
FIMP_MODELS = ("fimp", "fimp-brainlm")
BRAINLM_FIXTURE = REPO.parent / "shared/fixtures/brainlm_small"
FILLS = ("noise", "mean", "interp")
# FIMP paper Table 4 (UK Biobank, 424 regions, 320 timepoints): test MSE, R².
PAPER = {
    ("gcn", "noise"): (0.554, 0.189),
    ("gcn", "mean"): (0.513, 0.248),
    ("gcn", "interp"): (0.535, 0.217),
    ("sage", "noise"): (0.534, 0.218),
    ("sage", "mean"): (0.464, 0.320),
    ("sage", "interp"): (0.500, 0.268),
    ("gat", "noise"): (0.548, 0.197),
    ("gat", "mean"): (0.505, 0.260),
    ("gat", "interp"): (0.527, 0.229),
    ("gin", "noise"): (0.564, 0.174),
    ("gin", "mean"): (0.533, 0.220),
    ("gin", "interp"): (0.559, 0.181),
    ("gps", "noise"): (0.577, 0.154),
    ("gps", "mean"): (0.547, 0.198),
    ("gps", "interp"): (0.557, 0.184),
    ("fimp", "mask token"): (0.288, 0.578),
    ("fimp-brainlm", "mask token"): (0.267, 0.606),
}


def brainlm_checkpoint(choice: str, workdir: Path) -> str:
    """The converted BrainLM directory for ``--brainlm`` (``fixture``: converted here)."""
    if choice != "fixture":
        if not (Path(choice) / "config.json").is_file():
            raise SystemExit(f"--brainlm {choice}: not a `jaxfm convert brainlm` output directory")
        return choice
    from converters.cli import main as convert

    if not BRAINLM_FIXTURE.is_dir():
        raise SystemExit(f"--brainlm fixture: {BRAINLM_FIXTURE} is absent (needs ../shared)")
    out = workdir / "brainlm_fixture"
    if not (out / "config.json").is_file() and convert(["brainlm", str(BRAINLM_FIXTURE), str(out)]):
        raise SystemExit(f"converting {BRAINLM_FIXTURE} failed (see above)")
    return str(out)


def fill_only(opts: DataOptions, fill: str) -> dict:
    """The filling itself as the prediction of the masked patches of the test recordings."""
    fd = prepare_fimp_data("fmri", "synthetic", opts)
    p = fd.tokenizer.patch_size
    preds, targets, masks = [], [], []
    for i in fd.splits["test"]:
        nodes = fd.graphs[i].nodes
        signal, pmask = nodes["signal"], nodes["patch_mask"]  # [V, T], [V, P]
        hidden = np.repeat(pmask, p, axis=1)  # [V, T]
        pred = fill_masked(jnp.asarray(signal), jnp.asarray(~hidden), fill)
        preds.append(np.asarray(pred)), targets.append(signal), masks.append(hidden)
    pred, target, mask = (np.concatenate(x) for x in (preds, targets, masks))
    return {
        "mse": float(M.masked_mse(pred, target, mask)),
        "r2": float(M.r2_score(pred, target, mask)),
        "count": int(mask.sum()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=list(RUN_ORDER), choices=MODELS)
    p.add_argument("--fills", nargs="+", default=list(FILLS), choices=FILLS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num-recordings", type=int, default=64)
    p.add_argument("--num-timepoints", type=int, default=160)
    p.add_argument("--mask-rate", type=float, default=0.5)
    p.add_argument("--knn", type=int, default=6)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4, help="recordings per batch")
    p.add_argument("--hidden", type=int, default=64, help="baselines' width")
    p.add_argument("--fimp-batch-size", type=int, help="FIMP only (default: --batch-size)")
    p.add_argument("--fimp-epochs", type=int, help="FIMP only (default: --epochs)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", default=str(REPO / "experiments/results/fimp_fmri"))
    p.add_argument("--brainlm", help="fimp-brainlm's checkpoint: a converted BrainLM, or `fixture`")
    p.add_argument("--workdir", default=str(REPO / "runs/fmri"), help="converted checkpoints")
    args = p.parse_args(argv)
    if "fimp-brainlm" in args.models and not args.brainlm:
        p.error(
            "--models fimp-brainlm needs --brainlm DIR (a converted BrainLM) or --brainlm fixture"
        )
    brainlm = brainlm_checkpoint(args.brainlm, Path(args.workdir)) if args.brainlm else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = DataOptions(
        num_recordings=args.num_recordings,
        num_timepoints=args.num_timepoints,
        mask_rate=args.mask_rate,
        knn=args.knn,
        graph="knn",
        seed=0,  # one data set and split for every model; model seeds vary
    )
    fimp_bs = args.fimp_batch_size or args.batch_size
    fimp_ep = args.fimp_epochs or args.epochs
    token = "mask token"
    if (fimp_bs, fimp_ep) != (args.batch_size, args.epochs):
        token = f"mask token ({fimp_bs} rec/batch, {fimp_ep} epochs)"
    todo = [(m, f) for m in args.models for f in ((token,) if m in FIMP_MODELS else args.fills)]
    runs = _previous_runs(out, todo)
    t_all = time.perf_counter()
    for model, fill in todo:
        for seed in args.seeds:
            t0 = time.perf_counter()
            if model == "fill-only":
                test, val, extra = fill_only(opts, fill), None, {}
            else:
                res = train_fimp(
                    RunConfig(
                        workdir=None,  # many runs: results go to --out
                        task="fmri",
                        model="fimp" if model in FIMP_MODELS else model,
                        variant="tiny",
                        data_options=opts,
                        optimizer=OptimizerConfig(
                            name="adamw", learning_rate=args.lr, weight_decay=1e-4
                        ),
                        epochs=fimp_ep if model in FIMP_MODELS else args.epochs,
                        patience=args.patience,
                        batch_size=fimp_bs if model in FIMP_MODELS else args.batch_size,
                        seed=seed,
                        baseline_hidden=args.hidden,
                        fill="zero" if model in FIMP_MODELS else fill,
                        init="brainlm" if model == "fimp-brainlm" else "scratch",
                        checkpoint=brainlm if model == "fimp-brainlm" else None,
                    ),
                    log_stream=sys.stderr,  # one JSON line per epoch
                    progress=False,
                )
                test, val = res["test"], res["val"]
                extra = {
                    "best_epoch": res["best_epoch"],
                    "epochs_run": len(res["history"]),
                    "num_params": res["num_params"],
                    "split_sizes": res["split_sizes"],
                }
                if res.get("pretrained"):
                    extra["pretrained"] = res["pretrained"]
            rec = {
                "model": model,
                "fill": fill,
                "seed": seed,
                "test": test,
                "val": val,
                "seconds": round(time.perf_counter() - t0, 1),
                "settings": {k: v for k, v in vars(args).items() if k not in ("out", "models")},
                **extra,
            }
            print(json.dumps(rec), flush=True)
            runs.append(rec)
            (out / "results.json").write_text(json.dumps(runs, indent=2))
            if model == "fill-only":
                break  # deterministic
    lines = _table(runs)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"total_seconds": round(time.perf_counter() - t_all, 1)}))
    return 0


def _previous_runs(out: Path, todo) -> list[dict]:
    """Runs of an earlier invocation that this one does not redo."""
    path = out / "results.json"
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()) if (r["model"], r["fill"]) not in todo]


def _table(runs: list[dict]) -> list[str]:
    lines = [
        "| model | masked values | MSE (ours) | R² (ours) | seeds | s/run | MSE (paper) "
        "| R² (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for fill in dict.fromkeys(r["fill"] for r in runs if r["model"] == model):
            rs = [r for r in runs if r["model"] == model and r["fill"] == fill]
            if not rs:
                continue
            cells = []
            for m in ("mse", "r2"):
                v = np.array([r["test"][m] for r in rs])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
            secs = np.mean([r["seconds"] for r in rs])
            paper = PAPER.get((model, "mask token" if model in FIMP_MODELS else fill), ("–", "–"))
            lines.append(
                f"| {model} | {fill} | {cells[0]} | {cells[1]} | {len(rs)} | {secs:.0f} "
                f"| {paper[0]} | {paper[1]} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
