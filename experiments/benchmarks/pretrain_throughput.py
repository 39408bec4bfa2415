"""Pretraining throughput of this checkout against another revision, side by side.

Runs the README main job (``jaxfm pretrain``, small model, synthetic SBM corpus) from each source
tree in turn (A B A B ...), so both see the same machine load, twice per round: for ``--short``
and for ``--steps`` steps. The wall-clock difference of the two runs divided by the extra steps
is the time of a training step with everything around it (batch preparation, logging,
checkpoints), free of start-up and compilation and of how each revision defines its own
``tokens_per_s`` log field. Reports seconds per step per tree and the ratio.

    git worktree add /tmp/jaxfm-before a2dacd5
    python experiments/benchmarks/pretrain_throughput.py --baseline /tmp/jaxfm-before --steps 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(src: Path, steps: int, workdir: Path) -> float:
    """Wall-clock seconds of one ``jaxfm pretrain --steps steps`` run from source tree ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "jaxfm.cli", "pretrain", "--steps", str(steps),
           "--workdir", str(workdir), "--no-progress",
           "--checkpoint-every", str(steps)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=src, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", required=True, help="source tree of the other revision")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--short", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    trees = {"baseline": Path(args.baseline).resolve(), "this": REPO}
    per_step: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, src in trees.items():
                short = run(src, args.short, Path(tmp) / f"{name}{r}s")
                long = run(src, args.steps, Path(tmp) / f"{name}{r}l")
                per_step[name].append((long - short) / (args.steps - args.short))
    med = {k: statistics.median(v) for k, v in per_step.items()}
    print(f"| tree | seconds per step ({args.steps} - {args.short} steps, {args.rounds} rounds) |")
    print("|---|---|")
    for k in trees:
        print(f"| {k} | {med[k]:.3f} |")
    print(f"\nthroughput ratio this / baseline: {med['baseline'] / med['this']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
