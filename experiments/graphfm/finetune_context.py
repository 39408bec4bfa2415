"""GraphFM MFT with the whole graph as context vs pretraining's random-walk subgraphs (issue 14).

    python experiments/graphfm/finetune_context.py --update-results
    python experiments/graphfm/finetune_context.py --datasets Physics --time-only

Pretraining encodes a big graph as GraphSAINT random-walk subgraphs of at most 1,024 nodes
(``max_unit_nodes = node_budget // 2``); MFT by default encodes the whole graph at every step
(Squirrel 5.2k nodes, Computers 13.8k, Physics 34.5k, all into the same 32 latents). This runs
MFT from one checkpoint with both contexts on the committed protocol of
``experiments/results/graphfm_fidelity/library_defaults`` (same checkpoint, splits, epochs and
batch sizes; the ``whole`` rows reproduce that table) and records accuracy and seconds per
epoch. The ``subgraph`` row decodes 256 targets per step in a context of at most 1,024 nodes
(pretraining's target and unit budgets) and also reports the test accuracy measured with the
whole graph as context.

Every finished (dataset, row) is written to ``results.json`` at once and skipped on the next
invocation; ``--time-only`` instead times one epoch of each row side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import EVAL, PAPER, SHARED, results_dir

REPO = Path(__file__).resolve().parents[2]
# the committed protocol of library_defaults (evaluate.py): splits x epochs per graph
PROTOCOL = {
    "Cornell": ([0, 1, 2], 25),
    "Chameleon": ([0, 1, 2], 25),
    "Actor": ([0, 1, 2], 15),
    "Squirrel": ([0, 1, 2], 15),
    "Computers": ([0], 8),
    "Physics": ([0], 8),
}
CONTEXT_NODES, CONTEXT_TARGETS = 1024, 256  # pretraining's max_unit_nodes and target_budget
ROWS = ("whole", "subgraph")


def evaluate_batch_targets(ds) -> int:
    """``evaluate.py``'s MFT batch size: at least 8 steps an epoch, 128 to 2,048 targets."""
    n_train = int(ds.splits[0].train.sum()) if ds.splits else int(0.6 * ds.num_nodes)
    return int(min(2048, max(128, n_train // 8)))


def config(row: str, name: str, ds, args, *, epochs: int, splits: list[int]):
    from jaxfm.train.graphfm_finetune import FinetuneConfig

    common = dict(
        workdir=None, mode="mft", checkpoint=args.checkpoint, dataset=str(SHARED / EVAL[name]),
        splits=splits, num_random_splits=3, epochs=epochs,
    )  # fmt: skip
    if row == "whole":
        return FinetuneConfig(
            **common, batch_targets=args.batch_targets or evaluate_batch_targets(ds),
            context_nodes=None,
        )  # fmt: skip
    return FinetuneConfig(
        **common,
        batch_targets=args.batch_targets or CONTEXT_TARGETS,
        context_nodes=CONTEXT_NODES,
        test_on_whole_graph=True,
    )


def write_table(out: Path, results: dict) -> None:
    lines = [
        f"MFT from `{results_meta(results)}`; `whole`: the whole graph encoded at every step "
        f"(the library default), `evaluate.py`'s targets per step; `subgraph`: {CONTEXT_TARGETS} "
        f"targets per step in the subgraph their 2-step random walks reach, at most "
        f"{CONTEXT_NODES} nodes (`--context-nodes {CONTEXT_NODES}`, pretraining's context; "
        "Cornell is below it and stays whole). "
        "Test accuracy (%), mean ± std over splits; s/epoch = MFT wall time / epochs (training "
        "and per-epoch validation).",
        "",
        "| graph | splits × epochs | whole | s/epoch | subgraph | subgraph, tested on the whole "
        "graph | s/epoch | paper MFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in EVAL:
        w, s = results.get(f"{name}/whole"), results.get(f"{name}/subgraph")
        if w is None and s is None:
            continue
        splits, epochs = PROTOCOL[name]

        def acc(r, key="test_accuracy"):
            if r is None or f"{key}_mean" not in r:
                return "-"
            return f"{100 * r[f'{key}_mean']:.2f} ± {100 * r[f'{key}_std']:.2f}"

        runs = len(splits) * epochs

        def sec(r, runs=runs):
            return "-" if r is None else f"{r['seconds'] / runs:.1f}"

        mark = " †" if w is not None and "source" in w else ""
        lines.append(
            f"| {name} | {len(splits)} × {epochs} | {acc(w)}{mark} | {sec(w)}{mark} | {acc(s)} | "
            f"{acc(s, 'test_accuracy_whole_graph')} | {sec(s)} | {PAPER[name]['MFT']} |"
        )
    sources = sorted({r["source"] for r in results.values() if "source" in r})
    if sources:
        lines += ["", f"† from {', '.join(sources)} (same checkpoint and protocol; its wall time)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def results_meta(results: dict) -> str:
    for r in results.values():
        return r["checkpoint"]
    return "?"


def import_whole_rows(results: dict, path: Path, checkpoint: str) -> None:
    """``whole`` rows from ``evaluate.py``'s ``results.json`` where this run has none; refused
    unless that run used the same checkpoint and this script's protocol."""
    saved = json.loads(path.read_text())
    for name, by_model in saved["results"].items():
        mft = by_model.get("MFT")
        if mft is None or f"{name}/whole" in results or name not in PROTOCOL:
            continue
        splits, epochs = PROTOCOL[name]
        same = (
            Path(mft["checkpoint"]).resolve() == Path(checkpoint).resolve()
            or (REPO / mft["checkpoint"]).resolve() == Path(checkpoint).resolve()
        )
        protocol = (by_model["settings"]["splits"], mft["config"]["epochs"])
        if not same or protocol != (splits, epochs):
            raise SystemExit(f"{path}: {name} ran another checkpoint or protocol than this script")
        results[f"{name}/whole"] = {
            **{k: mft[k] for k in ("test_accuracy_mean", "test_accuracy_std", "per_split")},
            "seconds": saved["timings"][f"{name}_mft_s"],
            "checkpoint": mft["checkpoint"],
            "source": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
        }


def time_one_epoch(args) -> int:
    """One epoch of each row on each graph, side by side in this process (split 0)."""
    from jaxfm.data.registry import load_dataset
    from jaxfm.train.graphfm_finetune import finetune

    for name in args.datasets.split(","):
        ds = load_dataset(SHARED / EVAL[name])
        times = {}
        for row in args.rows.split(","):
            for epochs in (1, 2):  # the difference removes compilation and set-up
                t = time.perf_counter()
                finetune(config(row, name, ds, args, epochs=epochs, splits=[0]), progress=False)
                times[(row, epochs)] = time.perf_counter() - t
            per = times[(row, 2)] - times[(row, 1)]
            print(f"{name} {row}: {per:.1f} s/epoch (1 epoch run {times[(row, 1)]:.1f} s)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "runs" / "graphfm_eval" / "model"))
    ap.add_argument("--datasets", default="Squirrel,Computers,Chameleon,Actor,Cornell,Physics")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--workdir", default=str(REPO / "runs" / "finetune_context"))
    ap.add_argument(
        "--whole-from",
        help="an evaluate.py results.json of the same checkpoint and protocol whose MFT rows stand "
        "in for `whole` rows not run here (marked with their source)",
    )
    ap.add_argument(
        "--batch-targets",
        type=int,
        help="targets per step for every row (default: evaluate.py's for whole, 256 for subgraph)",
    )
    ap.add_argument("--update-results", action="store_true")
    ap.add_argument("--time-only", action="store_true", help="time an epoch per row; write nothing")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this experiment needs ../shared/datasets", file=sys.stderr)
        return 1
    for row in args.rows.split(","):
        if row not in ROWS:
            ap.error(f"--rows: {row!r} is not one of {', '.join(ROWS)}")
    if args.time_only:
        return time_one_epoch(args)
    from jaxfm.data.registry import load_dataset
    from jaxfm.train.graphfm_finetune import finetune

    out = results_dir(
        args.workdir, "graphfm_fidelity/finetune_context", update=args.update_results, quick=False
    )
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    if args.whole_from:
        import_whole_rows(results, Path(args.whole_from), args.checkpoint)
        res_path.write_text(json.dumps(results, indent=1))
    for name in args.datasets.split(","):
        splits, epochs = PROTOCOL[name]
        ds = None
        for row in args.rows.split(","):
            if f"{name}/{row}" in results:
                continue
            ds = ds or load_dataset(SHARED / EVAL[name])
            cfg = config(row, name, ds, args, epochs=epochs, splits=splits)
            t = time.perf_counter()
            r = finetune(cfg, progress=False)
            if r["preempted"]:  # stopped by a signal: not a result
                raise SystemExit(f"{name} {row}: stopped by a signal; rerun to finish")
            r["seconds"] = round(time.perf_counter() - t, 1)
            r["checkpoint"] = (
                str(Path(args.checkpoint).relative_to(REPO))
                if Path(args.checkpoint).is_relative_to(REPO)
                else args.checkpoint
            )
            r.pop("config", None)
            r["config"] = {
                k: getattr(cfg, k) for k in ("batch_targets", "context_nodes", "epochs", "splits")
            }
            results[f"{name}/{row}"] = r
            tmp = res_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(res_path)
            write_table(out, results)
            extra = (
                f", whole-graph test {100 * r['test_accuracy_whole_graph_mean']:.2f}"
                if "test_accuracy_whole_graph_mean" in r
                else ""
            )
            print(
                f"{name} {row}: {100 * r['test_accuracy_mean']:.2f} ± "
                f"{100 * r['test_accuracy_std']:.2f}{extra} in {r['seconds']:.0f} s",
                flush=True,
            )
    write_table(out, results)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
