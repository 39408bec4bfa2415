"""Command line: ``convert {vit,scgpt,brainlm} SRC OUT [--verify GOLDEN.npz] [family options]``.

Exit status: 0 converted (and verified); 1 verification mismatch (OUT is not written); 2 bad
usage or a conversion error (message on stderr; OUT untouched).

OUT must be absent, empty, or (with ``--overwrite``) an earlier jaxfm model directory; it may not
be, contain or lie inside SRC. Anything else is refused before the conversion starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from converters.base import FAMILIES, check_output_dir, load_family, write_model_dir
from converters.errors import ConversionError
from converters.sources import resolve_source
from converters.verify import VerifyRow, all_ok, format_table, load_golden

__all__ = ["build_parser", "main"]

DEFAULT_HUB_FILES = ("*.json", "*.safetensors", "*.bin", "*.pt", "*.pth")


class _VerifyFailed(Exception):
    def __init__(self, rows: list[VerifyRow]):
        super().__init__("verification failed")
        self.rows = rows


def build_parser(family_module=None) -> argparse.ArgumentParser:
    """The ``convert`` parser; a family module may add options via ``add_arguments(parser)``."""
    parser = argparse.ArgumentParser(
        prog="jaxfm convert",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Convert a PyTorch / safetensors checkpoint to a jaxfm (Flax) model "
        "directory. No PyTorch needed; pickled code is never executed.",
    )
    parser.add_argument("family", choices=sorted(FAMILIES), help="model family")
    parser.add_argument("src", help="checkpoint file or directory, or a Hugging Face hub id")
    parser.add_argument(
        "out",
        type=Path,
        help="output model directory (written atomically); must be absent, empty, or an earlier "
        "jaxfm model directory with --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is an earlier jaxfm model directory (other files are never "
        "replaced)",
    )
    parser.add_argument(
        "--verify",
        metavar="GOLDEN.npz",
        type=Path,
        help="run the converted model on the golden inputs and compare every golden tensor; "
        "OUT is written only if all match",
    )
    if family_module is not None and hasattr(family_module, "add_arguments"):
        family_module.add_arguments(parser)
    return parser


def _family_options(module, args: argparse.Namespace) -> dict:
    base = {"family", "src", "out", "verify", "overwrite"}
    return {k: v for k, v in vars(args).items() if k not in base}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the converter CLI (``argv`` may start with the word ``convert``).

    Returns:
      The exit status (0 ok, 1 verification mismatch, 2 error).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        argv = argv[1:]
    try:
        known, _ = build_parser().parse_known_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        module = load_family(known.family)
    except (ConversionError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = build_parser(module)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        src = resolve_source(args.src, filenames=getattr(module, "HUB_FILES", DEFAULT_HUB_FILES))
        check_output_dir(args.out, src=src, overwrite=args.overwrite)
        golden = load_golden(args.verify) if args.verify is not None else None
        converted = module.convert(src, **_family_options(module, args))
        for line in converted.report:
            print(line)

        def check(staged: Path) -> list[VerifyRow]:
            rows = module.verify(staged, golden)
            if not all_ok(rows):
                raise _VerifyFailed(rows)
            return rows

        rows = write_model_dir(
            converted,
            args.out,
            check=check if golden is not None else None,
            release_params=True,
            src=src,
            overwrite=args.overwrite,
        )
    except _VerifyFailed as e:
        print(format_table(e.rows))
        bad = [r.name for r in e.rows if not r.ok] or ["(no golden tensor was compared)"]
        print(
            f"error: verification against {args.verify} failed for {', '.join(bad)}; "
            f"{args.out} was not written",
            file=sys.stderr,
        )
        return 1
    except (ConversionError, ValueError, OSError) as e:  # OSError: e.g. a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    if rows is not None:
        print(format_table(rows))
        print(f"verified {len(rows)} tensors against {args.verify}: all within tolerance")
    return 0
