"""GraphFM pretraining scale study (GraphFM Q1): small vs medium on growing corpora, then MFT.

Corpora grow by adding real graphs to the synthetic SBM graphs: ``sbm`` (the synthetic graphs
only), ``half`` (plus a seeded random half of the real graphs' nodes) and ``full`` (plus every real
node-level graph under ``../shared/datasets`` minus the evaluation families, the corpus of
``evaluate.py``). Each (model, corpus) pair is pretrained for the same number of steps with the
same bucket budgets, then finetuned with MFT on the evaluation graph(s), which no corpus contains.

    python experiments/graphfm/scale_study.py --models small --corpora sbm,half,full
    python experiments/graphfm/scale_study.py --models medium --corpora sbm,full

Each invocation adds its (model, corpus, steps, graph, MFT epochs) rows to
``experiments/results/graphfm_scale/{results.json,results.md,scale.png}``; rows of earlier
invocations are kept. Checkpoints go to ``WORKDIR/<model>_<corpus>_s<steps>/``; with
``--skip-pretrain`` an existing one there is reused (e.g. to finetune it with other MFT settings).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import EVAL, EXCLUDE  # noqa: E402  (the evaluation graphs stay unseen)

CORPORA = {"sbm": 0.0, "half": 0.5, "full": 1.0}  # share of the real graphs' nodes
MODELS = ("small", "medium")


def real_families(seed: int = 0) -> list[tuple[str, str, int]]:
    """``(name, family, nodes)`` of the real pretraining graphs, in a seeded random order.

    The same selection as ``evaluate.py``'s corpus: one dataset per graph family, node-level only,
    the evaluation families excluded.
    """
    from jaxfm.data.registry import find_datasets

    excluded = [re.compile(p) for p in EXCLUDE]
    seen, out = set(), []
    for ref in find_datasets(SHARED):
        family = ref.family or ref.name
        if ref.level != "node" or family in seen:
            continue
        if any(rx.search(ref.name) or rx.search(family) for rx in excluded):
            continue
        seen.add(family)
        out.append((ref.name, family, int(ref.num_nodes or 0)))
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def corpus_exclude(share: float, seed: int = 0) -> tuple[tuple[str, ...], list[str]]:
    """``(exclude regexes, kept dataset names)`` for a corpus with ``share`` of the real nodes.

    Graphs are taken in the seeded order until their nodes reach ``share`` of the total; every
    other family is excluded (by family, so no copy of it in another collection slips in).
    """
    fams = real_families(seed)
    total = sum(n for _, _, n in fams)
    kept, nodes = [], 0
    for name, family, n in fams:
        if share > 0 and (nodes < share * total or share >= 1.0):
            kept.append((name, family))
            nodes += n
    kept_families = {f for _, f in kept}
    dropped = sorted(f for _, f, _ in fams if f not in kept_families)
    extra = (f"^({'|'.join(re.escape(f) for f in dropped)})$",) if dropped else ()
    return EXCLUDE + extra, [name for name, _ in kept]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="small,medium", help=f"subset of {MODELS}")
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"subset of {tuple(CORPORA)}")
    ap.add_argument("--graphs", default="Chameleon", help=f"MFT graphs, of {tuple(EVAL)}")
    ap.add_argument("--steps", type=int, default=100, help="pretraining steps (every run)")
    ap.add_argument("--node-budget", type=int, default=1024, help="node rows per bucket")
    ap.add_argument("--graph-budget", type=int, default=8, help="graph slots per bucket")
    ap.add_argument("--target-budget", type=int, default=64, help="decoded targets per bucket")
    ap.add_argument("--epochs", type=int, default=10, help="MFT epochs")
    ap.add_argument("--batch-targets", type=int, default=128, help="MFT targets per step")
    ap.add_argument("--splits", default="0", help="MFT splits of each evaluation graph")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "graphfm_scale"))
    ap.add_argument("--out-name", default="graphfm_scale", help="results folder (merged)")
    ap.add_argument(
        "--skip-pretrain", action="store_true", help="reuse WORKDIR/<model>_<corpus>_s<steps>"
    )
    args = ap.parse_args(argv)
    models, corpora = args.models.split(","), args.corpora.split(",")
    for flag, got, allowed in (("--models", models, MODELS), ("--corpora", corpora, CORPORA)):
        if unknown := sorted(set(got) - set(allowed)):
            ap.error(f"{flag}: unknown {unknown}; choose from {tuple(allowed)}")
    graphs = args.graphs.split(",")
    if unknown := sorted(set(graphs) - set(EVAL)):
        ap.error(f"--graphs: unknown {unknown}; choose from {tuple(EVAL)}")
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this experiment needs ../shared/datasets", file=sys.stderr)
        return 1

    from jaxfm.model_dir import write_json_atomic
    from jaxfm.train.graphfm_finetune import FinetuneConfig, finetune
    from jaxfm.train.graphfm_pretrain import PretrainConfig, pretrain
    from jaxfm.train.optim import OptimizerConfig

    out = REPO / "experiments" / "results" / args.out_name
    mine = {}  # this invocation's rows; merged into the file's current rows at every write
    splits = [int(s) for s in args.splits.split(",")]
    for corpus in corpora:
        exclude, kept = corpus_exclude(CORPORA[corpus])
        for model in models:
            workdir = Path(args.workdir) / f"{model}_{corpus}_s{args.steps}"
            t = time.perf_counter()
            if args.skip_pretrain:
                if not (workdir / "summary.json").is_file():
                    ap.error(f"--skip-pretrain: no pretrained run in {workdir}")
                summary = json.loads((workdir / "summary.json").read_text())
            else:
                summary = pretrain(
                    PretrainConfig(
                        model=model,
                        data=(str(SHARED),) if kept else (),
                        exclude=exclude,
                        steps=args.steps,
                        node_budget=args.node_budget,
                        graph_budget=args.graph_budget,
                        target_budget=args.target_budget,
                        workdir=str(workdir),
                        checkpoint_every=args.steps,
                        keep=1,
                        log_every=max(args.steps // 10, 1),
                        optimizer=OptimizerConfig(
                            name="lamb",
                            learning_rate=2e-3,
                            weight_decay=1e-4,
                            schedule="warmup_cosine",
                            warmup_steps=max(args.steps // 20, 1),
                            total_steps=args.steps,
                            end_lr_fraction=0.05,
                        ),
                    )
                )
            pretrain_s = summary.get("seconds") if args.skip_pretrain else time.perf_counter() - t
            for graph in graphs:
                t = time.perf_counter()
                res = finetune(
                    FinetuneConfig(
                        workdir=None,  # many runs: results go to --out
                        mode="mft",
                        checkpoint=str(workdir / "model"),
                        dataset=str(SHARED / EVAL[graph]),
                        splits=splits,
                        num_random_splits=len(splits),
                        epochs=args.epochs,
                        batch_targets=args.batch_targets,
                        context_nodes=None,  # the whole graph, as the committed table was measured
                        learning_rate=3e-3,
                    )
                )
                row = {
                    "model": model,
                    "corpus": corpus,
                    "graph": graph,
                    "corpus_datasets": summary["datasets"],
                    "corpus_nodes": summary["corpus_nodes"],
                    "real_datasets": kept,
                    "pretrain_steps": args.steps,
                    "pretrain_loss_last_10": summary["mean_loss_last_10"],
                    "pretrain_s": round(pretrain_s, 1),
                    "mft_s": round(time.perf_counter() - t, 1),
                    "test_accuracy_mean": res["test_accuracy_mean"],
                    "test_accuracy_std": res["test_accuracy_std"],
                    "splits": splits,
                    "epochs": args.epochs,
                    "budgets": [args.node_budget, args.graph_budget, args.target_budget],
                }
                mine[_key(row)] = row
                print(
                    json.dumps({k: v for k, v in row.items() if k != "real_datasets"}), flush=True
                )
            out.mkdir(parents=True, exist_ok=True)
            ordered = sorted({**_saved_rows(out), **mine}.values(), key=_order)
            write_json_atomic(out / "results.json", {"rows": ordered, "args": vars(args)})
            lines = _table(ordered)
            (out / "results.md").write_text("\n".join(lines) + "\n")
            _plot(ordered, out / "scale.png")
    print("\n".join(lines))
    return 0


def _saved_rows(out: Path) -> dict:
    """Rows already in ``out/results.json`` (other invocations, possibly running beside)."""
    path = out / "results.json"
    return {_key(r): r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}


def _key(r: dict) -> tuple:
    return (r["model"], r["corpus"], r["pretrain_steps"], r["graph"], r["epochs"])


def _order(r: dict) -> tuple:
    return (r["graph"], r["epochs"], MODELS.index(r["model"]), r["pretrain_steps"],
            list(CORPORA).index(r["corpus"]))  # fmt: skip


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| graph | MFT epochs | model | corpus | datasets | nodes | steps "
        "| pretrain loss (last 10) | MFT test acc. (%) | pretrain s | MFT s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['graph']} | {r['epochs']} | {r['model']} | {r['corpus']} "
            f"| {r['corpus_datasets']} | "
            f"{r['corpus_nodes']:,} | {r['pretrain_steps']} | {r['pretrain_loss_last_10']:.3f} | "
            f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f} | "
            f"{r['pretrain_s']:.0f} | {r['mft_s']:.0f} |"
        )
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    """One panel per (graph, MFT epochs); one line per (model, pretraining steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["graph"], r["epochs"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    colors = {"small": "tab:green", "medium": "tab:purple"}
    for ax, (graph, epochs) in zip(axes[0], panels, strict=True):
        here = [r for r in rows if (r["graph"], r["epochs"]) == (graph, epochs)]
        for model, steps in dict.fromkeys((r["model"], r["pretrain_steps"]) for r in here):
            rs = sorted((r for r in here if (r["model"], r["pretrain_steps"]) == (model, steps)),
                        key=lambda r: r["corpus_nodes"])  # fmt: skip
            ax.errorbar(
                [r["corpus_nodes"] for r in rs],
                [100 * r["test_accuracy_mean"] for r in rs],
                yerr=[100 * r["test_accuracy_std"] for r in rs],
                marker="o" if steps <= 100 else "s",
                linestyle="-" if steps <= 100 else "--",
                color=colors[model],
                label=f"{model}, {steps} steps",
                capsize=3,
            )
        ax.set_xscale("log")
        ax.set_xlabel("pretraining corpus (nodes)")
        ax.set_ylabel("MFT test accuracy (%)")
        ax.set_title(f"{graph}: MFT ({epochs} epochs) after pretraining")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
