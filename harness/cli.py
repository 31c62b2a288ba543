"""Command line: ``python -m harness {prepare,compare,history,show,diff}``.

Only argument parsing and dispatch live here; every command imports its heavy
modules when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _variant_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one variant name, comma-separated")
    return names


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="smollm2-135m (default), a local GGUF file, or a transformers model directory")
    parser.add_argument("--variants", type=_variant_list, default=None,
                        help="comma-separated variant names (default: all), e.g. llamacpp-q8_0,ort-int4")
    parser.add_argument("--cache-dir", default=None,
                        help="where variants are built and kept (default: $HARNESS_CACHE_DIR or ~/.cache/harness)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads for every runtime (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="build and cache every variant of a model")
    _add_model_args(prepare)
    prepare.add_argument("--json", action="store_true", help="print the manifests as JSON instead of a table")
    prepare.set_defaults(run=_run_prepare)
    return parser


def _run_prepare(args: argparse.Namespace) -> int:
    from harness.prepare_command import run_prepare

    return run_prepare(args)




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse prints usage + one error line, exits 2
    try:
        return args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the command again to continue", file=sys.stderr)
        return 130
