"""Snake sampler vs random assignment: max/mean bucket load (GraphFM paper, C.1 and Figure 2).

Two measurements, each for 8 and 64 buckets:

1. **Whole-graph partition** (the issue's done-when figure): every graph of the corpus dealt into
   the buckets at once, by :func:`jaxfm.graph.snake_partition` vs a random permutation dealt
   round-robin (equal counts, what a size-unaware ``DistributedSampler`` does); random is
   repeated for 100 seeds ("epochs").
2. **Per-step sampler**: :class:`jaxfm.graph.snake.DistributedSSSampler` over 100 epochs under a
   per-bucket node budget T; graphs above ``T/2`` nodes are cut into GraphSAINT units. Snake
   vs the same steps dealt round-robin at random. Reported: max/mean load per step (all steps but
   each epoch's last, partial one), and the fill (mean load / T) the static budget achieves.

Corpora: the node counts of the real graphs in ``../shared/datasets`` (from
``jaxfm.data.registry.find_datasets`` when importable, else the table below, taken from
``SOURCES.md``, plus per-graph sizes of the TU sets read from their ``graph_indicator`` files),
and 72 synthetic SBM graphs with parameters from the paper's ranges (32 to 50k nodes here).
For the real graphs GraphSAINT unit sizes are *simulated* (uniform in [0.6, 1] x T/2, drawn
until the graph's size is covered: loading every real graph's edges needs the loaders); the SBM
graphs use the real :class:`~jaxfm.graph.saint.SaintSampler`.

    python experiments/benchmarks/snake_sampler.py             # ~1 min on 2 CPU cores
    python experiments/benchmarks/snake_sampler.py --epochs 20 --out /tmp/snake

Prints a Markdown table and writes ``snake_sampler.json`` and ``snake_sampler.png`` to
``experiments/results/benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxfm.data.sbm import sbm_corpus
from jaxfm.graph.saint import SaintSampler
from jaxfm.graph.snake import DistributedSSSampler, bucket_loads, random_partition, snake_partition

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"

# Node counts of the node-level graphs in ../shared/datasets (SOURCES.md). PubMed (features
# missing) and the geom-gcn chameleon/squirrel folders (features missing; the same graphs are in
# heterophilous-graphs) are left out; the spatial-transcriptomics sets belong to FIMP.
SOURCES_NODE_COUNTS = {
    "gnn-benchmark/cora": 2708,
    "gnn-benchmark/citeseer": 3312,
    "planetoid/cora": 2708,
    "planetoid/citeseer": 3327,
    "geom-gcn/film": 7600,
    "geom-gcn/cornell": 183,
    "hetero/minesweeper": 10000,
    "hetero/tolokers": 11758,
    "hetero/actor": 7600,
    "hetero/chameleon": 2277,
    "hetero/chameleon_directed": 2277,
    "hetero/chameleon_filtered": 890,
    "hetero/chameleon_filtered_directed": 890,
    "hetero/squirrel": 5201,
    "hetero/squirrel_directed": 5201,
    "hetero/squirrel_filtered": 2223,
    "hetero/squirrel_filtered_directed": 2223,
    "hetero/cornell": 183,
    "graphdata/amazon_cs": 13752,
    "graphdata/coauthor_phy": 34493,
    "graphdata/cora": 2708,
    "graphdata/citeseer": 3312,
    "graphdata/cora_ml": 2995,
    "graphdata/citeseer_full": 4230,
    "graphdata/dblp": 17716,
    "graphdata/blogcatalog": 5196,
    "graphdata/flickr": 7575,
    "graphdata/acm": 3025,
    "graphdata/uai": 3067,
    "graphdata/polblogs": 1490,
    "graphdata/karate_club": 34,
    "musae/DE": 9498,
    "musae/ENGB": 7126,
    "musae/ES": 4648,
    "musae/FR": 6551,
    "musae/PTBR": 1912,
    "musae/RU": 4385,
    "musae/ZHTW": 2772,
    "musae/facebook": 22470,
    "musae/chameleon": 2277,
    "musae/squirrel": 5201,
    "musae/git": 37700,
    "musae/crocodile": 11631,
    "karateclub/twitch": 7126,
    "karateclub/deezer": 28281,
    "karateclub/lastfm": 7624,
    "linkx/Amherst41": 2235,
    "linkx/Reed98": 962,
    "linkx/JohnsHopkins55": 5180,
    "linkx/Cornell5": 18660,
    "airports/usa": 1190,
    "airports/europe": 399,
    "airports/brazil": 131,
    "email-Eu-core": 1005,
}
TU_SETS = ("MUTAG", "PROTEINS")
# Totals from SOURCES.md, used when the TU files are not there.
TU_FALLBACK = {"MUTAG": (188, 3371), "PROTEINS": (1113, 43471)}


def _tu_sizes(name: str) -> tuple[np.ndarray, str]:
    path = (
        DATASETS / "TUDataset" / "data" / "TUDataset" / name / "raw" / f"{name}_graph_indicator.txt"
    )
    if path.exists():
        ind = np.loadtxt(path, dtype=np.int64)
        return np.bincount(ind)[1:], str(path.relative_to(DATASETS))
    graphs, nodes = TU_FALLBACK[name]
    sizes = np.full(graphs, nodes // graphs)
    sizes[: nodes - sizes.sum()] += 1
    return sizes, "SOURCES.md totals (even split)"


def real_graph_sizes() -> tuple[np.ndarray, str]:
    """Node count of every graph in ../shared/datasets (registry if available)."""
    try:
        from jaxfm.data.graph_dataset import GraphClassificationDataset
        from jaxfm.data.registry import find_datasets, load_dataset

        sizes = []
        for ref in find_datasets(DATASETS):
            ds = load_dataset(ref.path)
            if isinstance(ds, GraphClassificationDataset):
                sizes.extend(g.num_nodes for g in ds.graphs)
            else:
                sizes.append(ds.num_nodes)
        return np.array(sizes, np.int64), "jaxfm.data.registry.find_datasets"
    except ImportError:
        pass
    sizes = list(SOURCES_NODE_COUNTS.values())
    where = []
    for name in TU_SETS:
        tu, src = _tu_sizes(name)
        sizes.extend(tu.tolist())
        where.append(f"{name}: {src}")
    return np.array(sizes, np.int64), "SOURCES.md table; " + "; ".join(where)


def _ratio(loads: np.ndarray) -> float:
    return float(loads.max() / loads.mean())


def _greedy(sizes: np.ndarray, num_buckets: int) -> list[list[int]]:
    """Reference only: largest-first into the least-loaded bucket (LPT), not the paper's deal."""
    load = np.zeros(num_buckets, np.int64)
    buckets: list[list[int]] = [[] for _ in range(num_buckets)]
    for i in np.argsort(-sizes, kind="stable").tolist():
        b = int(np.argmin(load))
        buckets[b].append(i)
        load[b] += sizes[i]
    return buckets


