"""The ``jaxfm`` command. Thin: it parses arguments and calls library functions.

jaxfm fimp train --task {expression,celltype,fmri,image} --data PATH|synthetic [...]
jaxfm fimp attention-map --model DIR --out DIR [...]
jaxfm convert {vit,scgpt,brainlm} SRC OUT [--verify GOLDEN.npz]
jaxfm pretrain [--config NAME] [--data PATH ...] [--steps N] [--workdir DIR] [--resume]
jaxfm finetune --mode {mft,nft} --checkpoint DIR --dataset PATH [--output-json FILE]
jaxfm embed --checkpoint DIR --dataset PATH --out FILE.npy              (GraphFM)
jaxfm embed --model fimp-vit --checkpoint OUT --data PATH --out FILE.npy (zero-shot FIMP)
jaxfm graphfm summary --config NAME
"""

from __future__ import annotations

import argparse
import sys

from jaxfm.cli import fimp, graphfm

__all__ = ["main"]


def _convert(args) -> int:
    try:
        from converters.cli import main as convert_main
    except ImportError as e:  # converters ship with the repository checkout
        raise ValueError(
            "jaxfm convert needs the `converters` package from the jaxfm repository "
            f"(install jaxfm from a checkout: pip install -e .): {e}"
        ) from e
    return convert_main(args.convert_args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxfm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    graphfm.add_parsers(sub)
    fimp.add_parser(sub)
    c = sub.add_parser(
        "convert",
        help="port a PyTorch checkpoint (ViT, scGPT, BrainLM) to a Flax model directory",
        add_help=False,
    )
    c.add_argument("convert_args", nargs=argparse.REMAINDER)
    c.set_defaults(func=_convert)
    return p


def _route_embed(argv: list[str]) -> list[str]:
    """`jaxfm embed --model fimp-*` is `jaxfm fimp embed` (zero-shot FIMP); default: GraphFM."""
    if not argv or argv[0] != "embed":
        return argv
    rest = argv[1:]
    model = next(
        (rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--model"),
        next((a.split("=", 1)[1] for a in rest if a.startswith("--model=")), "graphfm"),
    )
    if not model.startswith("fimp-"):
        return ["embed"] + [a for a in rest if a not in ("--model", "graphfm", "--model=graphfm")]
    return ["fimp", "embed"] + ["--data" if a == "--dataset" else a for a in rest]


def main(argv: list[str] | None = None) -> int:
    argv = _route_embed(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"jaxfm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
