"""GraphFM pretraining ablations: one pretraining setting changed at a time, then MFT (issue 14).

    python experiments/graphfm/pretrain_ablations.py --update-results
    python experiments/graphfm/pretrain_ablations.py --variants targets_2048 --datasets Cornell

Each variant re-pretrains ``small`` on the paper's small corpus (``--corpus paper-small``) for the
budget curve's 3-epoch point (333 LAMB steps, the same seed, schedule and corpus) with one setting
changed, then runs MFT with the library's defaults on each evaluation graph (public splits 0-2 x
25 epochs). The ``base`` row is that 3-epoch point of ``budget_curve.py`` (same command, same
checkpoint directory), read from its results. The variants are the places where jaxfm's
pretraining deviates from the paper or leaves a value the paper does not give
(experiments/README.md, "Deviations from the paper", rows 6, 8, 11 and 12):

- ``targets_1024`` / ``targets_2048``: decoded targets per 2,048-row bucket (default 256; 2,048
  decodes every training node of the bucket), same number of steps;
- ``no_lr_scaling``: no per-dataset update scaling of rarely seen datasets' MLPs and heads;
- ``pe_4`` / ``pe_16``: Laplacian eigenvectors per node (default 8);
- ``neighbors_0`` / ``neighbors_16``: sampled neighbours in the node decoder (default 8);
- ``seed_1``: no setting changed, another pretraining seed: how far two pretraining runs of the
  same settings differ after MFT, the yardstick for the other rows.

Resumable like the budget curve: a variant's pretraining resumes from its checkpoints, every
finished (variant, graph) result is written to ``results.json`` at once and skipped next time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_curve import mft_row, pretrain_config
from evaluate import PAPER, SHARED, results_dir

REPO = Path(__file__).resolve().parents[2]
BUDGET_EPOCHS = 3  # the budget curve point every variant is compared at
VARIANTS = {
    "targets_1024": dict(target_budget=1024),
    "targets_2048": dict(target_budget=2048),
    "no_lr_scaling": dict(dataset_lr_scaling=False),
    "pe_4": dict(model_overrides={"pe_dim": 4}),
    "pe_16": dict(model_overrides={"pe_dim": 16}),
    "neighbors_0": dict(neighbors=0),
    "neighbors_16": dict(neighbors=16),
    "seed_1": dict(seed=1),
}
WHAT = {
    "base": "budget curve, 3 epochs: 256 targets/bucket, lr scaling on, k = 8, m = 8",
    "targets_1024": "1,024 decoded targets per bucket",
    "targets_2048": "2,048 decoded targets per bucket (every training row)",
    "no_lr_scaling": "no per-dataset lr scaling",
    "pe_4": "k = 4 Laplacian eigenvectors",
    "pe_16": "k = 16 Laplacian eigenvectors",
    "neighbors_0": "m = 0 decoder neighbours (latents + self only)",
    "neighbors_16": "m = 16 decoder neighbours",
    "seed_1": "nothing: pretraining seed 1 (data order, init; the noise floor)",
}


def write_table(out: Path, results: dict, base: dict, graphs: list[str]) -> None:
    rows = {"base": base, **{v: {} for v in VARIANTS}}
    for key, r in results.items():
        variant, g = key.split("/")
        rows[variant][g] = r
    lines = [
        f"`small` on `paper-small`, {BUDGET_EPOCHS} epochs of the corpus (333 LAMB steps) per "
        "variant, one setting changed; MFT as in the budget curve (the whole graph encoded at "
        "every step), public splits 0-2 x 25 epochs. Test accuracy (%), "
        "mean ± std over the splits; Δ = variant − base.",
        "",
        "| variant | what changes | pretrain s | " + " | ".join(f"{g} | Δ" for g in graphs) + " |",
        "|---|---|---:|" + "---:|---:|" * len(graphs),
    ]
    for variant, by_graph in rows.items():
        if not by_graph:
            continue
        cells = []
        for g in graphs:
            r, b = by_graph.get(g), base.get(g)
            if r is None:
                cells += ["-", "-"]
                continue
            m = 100 * r["test_accuracy_mean"]
            cells.append(f"{m:.1f} ± {100 * r['test_accuracy_std']:.1f}")
            cells.append(
                "" if variant == "base" or b is None
                else f"{m - 100 * b['test_accuracy_mean']:+.1f}"
            )  # fmt: skip
        secs = next((r.get("pretrain_seconds") for r in by_graph.values()), None)
        lines.append(
            f"| {variant} | {WHAT[variant]} | {'-' if secs is None else f'{secs:.0f}'} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    lines.append("Paper MFT (75M): " + ", ".join(f"{g} {PAPER[g]['MFT']}" for g in graphs) + ".")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--datasets", default="Cornell,Chameleon")
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--mft-epochs", type=int, default=25)
    ap.add_argument("--workdir", default=str(REPO / "runs" / "pretrain_ablations"))
    ap.add_argument(
        "--budget-curve-workdir",
        default=str(REPO / "runs" / "budget_curve"),
        help="where budget_curve.py ran (its results give the base row)",
    )
    ap.add_argument("--update-results", action="store_true")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this experiment needs ../shared/datasets", file=sys.stderr)
        return 1
    for v in args.variants.split(","):
        if v not in VARIANTS:
            ap.error(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")
    from jaxfm.train.graphfm_pretrain import pretrain

    curve = results_dir(
        args.budget_curve_workdir, "graphfm_budget_curve", update=args.update_results, quick=False
    )
    curve_results = json.loads((curve / "results.json").read_text())
    base = {
        r["dataset"]: r
        for r in curve_results["results"].values()
        if r["budget_epochs"] == BUDGET_EPOCHS
    }
    out = results_dir(args.workdir, "graphfm_ablations", update=args.update_results, quick=False)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    graphs = args.datasets.split(",")
    splits = [int(s) for s in args.splits.split(",")]
    shape = argparse.Namespace(corpus="paper-small", synthetic=0)
    steps_per_epoch = curve_results["meta"]["steps_per_epoch"]
    steps = round(BUDGET_EPOCHS * steps_per_epoch)
    if curve_results["meta"]["corpus"] != "paper-small":
        raise SystemExit(f"{curve}: the budget curve ran on another corpus")

    for variant in args.variants.split(","):
        todo = [g for g in graphs if f"{variant}/{g}" not in results]
        if not todo:
            continue
        run_dir = Path(args.workdir) / variant
        model_dir = run_dir / "model"
        seconds = None
        if not (model_dir / "config.json").exists():
            cfg = dataclasses.replace(pretrain_config(shape, steps, run_dir), **VARIANTS[variant])
            resume = (run_dir / "run.json").exists() or (run_dir / "checkpoints").exists()
            t = time.perf_counter()
            summary = pretrain(cfg, resume=resume, log_stream=None)
            if summary.get("preempted"):
                print(
                    f"{variant}: pretraining stopped at step {summary['last_step']} of {steps}; "
                    "rerun the same command to resume",
                    file=sys.stderr,
                )
                return 128 + int(summary.get("signal") or 15)
            seconds = round(time.perf_counter() - t, 1)
            print(f"{variant}: {steps} steps in {seconds:.0f} s", flush=True)
        for g in todo:
            row = {
                "variant": variant,
                "pretrain_steps": steps,
                **mft_row(model_dir, g, splits, args.mft_epochs),
            }
            if seconds is not None:
                row["pretrain_seconds"] = seconds
            else:  # an earlier invocation pretrained it
                row["pretrain_seconds"] = next(
                    (r.get("pretrain_seconds") for k, r in results.items()
                     if k.startswith(f"{variant}/")), None,
                )  # fmt: skip
            # merged with what another invocation may have written meanwhile
            results = {**(json.loads(res_path.read_text()) if res_path.exists() else {}), **results}
            results[f"{variant}/{g}"] = row
            tmp = res_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(res_path)
            write_table(out, results, base, graphs)
            print(
                f"{variant} {g}: {100 * row['test_accuracy_mean']:.2f} ± "
                f"{100 * row['test_accuracy_std']:.2f}",
                flush=True,
            )
    write_table(out, results, base, graphs)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