def whole_graph(sizes: np.ndarray, units_fn, num_buckets: int, epochs: int) -> dict:
    """The whole corpus in one deal: whole graphs, and the epoch's units (GraphSAINT)."""
    snake = _ratio(bucket_loads(sizes, snake_partition(sizes, num_buckets)))
    free = _ratio(bucket_loads(sizes, snake_partition(sizes, num_buckets, budget=math.inf)))
    rand = [
        _ratio(bucket_loads(sizes, random_partition(sizes, num_buckets, seed=e)))
        for e in range(epochs)
    ]
    unit_snake, unit_rand = [], []
    for e in range(epochs):
        units = units_fn(e)
        unit_snake.append(_ratio(bucket_loads(units, snake_partition(units, num_buckets))))
        unit_rand.append(_ratio(bucket_loads(units, random_partition(units, num_buckets, seed=e))))
    return {
        "snake": snake,
        "snake_budget_free": free,
        "random_mean": float(np.mean(rand)),
        "random_max": float(np.max(rand)),
        "greedy_reference": _ratio(bucket_loads(sizes, _greedy(sizes, num_buckets))),
        "units_snake_mean": float(np.mean(unit_snake)),
        "units_snake_max": float(np.max(unit_snake)),
        "units_random_mean": float(np.mean(unit_rand)),
        "units_random_max": float(np.max(unit_rand)),
    }


