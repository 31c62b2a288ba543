"""Command line: ``python -m harness {prepare,compare,history,show,diff}``.

The flags of ``prepare`` and ``compare`` are derived from the fields of
``harness.config`` (name, default, help), so no default is written here. Every
command imports its heavy modules when it runs, so ``--help`` stays fast.

Exit status: 0 when every variant is ok; 1 when a command finished but some
variant failed, was not built, or its runtime is unavailable (the table,
files and store are written all the same); 2 for a mistake in the input
(one line on stderr, nothing measured); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

from harness.config import CompareConfig, PrepareConfig
from harness.errors import UserError, flag_name

GROUP_TITLES = {
    "text": "text scored for accuracy",
    "speed": "speed",
    "sweep": "operating points (speed at each; see docs/commands.md#sweep)",
    "tasks": "lm-evaluation-harness tasks (accuracy on them, paired with the reference by document)",
    "answer": "the answer",
    "output": "output",
    "cluster": "cluster",
}


# ---- reading a flag's text --------------------------------------------------------------------
def _whole_number(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one variant name, comma-separated")
    return names


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 5 or 2.5") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _size_mb(text: str) -> float:
    units = {"gb": 1024.0, "g": 1024.0, "mb": 1.0, "m": 1.0}
    lowered = text.strip().lower()
    scale = next((v for k, v in units.items() if lowered.endswith(k)), 1.0)
    try:
        value = float(lowered.rstrip("gbm")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 800, 800MB or 2GB") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "positive_int": _positive_int, "count": _count, "names": _names, "percent": _percent, "size_mb": _size_mb,
}


# ---- flags from fields --------------------------------------------------------------------------
def _help(f: dataclasses.Field, default: Any) -> str:
    text = f.metadata.get("help", "").replace("%", "%%")
    shown = f"{default:g}" if isinstance(default, float) else default
    if default is True and "(default" not in text:
        return f"{text} (default on)"
    if default is None or isinstance(default, bool) or "(default" in text:
        return text
    return f"{text} (default {shown})"


def _add_field(parser, f: dataclasses.Field, dest: str, default: Any, flag: str) -> None:
    kwargs: dict[str, Any] = {"dest": dest, "default": default, "help": _help(f, default)}
    if f.metadata.get("repeat"):
        kwargs.update(action="append", metavar=f.metadata.get("metavar", "VALUE"))
    elif isinstance(default, bool) and default:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, bool):
        kwargs["action"] = "store_true"
    else:
        parse = f.metadata.get("parse")
        choices = f.metadata.get("choices")
        if parse:
            kwargs["type"] = PARSERS[parse]
        elif isinstance(default, int):
            kwargs["type"] = _count
        if choices:
            kwargs["choices"] = list(choices)
        else:
            kwargs["metavar"] = f.metadata.get("metavar", "N" if isinstance(default, int) else "VALUE")
    parser.add_argument(flag, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of ``config_class``; a runtime's settings become ``--<runtime>-<setting>`` flags."""
    groups: dict[str, Any] = {}
    defaults = config_class()
    for f in dataclasses.fields(config_class):
        if f.metadata.get("runtime_settings"):
            group = parser.add_argument_group(f"{f.metadata['help']} settings")
            settings = getattr(defaults, f.name)
            for inner in dataclasses.fields(settings):
                name = f"{f.name}_{inner.name}"
                _add_field(group, inner, name, getattr(settings, inner.name), flag_name(name))
            continue
        title = f.metadata.get("group")
        target = parser if title is None else groups.setdefault(title, parser.add_argument_group(GROUP_TITLES[title]))
        _add_field(target, f, f.name, getattr(defaults, f.name), flag_name(f.name))


def config_from_args(config_class: type, args: argparse.Namespace):
    """The frozen configuration the parsed flags describe; a bad value is a ``UserError`` naming its flag."""
    values = {}
    for f in dataclasses.fields(config_class):
        if f.metadata.get("runtime_settings"):
            settings_class = type(f.default_factory())  # type: ignore[misc]
            inner = {i.name: getattr(args, f"{f.name}_{i.name}") for i in dataclasses.fields(settings_class)}
            try:
                values[f.name] = settings_class(**inner)
            except ValueError as exc:
                raise UserError(f"{exc}", setting=f"{f.name}_settings") from None
        else:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if f.metadata.get("repeat") and value is not None else value
    return config_class(**values)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _store_flag(parser: argparse.ArgumentParser) -> None:
    store = next(f for f in dataclasses.fields(CompareConfig) if f.name == "store")
    parser.add_argument(flag_name("store"), default=None, metavar="FILE", help=_help(store, None))


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser)

    prepare = commands.add_parser("prepare", help="build and cache every variant of a model")
    add_config_flags(prepare, PrepareConfig)
    prepare.set_defaults(run=_run_prepare)

    compare = commands.add_parser("compare", help="measure every variant and print the accuracy-efficiency table")
    add_config_flags(compare, CompareConfig)
    compare.set_defaults(run=_run_compare)

    history = commands.add_parser("history", help="list the stored runs")
    _store_flag(history)
    history.set_defaults(run=_run_history)
    show = commands.add_parser("show", help="print a stored run's table, or one variant's divergence statistics")
    show.add_argument("run_id", metavar="RUN", help="a run id or a unique prefix of one")
    show.add_argument("--variant", metavar="NAME", default=None,
                      help="print this variant's statistics against the reference, as llama-perplexity lays them out")
    _store_flag(show)
    show.set_defaults(run=_run_show)
    diff = commands.add_parser("diff", help="what changed per variant between two stored runs")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    _store_flag(diff)
    diff.set_defaults(run=_run_diff)
    return parser


def _run_prepare(args: argparse.Namespace) -> int:
    from harness.prepare import run_prepare

    return run_prepare(config_from_args(PrepareConfig, args))


def _run_compare(args: argparse.Namespace) -> int:
    from harness.compare import run_compare

    return run_compare(config_from_args(CompareConfig, args))


def _run_history(args: argparse.Namespace) -> int:
    from harness import report, store

    print(report.render_history(store.list_runs(args.store)))
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from harness import report, store

    run = store.load(args.run_id, args.store)
    if args.variant is None:
        print(report.render_text(run))
        return 0
    matches = run.rows_named(args.variant)
    if len(matches) != 1:
        labels = ", ".join(run.label(r) for r in run.results) or "none"
        problem = "names a variant of several models; give model/variant" if matches else "is not in it"
        raise UserError(f"run {run.run_id}: {args.variant!r} {problem}; its variants: {labels}",
                        setting="variant", value=args.variant)
    row = matches[0]
    view = run.for_model(row.model)
    reference_row = view.row(view.reference) if view.reference else None
    tokens = row.accuracy.tokens_scored if row.accuracy is not None else report.ABSENT
    print(f"run {run.run_id}: {run.label(row)} against {view.reference or 'no reference'}, {tokens} tokens scored "
          f"of {run.corpus.name or report.ABSENT} (ctx {run.corpus.ctx or report.ABSENT})")
    print("\n".join(report.divergence_lines(row, reference_row) + report.task_lines(row, reference_row)))
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    from harness import report, store

    run_a, run_b = store.load(args.run_a, args.store), store.load(args.run_b, args.store)
    print(report.render_diff(store.diff(run_a, run_b)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse prints usage + one error line, exits 2
    try:
        return args.run(args)
    except UserError as exc:
        print(f"error: {exc.for_cli()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the command again to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
