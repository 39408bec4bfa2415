"""The ``jaxfm`` command. Thin: it parses arguments and calls library functions.

jaxfm pretrain [--config NAME] [--data PATH ...] [--steps N] [--workdir DIR] [--resume]
jaxfm finetune --mode {mft,nft} --model-dir DIR --data PATH [--output-json FILE]
jaxfm embed --model-dir DIR --data PATH --out FILE.npy                 (GraphFM)
jaxfm embed --model fimp-vit --model-dir OUT --data PATH --out FILE.npy (zero-shot FIMP)
jaxfm fimp train --task {expression,celltype,fmri,image} --data PATH|synthetic [...]
jaxfm fimp attention-map --model-dir DIR --out DIR [...]
jaxfm convert {vit,scgpt,brainlm} SRC OUT [--verify GOLDEN.npz]
jaxfm graphfm summary --config NAME

One vocabulary: --data is a dataset, --model-dir a model directory (a run's WORKDIR is understood
too: its model/ folder is used), --config/--variant a size preset. The older spellings --dataset
and --checkpoint are accepted as aliases. `--resume --workdir DIR` repeats the run recorded in
DIR/run.json. Outputs go under runs/ by default. Compiled programs are cached on disk
(``~/.cache/jaxfm/xla``; see :mod:`jaxfm.compilation_cache`).
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
    from jaxfm import __version__

    p = argparse.ArgumentParser(
        prog="jaxfm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"jaxfm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    graphfm.add_parsers(sub)
    fimp.add_parser(sub)
    c = sub.add_parser(
        "convert",
        help="port a PyTorch checkpoint (ViT, scGPT, BrainLM) to a Flax model directory "
        "(`jaxfm convert --help` for its arguments)",
        add_help=False,
    )
    c.add_argument("convert_args", nargs=argparse.REMAINDER)
    c.set_defaults(func=_convert)
    return p


FIMP_EMBED_MODELS = ("fimp-vit", "fimp-scgpt", "fimp-brainlm")


def _route_embed(argv: list[str]) -> list[str]:
    """`jaxfm embed --model fimp-*` is `jaxfm fimp embed` (zero-shot FIMP); default: GraphFM.

    Only the value of ``--model`` decides; every other argument is passed on unchanged.
    """
    if not argv or argv[0] != "embed":
        return argv
    rest = argv[1:]
    model = None
    for i, a in enumerate(rest):
        if a == "--model" and i + 1 < len(rest):
            model = rest[i + 1]
        elif a.startswith("--model="):
            model = a.split("=", 1)[1]
    if model in FIMP_EMBED_MODELS:
        return ["fimp", "embed", *rest]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # the converter owns its arguments, --help included
        return _convert(argparse.Namespace(convert_args=argv[1:]))
    argv = _route_embed(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    from jaxfm.cli.resume import given_dests

    args.given = given_dests(parser, argv)  # the flags typed, for --resume's checks
    from jaxfm.compilation_cache import enable_compilation_cache

    enable_compilation_cache()  # $JAXFM_COMPILATION_CACHE=off disables it
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"jaxfm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