def simulated_units(sizes: np.ndarray, max_unit: int, epoch: int, seed: int) -> np.ndarray:
    """Whole graphs up to ``max_unit``; bigger ones as simulated GraphSAINT unit sizes."""
    rng = np.random.default_rng([seed, epoch])
    out = []
    for n in sizes.tolist():
        if n <= max_unit:
            out.append(n)
            continue
        covered = 0
        while covered < n:
            s = int(rng.uniform(0.6, 1.0) * max_unit)
            out.append(s)
            covered += s
    return np.array(out, np.int64)


def sbm_units_fn(graphs, max_unit: int, walk_length: int = 2):
    samplers = {
        i: SaintSampler(
            g.senders,
            g.receivers,
            g.num_nodes,
            num_roots=max_unit // (walk_length + 1),
            walk_length=walk_length,
            seed=i,
        )
        for i, g in enumerate(graphs)
        if g.num_nodes > max_unit
    }

    def units(epoch: int) -> np.ndarray:
        out = []
        for i, g in enumerate(graphs):
            if i in samplers:
                out.extend(x.size for x in samplers[i].epoch_subgraphs(epoch))
            else:
                out.append(g.num_nodes)
        return np.array(out, np.int64)

    return units


def per_step(units_fn, num_buckets: int, budget: int, epochs: int, seed: int = 0) -> dict:
    res = {}
    for assignment in ("snake", "random"):
        ratios, fills, overflow, steps = [], [], 0, 0
        for epoch in range(epochs):
            sizes = units_fn(epoch)
            sampler = DistributedSSSampler(
                sizes,
                num_buckets=num_buckets,
                node_budget=budget,
                seed=seed,
                assignment=assignment,
            )
            plan = sampler.epoch_plan(epoch)
            full = plan[:-1] if len(plan) > 1 else plan
            for buckets in full:
                loads = bucket_loads(sizes, buckets)
                ratios.append(_ratio(loads))
                fills.append(loads.mean() / budget)
                overflow += int((loads > budget).sum())
                steps += 1
        ratios = np.array(ratios)
        res[assignment] = {
            "ratio_mean": float(ratios.mean()),
            "ratio_p95": float(np.percentile(ratios, 95)),
            "ratio_max": float(ratios.max()),
            "fill_mean": float(np.mean(fills)),
            "steps": steps,
            "buckets_over_budget": overflow,
            "ratios": ratios.tolist(),
        }
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--budget", type=int, default=8192, help="node budget T per bucket")
    ap.add_argument("--sbm-graphs", type=int, default=72)
    ap.add_argument("--sbm-max-nodes", type=int, default=50_000)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    real, source = real_graph_sizes()
    sbm = sbm_corpus(args.sbm_graphs, seed=0, node_range=(32, args.sbm_max_nodes), feature_dim=1)
    sbm_sizes = np.array([g.num_nodes for g in sbm], np.int64)
    max_unit = args.budget // 2
    corpora = {
        "real": (real, lambda e: simulated_units(real, max_unit, e, seed=0)),
        "sbm": (sbm_sizes, sbm_units_fn(sbm, max_unit)),
    }
    results = {
        "source": source,
        "budget": args.budget,
        "max_unit_nodes": max_unit,
        "epochs": args.epochs,
        "corpora": {},
    }
    for name, (sizes, units_fn) in corpora.items():
        entry = {
            "graphs": int(sizes.size),
            "nodes": int(sizes.sum()),
            "largest": int(sizes.max()),
            "whole_graph": {},
            "per_step": {},
        }
        for nb in (8, 64):
            entry["whole_graph"][nb] = whole_graph(sizes, units_fn, nb, args.epochs)
            entry["per_step"][nb] = per_step(units_fn, nb, args.budget, args.epochs)
        results["corpora"][name] = entry
    results["seconds"] = round(time.perf_counter() - t0, 1)

    lines = [
        f"Corpus sizes: {source}. Node budget T = {args.budget} per bucket, GraphSAINT units "
        f"for graphs above {max_unit} nodes; {args.epochs} epochs.",
        "",
        "Whole corpus dealt at once by `snake_partition` (max/mean load; random = permutation "
        "dealt round-robin, mean / worst over the epochs):",
        "",
        "| corpus | graphs | nodes | largest | buckets | whole graphs: snake (budget = mean load) "
        "| snake without budget | random | "
        "(LPT reference) | units: snake mean / worst | units: random mean / worst |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["corpora"].items():
        for nb in (8, 64):
            w = e["whole_graph"][nb]
            lines.append(
                f"| {name} | {e['graphs']} | {e['nodes']:,} | {e['largest']:,} | {nb} | "
                f"{w['snake']:.4f} | {w['snake_budget_free']:.4f} | "
                f"{w['random_mean']:.3f} / {w['random_max']:.3f} | "
                f"{w['greedy_reference']:.4f} | "
                f"{w['units_snake_mean']:.4f} / {w['units_snake_max']:.4f} | "
                f"{w['units_random_mean']:.3f} / {w['units_random_max']:.3f} |"
            )
    lines += [
        "",
        f"Per step: `DistributedSSSampler` (snake) vs the same steps dealt at random, T = "
        f"{args.budget} (max/mean per step, mean / p95 / max over all full steps; fill = mean "
        "load / T; random ignores the budget, so it overflows T):",
        "",
        "| corpus | buckets | snake | random | fill snake / random | random buckets > T | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in results["corpora"].items():
        for nb in (8, 64):
            sn, rn = e["per_step"][nb]["snake"], e["per_step"][nb]["random"]
            lines.append(
                f"| {name} | {nb} | "
                f"{sn['ratio_mean']:.3f} / {sn['ratio_p95']:.3f} / {sn['ratio_max']:.3f} | "
                f"{rn['ratio_mean']:.3f} / {rn['ratio_p95']:.3f} / {rn['ratio_max']:.3f} | "
                f"{sn['fill_mean']:.3f} / {rn['fill_mean']:.3f} | "
                f"{rn['buckets_over_budget']} | {sn['steps']} |"
            )
    table = "\n".join(lines)
    print(table)
    print(f"\n({results['seconds']} s)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(results))
    for e in slim["corpora"].values():
        for s in e["per_step"].values():
            for a in s.values():
                a.pop("ratios")
    (out / "snake_sampler.json").write_text(json.dumps(slim, indent=2))
    (out / "snake_sampler.md").write_text(table + "\n")
    _plot(results, out / "snake_sampler.png")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (name, e) in zip(axes, results["corpora"].items(), strict=True):
        data, labels = [], []
        for nb in (8, 64):
            for a in ("snake", "random"):
                data.append(e["per_step"][nb][a]["ratios"])
                labels.append(f"{a}\n{nb} buckets")
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.axhline(1.05, color="gray", ls="--", lw=0.8)
        ax.set_title(f"{name}: {e['graphs']} graphs, {e['nodes']:,} nodes")
        ax.set_yscale("log")
        ax.set_ylabel("max / mean bucket load per step")
    fig.suptitle(
        f"DistributedSSSampler vs random assignment, T={results['budget']}, "
        f"{results['epochs']} epochs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
