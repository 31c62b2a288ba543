"""Command line: ``python -m harness {prepare,compare,history,show,diff}``.

Only argument parsing and dispatch live here; every command imports its heavy
modules when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.errors import UserError

# compare's default budgets: all 13 variants of the default model within 5 minutes on 2 cores, with room
# for a machine running 15% slow (README gives the measured wall times).
DEFAULT_MAX_TOKENS = 1024
DEFAULT_PROMPT_TOKENS = 512
DEFAULT_GEN_TOKENS = 32


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


def _fraction_pct(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 5 or 2.5") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _megabytes(text: str) -> float:
    units = {"gb": 1024.0, "g": 1024.0, "mb": 1.0, "m": 1.0}
    lowered = text.strip().lower()
    scale = next((v for k, v in units.items() if lowered.endswith(k)), 1.0)
    number = lowered.rstrip("gbm")
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 800, 800MB or 2GB") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser)

    prepare = commands.add_parser("prepare", help="build and cache every variant of a model")
    _add_model_args(prepare)
    prepare.add_argument("--json", action="store_true", help="print the manifests as JSON instead of a table")
    prepare.set_defaults(run=_run_prepare)

    compare = commands.add_parser("compare", help="measure every variant and print the accuracy-efficiency table")
    _add_model_args(compare)
    text = compare.add_argument_group("text scored for accuracy")
    text.add_argument("--text", default=None, help="a UTF-8 text file, a WikiText raw file (wiki.*.raw) or JSONL")
    text.add_argument("--text-field", default="text", help="the JSONL field holding the text (default: text)")
    text.add_argument("--dataset", default=None, choices=["wikitext-2"],
                      help="a named corpus: a local copy (or $HARNESS_WIKITEXT2), else the datasets library")
    text.add_argument("--protocol", default="chunked", choices=["chunked", "strided"],
                      help="chunked: llama-perplexity's windows (default); strided: sliding windows")
    text.add_argument("--ctx", type=_positive_int, default=512, help="tokens per window (default 512)")
    text.add_argument("--stride", type=_positive_int, default=None, help="strided protocol step (default ctx/2)")
    text.add_argument("--max-tokens", type=_positive_int, default=None,
                      help=f"score at most the first N tokens of the text (default {DEFAULT_MAX_TOKENS} "
                           "when neither --max-chunks nor --full is given)")
    text.add_argument("--max-chunks", type=_positive_int, default=None, help="score at most N windows")
    text.add_argument("--full", action="store_true", help="score the whole text (no token budget)")
    speed = compare.add_argument_group("speed")
    speed.add_argument("--prompt-tokens", type=_positive_int, default=DEFAULT_PROMPT_TOKENS,
                       help=f"prefill prompt length (default {DEFAULT_PROMPT_TOKENS})")
    speed.add_argument("--gen-tokens", type=_positive_int, default=DEFAULT_GEN_TOKENS,
                       help=f"tokens generated per decode run (default {DEFAULT_GEN_TOKENS})")
    speed.add_argument("--repetitions", type=_positive_int, default=5, help="measured repetitions (default 5)")
    speed.add_argument("--warmup", type=int, default=1, help="discarded warm-up runs (default 1)")
    speed.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the runtimes run")
    speed.add_argument("--timeout", type=_positive_int, default=900,
                       help="seconds one variant may take before it counts as failed (default 900)")
    answer = compare.add_argument_group("answer")
    answer.add_argument("--reference", default=None,
                        help="variant that KLD and ΔPPL are measured against, added to the run when missing "
                             "(default: llamacpp-f32, else the full-precision variant of the first available "
                             "runtime); `none`: PPL only")
    answer.add_argument("--max-ppl-increase", type=_fraction_pct, default=5.0,
                        help="PPL increase over the reference, in %%, a recommendation may accept (default 5)")
    answer.add_argument("--memory-budget", type=_megabytes, default=None,
                        help="peak memory allowed for the most-accurate recommendation, e.g. 800MB or 2GB")
    answer.add_argument("--out", default=None, help="output folder (default ./harness-results/<timestamp>)")
    answer.add_argument("--json", default=None, metavar="PATH", help="also write report.json to PATH (- for stdout)")
    answer.add_argument("--resume", action="store_true",
                        help="continue the run in --out (default: the newest in ./harness-results) "
                             "without redoing finished variants")
    answer.add_argument("--store", default=None, help="results store (default: harness.sqlite in the user data dir)")
    compare.set_defaults(run=_run_compare)

    history = commands.add_parser("history", help="list the stored runs")
    history.add_argument("--store", default=None, help="results store file")
    history.set_defaults(run=_run_history)
    show = commands.add_parser("show", help="print a stored run's table")
    show.add_argument("run_id", metavar="RUN", help="a run id or a unique prefix of one")
    show.add_argument("--store", default=None, help="results store file")
    show.set_defaults(run=_run_show)
    diff = commands.add_parser("diff", help="what changed per variant between two stored runs")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.add_argument("--store", default=None, help="results store file")
    diff.set_defaults(run=_run_diff)
    return parser


def _run_prepare(args: argparse.Namespace) -> int:
    from harness.prepare_command import run_prepare

    return run_prepare(args)


def _run_compare(args: argparse.Namespace) -> int:
    from harness.compare_command import run_compare

    return run_compare(args)


def _run_history(args: argparse.Namespace) -> int:
    from harness import store

    print(store.render_history(store.list_runs(args.store)))
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from harness import report, store

    print(report.render_text(store.load(args.run_id, args.store)))
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    from harness import store

    run_a, run_b = store.load(args.run_a, args.store), store.load(args.run_b, args.store)
    print(store.render_diff(store.diff(run_a, run_b)))
    return 0


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
    except BrokenPipeError:  # `... | head` closed the pipe: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
