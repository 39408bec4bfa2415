"""Conversion benchmark (issue 4, point 6): convert + verify a ViT-B/16-sized checkpoint.

Builds a random ViT-B/16 (86M parameters) checkpoint in the HF layout as ``model.safetensors``
and - when PyTorch is installed - as a ``torch.save`` zip ``pytorch_model.bin``, then, for each,
runs in a fresh process what ``jaxfm convert vit SRC OUT`` does: read + map + strict merge,
atomic write, and a self-consistency verification (load OUT with ``load_pretrained`` and run the
model once on a batch of 2 images; no golden file). Reports wall time and peak RSS
(``getrusage``) against the checkpoint size. Goal: < 20 s and < 3x the checkpoint size.

Run:
    python experiments/benchmarks/convert_vit_base.py [--workdir DIR] [--formats safetensors bin]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D, LAYERS, HEADS, MLP, PATCH, IMAGE, CHANNELS = 768, 12, 12, 3072, 16, 224, 3


def _hf_state(seed: int = 0):
    """Random ViT-B/16 ``ViTModel`` state dict (HF key layout), float32, as a generator."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s, dtype=np.float32) * 0.02
    n = (IMAGE // PATCH) ** 2
    yield "embeddings.cls_token", r(1, 1, D)
    yield "embeddings.position_embeddings", r(1, n + 1, D)
    yield "embeddings.patch_embeddings.projection.weight", r(D, CHANNELS, PATCH, PATCH)
    yield "embeddings.patch_embeddings.projection.bias", r(D)
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            yield p + f"attention.attention.{name}.weight", r(D, D)
            yield p + f"attention.attention.{name}.bias", r(D)
        yield p + "attention.output.dense.weight", r(D, D)
        yield p + "attention.output.dense.bias", r(D)
        for name in ("layernorm_before", "layernorm_after"):
            yield p + f"{name}.weight", 1 + r(D)
            yield p + f"{name}.bias", r(D)
        yield p + "intermediate.dense.weight", r(MLP, D)
        yield p + "intermediate.dense.bias", r(MLP)
        yield p + "output.dense.weight", r(D, MLP)
        yield p + "output.dense.bias", r(D)
    yield "layernorm.weight", 1 + r(D)
    yield "layernorm.bias", r(D)
    yield "pooler.dense.weight", r(D, D)
    yield "pooler.dense.bias", r(D)


def _hf_config() -> dict:
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": D,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": MLP,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "image_size": IMAGE,
        "patch_size": PATCH,
        "num_channels": CHANNELS,
        "qkv_bias": True,
    }


def build_checkpoints(workdir: Path, formats: list[str]) -> dict[str, Path]:
    """Writes the checkpoint directories; returns ``{format: directory}``."""
    from safetensors.numpy import save_file

    state = dict(_hf_state())
    n_params = sum(v.size for v in state.values())
    print(f"built random ViT-B/16: {n_params / 1e6:.1f}M parameters", file=sys.stderr)
    dirs = {}
    if "safetensors" in formats:
        d = workdir / "hf_safetensors"
        d.mkdir(parents=True, exist_ok=True)
        save_file(state, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(_hf_config()))
        dirs["safetensors"] = d
    if "bin" in formats:
        try:
            import torch
        except ImportError:
            print("torch not installed: skipping the pytorch_model.bin layout", file=sys.stderr)
        else:
            d = workdir / "hf_bin"
            d.mkdir(parents=True, exist_ok=True)
            torch.save({k: torch.from_numpy(v) for k, v in state.items()}, d / "pytorch_model.bin")
            (d / "config.json").write_text(json.dumps(_hf_config()))
            dirs["bin"] = d
    return dirs


def _rss_mb() -> float:
    """Peak RSS of this process (Linux: KiB; note it is inherited across fork+exec, which is
    why checkpoints are built in a separate process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(src: Path, out: Path) -> dict:
    """One conversion in this (fresh) process: timings and peak RSS."""
    import jax

    from converters.base import write_model_dir
    from converters.vit import convert
    from jaxfm.foundation import load_pretrained

    baseline = _current_rss_mb()  # after importing jax, flax and the converters
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, IMAGE, IMAGE, CHANNELS)).astype(np.float32)
    times = {}

    def check(staged: Path):
        t = time.perf_counter()
        model, variables = load_pretrained(staged)  # parameters moved to jax one by one
        with jax.default_matmul_precision("highest"):
            outputs = jax.block_until_ready(model.apply(variables, images))
        ok = all(np.isfinite(np.asarray(v)).all() for v in outputs.values())
        if not ok or outputs["last_hidden_state"].shape != (2, 197, D):
            raise RuntimeError("self-consistency check failed")
        times["verify_s"] = time.perf_counter() - t

    t0 = time.perf_counter()
    converted = convert(src)
    times["convert_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    write_model_dir(converted, out, check=check, release_params=True)
    times["write_s"] = time.perf_counter() - t1 - times["verify_s"]
    times["total_s"] = time.perf_counter() - t0
    ckpt = next(p for p in src.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {
        **times,
        "checkpoint_mb": ckpt.stat().st_size / 2**20,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _rss_mb(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--formats", nargs="+", default=["safetensors", "bin"])
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.out)))
        return 0
    if args.build is not None:
        dirs = build_checkpoints(args.build, args.formats)
        print(json.dumps({k: str(v) for k, v in dirs.items()}))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convert_vit_base-"))
    try:
        cmd = [sys.executable, __file__, "--build", str(workdir), "--formats", *args.formats]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        dirs = {k: Path(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}
        rows = []
        for fmt, src in dirs.items():
            cmd = [
                sys.executable,
                __file__,
                "--measure",
                str(src),
                "--out",
                str(workdir / f"out_{fmt}"),
            ]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append((fmt, json.loads(res.stdout.strip().splitlines()[-1])))
        print(
            "| format | checkpoint MB | convert s | write s | verify s | total s | peak RSS MB "
            "| peak / ckpt | (peak - import baseline) / ckpt |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for fmt, r in rows:
            ck = r["checkpoint_mb"]
            extra = (r["peak_rss_mb"] - r["baseline_rss_mb"]) / ck
            print(
                f"| {fmt} | {ck:.0f} | {r['convert_s']:.2f} | {r['write_s']:.2f} | "
                f"{r['verify_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                f"{r['peak_rss_mb'] / ck:.2f}x | {extra:.2f}x |"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
