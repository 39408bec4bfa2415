"""Pretraining throughput of this checkout against another revision, side by side.

Runs the README main job (``jaxfm pretrain``, small model, synthetic SBM corpus) for ``--steps``
steps from each source tree in turn (A B A B ...), so both see the same machine load, and reports
the median ``tokens_per_s`` of the steps after ``--skip`` (compilation) and the ratio.

    git worktree add /tmp/jaxfm-before a2dacd5
    python experiments/benchmarks/pretrain_throughput.py --baseline /tmp/jaxfm-before --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(src: Path, steps: int, workdir: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(src), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "jaxfm.cli", "pretrain", "--steps", str(steps),
           "--workdir", str(workdir), "--no-progress",
           "--checkpoint-every", str(steps)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=src, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", required=True, help="source tree of the other revision")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="first steps left out (compilation)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    trees = {"baseline": Path(args.baseline).resolve(), "this": REPO}
    got: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, src in trees.items():
                rates = run(src, args.steps, Path(tmp) / f"{name}{r}")
                got[name] += rates[args.skip :]
    med = {k: statistics.median(v) for k, v in got.items()}
    print("| tree | steps measured | median tokens/s |")
    print("|---|---|---|")
    for k in trees:
        print(f"| {k} | {len(got[k])} | {med[k]:,.0f} |")
    print(f"\nratio this / baseline: {med['this'] / med['baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
