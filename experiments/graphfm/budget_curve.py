"""GraphFM budget curve: MFT accuracy on unseen graphs against the pretraining budget.

    python experiments/graphfm/budget_curve.py                     # into runs/budget_curve
    python experiments/graphfm/budget_curve.py --update-results    # the committed table + plot

Pretrains ``small`` on the paper's small-data corpus (``--corpus paper-small``, GraphFM B.2: the
11 of its 17 graphs that ../shared/datasets holds; the run lists the missing ones) for each budget
in ``--budgets`` (epochs of the corpus: one epoch decodes as many targets as the corpus has
training nodes), each budget its own run with its own warmup-cosine schedule, then runs MFT with
the library's defaults on each evaluation graph from that checkpoint.

Everything is resumable and incremental: a budget's pretraining resumes from its checkpoints, and
every finished (budget, graph) MFT result is written to ``results.json`` at once and skipped on the
next invocation, so a long curve survives a session's end (rerun the same command).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import EVAL, EXCLUDE, PAPER, SHARED, pretrain_optimizer, results_dir

REPO = Path(__file__).resolve().parents[2]


def corpus_training_nodes(cfg) -> tuple[int, int, int]:
    """``(datasets, nodes, training nodes)`` of the pretraining corpus of ``cfg``."""
    from jaxfm.train.graphfm_pretrain import build_pretraining_corpus

    datasets = build_pretraining_corpus(cfg, log=lambda *_: None)
    nodes = sum(d.num_nodes for d in datasets)
    train = 0
    for d in datasets:
        labelled = d.y >= 0 if d.task == "classification" else slice(None)
        train += int((d.splits[0].train & labelled).sum()) if d.splits else int(0.6 * d.num_nodes)
    return len(datasets), nodes, train


def pretrain_config(args, steps: int, workdir: Path):
    from jaxfm.train.graphfm_pretrain import PretrainConfig

    return PretrainConfig(
        data=(str(SHARED),),
        corpus=args.corpus,
        synthetic_graphs=args.synthetic,
        exclude=EXCLUDE,
        steps=steps,
        workdir=str(workdir),
        checkpoint_every=max(steps // 4, 1),
        log_every=max(steps // 20, 1),
        eval_every=0,
        optimizer=pretrain_optimizer(steps),
    )


def mft_row(
    model_dir: Path, name: str, splits: list[int], epochs: int, batch_targets: int | None = None
) -> dict:
    """MFT with the library's defaults from ``model_dir`` on evaluation graph ``name``, the
    whole graph encoded at every step as when the curve's first points were measured.
    ``batch_targets`` decoded per step (``None``: ``evaluate.py``'s rule, at least 8 steps an
    epoch with 128 to 2,048 targets)."""
    from jaxfm.data.registry import load_dataset
    from jaxfm.train.graphfm_finetune import FinetuneConfig, finetune

    path = SHARED / EVAL[name]
    t = time.perf_counter()
    ds = load_dataset(path)
    n_train = int(ds.splits[0].train.sum()) if ds.splits else int(0.6 * ds.num_nodes)
    r = finetune(
        FinetuneConfig(
            workdir=None,
            mode="mft",
            checkpoint=str(model_dir),
            dataset=str(path),
            splits=splits,
            num_random_splits=3,
            epochs=epochs,
            batch_targets=batch_targets or int(min(2048, max(128, n_train // 8))),
            context_nodes=None,
        ),
        progress=False,
    )
    if r["preempted"]:  # stopped by a signal: not a result (rerunning the command redoes it)
        raise SystemExit(f"MFT on {name} from {model_dir} was stopped by a signal; rerun to finish")
    return {
        "dataset": name,
        "test_accuracy_mean": r["test_accuracy_mean"],
        "test_accuracy_std": r["test_accuracy_std"],
        "per_split": r["per_split"],
        "mft_epochs": epochs,
        "batch_targets": batch_targets or int(min(2048, max(128, n_train // 8))),
        "mft_seconds": round(time.perf_counter() - t, 1),
    }


def _protocol(results: dict, graph: str, meta: dict) -> str:
    """The MFT protocol of ``graph``'s rows (rows from before it was recorded: ``meta``'s)."""
    seen = set()
    for r in results.values():
        if r["dataset"] == graph:
            if "mft_epochs" not in r:
                seen.add(meta["mft"] + ", evaluate.py's rule")
            else:
                n = len(r["per_split"])
                seen.add(f"{n} × {r['mft_epochs']}, {r['batch_targets']}")
    return "; ".join(sorted(seen))


def write_table(out: Path, results: dict, meta: dict) -> None:
    """``results.md`` and ``budget_curve.png`` from ``results.json``'s rows."""
    budgets = sorted({r["budget_epochs"] for r in results.values()})
    graphs = [g for g in EVAL if any(r["dataset"] == g for r in results.values())]
    lines = [
        f"`small` pretrained on `{meta['corpus']}` ({meta['datasets']} datasets, "
        f"{meta['nodes']:,} nodes, {meta['train_nodes']:,} training nodes; "
        f"{meta['steps_per_epoch']} steps of {meta['target_budget']} targets = one epoch), "
        "then MFT (library settings, the whole graph encoded at every step; the protocol per "
        "graph in the table).",
        "",
        "| graph | MFT splits × epochs, targets/step | "
        + " | ".join(f"{b:g} ep." for b in budgets)
        + " | paper MFT |",
        "|---|---|" + "---|" * (len(budgets) + 1),
    ]
    for g in graphs:
        cells = []
        for b in budgets:
            r = results.get(f"{b:g}/{g}")
            cells.append(
                "-"
                if r is None
                else f"{100 * r['test_accuracy_mean']:.1f} ± {100 * r['test_accuracy_std']:.1f}"
            )
        lines.append(
            f"| {g} | {_protocol(results, g, meta)} | "
            + " | ".join(cells)
            + f" | {PAPER[g]['MFT']} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    span = [min(budgets) / 1.5, max(budgets) * 1.5]  # x range of the paper lines (log axis)
    for g in graphs:
        pts = [(b, results[f"{b:g}/{g}"]) for b in budgets if f"{b:g}/{g}" in results]
        xs = [b for b, _ in pts]
        ys = [100 * r["test_accuracy_mean"] for _, r in pts]
        es = [100 * r["test_accuracy_std"] for _, r in pts]
        line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=g)
        paper = PAPER[g]["MFT"]
        if paper != "-":
            y = float(paper.split("±")[0])
            ax.plot(span, [y, y], ls=":", color=line[0].get_color(), lw=1)
    ax.set_xscale("log")
    ax.set_xlim(*span)
    ax.set_xlabel("pretraining budget (epochs of the corpus)")
    ax.set_ylabel("MFT test accuracy (%)")
    ax.set_title(f"GraphFM small on {meta['corpus']} (dotted: paper MFT, 75M)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "budget_curve.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="1,3,10", help="pretraining budgets, epochs of the corpus")
    ap.add_argument("--corpus", default="paper-small", help="corpus preset")
    ap.add_argument("--synthetic", type=int, default=0, help="SBM graphs added (paper small: 0)")
    ap.add_argument("--datasets", default="Cornell,Chameleon,Actor", help="evaluation graphs")
    ap.add_argument("--splits", default="0,1,2", help="public splits per graph")
    ap.add_argument("--mft-epochs", type=int, default=25, help="MFT epochs")
    ap.add_argument(
        "--batch-targets", type=int, default=0, help="MFT targets per step (0: evaluate.py's rule)"
    )
    ap.add_argument("--workdir", default=str(REPO / "runs" / "budget_curve"))
    ap.add_argument("--update-results", action="store_true", help="write the committed results")
    ap.add_argument("--out-name", default="graphfm_budget_curve")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this experiment needs ../shared/datasets", file=sys.stderr)
        return 1
    from jaxfm.train.graphfm_pretrain import pretrain

    workdir = Path(args.workdir)
    out = results_dir(workdir, args.out_name, update=args.update_results, quick=False)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    saved = json.loads(res_path.read_text()) if res_path.exists() else {}
    results, meta = saved.get("results", {}), saved.get("meta")
    if meta is None:
        probe = pretrain_config(args, 1, workdir / "probe")
        n_ds, nodes, train = corpus_training_nodes(probe)
        meta = {
            "corpus": args.corpus,
            "synthetic_graphs": args.synthetic,
            "datasets": n_ds,
            "nodes": nodes,
            "train_nodes": train,
            "target_budget": probe.target_budget,
            "steps_per_epoch": max(1, round(train / probe.target_budget)),
            "mft": f"splits {args.splits} x {args.mft_epochs} epochs",
        }
    splits = [int(s) for s in args.splits.split(",")]
    targets = args.batch_targets or None

    def save():
        text = json.dumps({"meta": meta, "results": results}, indent=1)
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(res_path)
        write_table(out, results, meta)

    for budget in [float(b) for b in args.budgets.split(",")]:
        b = f"{budget:g}"
        steps = max(2, round(budget * meta["steps_per_epoch"]))
        run_dir = workdir / f"budget_{b}"
        todo = [g for g in args.datasets.split(",") if f"{b}/{g}" not in results]
        if not todo:
            continue
        if not (run_dir / "model" / "config.json").exists():
            t = time.perf_counter()
            resume = (run_dir / "run.json").exists() or (run_dir / "checkpoints").exists()
            cfg = pretrain_config(args, steps, run_dir)
            summary = pretrain(cfg, resume=resume, log_stream=None)
            if summary.get("preempted"):
                # stopped by a signal after saving: no model to finetune; rerunning resumes it
                print(
                    f"budget {b}: pretraining stopped at step {summary['last_step']} of {steps} "
                    f"(signal {summary.get('signal')}); rerun the same command to resume",
                    file=sys.stderr,
                )
                return 128 + int(summary.get("signal") or 15)
            print(f"budget {b}: {steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
        for g in todo:
            results[f"{b}/{g}"] = {
                "budget_epochs": budget,
                "pretrain_steps": steps,
                **mft_row(run_dir / "model", g, splits, args.mft_epochs, targets),
            }
            save()
            r = results[f"{b}/{g}"]
            print(
                f"budget {b} {g}: {100 * r['test_accuracy_mean']:.2f} ± "
                f"{100 * r['test_accuracy_std']:.2f}",
                flush=True,
            )
    save()
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
