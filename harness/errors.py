"""The user-mistake exception and the one formatter of an exception as one line.

Library code raises ``UserError`` about a *setting* and its *value* (the
setting's name is a field of ``harness.config.CompareConfig``, e.g. ``ctx``)
and says what is wrong and what to do, without command-line words; the CLI
turns the setting into its flag (``--ctx 1: ...``). Errors about things that
are no setting (a stored run, a results file) leave ``setting`` out.
"""

from __future__ import annotations

from typing import Any

# The longest one-line error kept in a result row or a skip reason.
MAX_ONE_LINE_CHARS = 500


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2.

    ``UserError("a window needs at least 2 tokens; pass 2 or more", setting="ctx", value=1)``
    reads ``ctx=1: ...`` to a library caller and ``--ctx 1: ...`` on the command line.
    """

    def __init__(self, problem: str, *, setting: str | None = None, value: Any = None):
        super().__init__(problem)
        self.problem = problem
        self.setting = setting
        self.value = value

    def __str__(self) -> str:
        if self.setting is None:
            return self.problem
        return f"{self.setting}={self.value}: {self.problem}"

    def for_cli(self) -> str:
        """The message with the setting spelled as its command-line flag."""
        if self.setting is None:
            return self.problem
        flag = flag_name(self.setting)
        shown = "" if self.value is None or isinstance(self.value, bool) else f" {self.value}"
        return f"{flag}{shown}: {self.problem}"


# A field's unit ends its name (``timeout_s``); its flag leaves the unit to the help text (``--timeout S``).
UNIT_SUFFIXES = ("_s", "_pct", "_mb")


def flag_name(setting: str) -> str:
    """The command-line flag of a configuration field: ``max_tokens`` -> ``--max-tokens``, ``timeout_s`` -> ``--timeout``."""
    for suffix in UNIT_SUFFIXES:
        setting = setting.removesuffix(suffix)
    return "--" + setting.replace("_", "-")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (whitespace folded, cut at ``MAX_ONE_LINE_CHARS``)."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= MAX_ONE_LINE_CHARS else line[: MAX_ONE_LINE_CHARS - 1] + "…"
