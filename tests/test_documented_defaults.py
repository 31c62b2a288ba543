"""Every default the documentation states beside a flag is the configuration's own (``harness.config``).

The README and ``docs/`` write a flag's default in parentheses after it, as
"`--ctx N` (512)" or "`--[no-]llamacpp-use-mmap` (on)"; each such pair is read
here and held against the flag compare's parser derives from the configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import cli
from harness.config import CompareConfig

REPO = Path(__file__).resolve().parent.parent
# `--flag ARG` (512), (900 per variant), `--[no-]flag` (on), (f16): a number, or one word alone in the parentheses
STATED = re.compile(r"`--(?:\[no-\])?([a-z0-9-]+)[^`]*` \((\d+(?:\.\d+)?(?=[ )])|[A-Za-z0-9_]+(?=\)))")
# Defaults the command derives: --max-tokens applies its budget only when neither --max-chunks nor --full is given.
DERIVED = {"--max-tokens": CompareConfig().token_budget}


def _documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def stated_defaults() -> list[tuple[str, str, str]]:
    """(document, flag, stated value) for every default the documents state."""
    return [(path.name, f"--{flag}", value) for path in _documents() for flag, value in STATED.findall(path.read_text())]


def _compare_actions() -> dict:
    compare = cli.build_parser()._subparsers._group_actions[0].choices["compare"]
    return {option: action for action in compare._actions for option in action.option_strings}


def _agrees(stated: str, default) -> bool:
    if isinstance(default, bool):
        return stated == ("on" if default else "off")
    if isinstance(default, (int, float)):
        try:
            return float(stated) == float(default)
        except ValueError:
            return False
    return stated == str(default)


def test_the_documents_state_the_defaults_of_the_common_flags():
    flags = {flag for _, flag, _ in stated_defaults()}
    assert {"--ctx", "--max-tokens", "--prompt-tokens", "--gen-tokens", "--repetitions", "--speed-budget",
            "--timeout", "--max-ppl-increase"} <= flags


@pytest.mark.parametrize("document, flag, stated", stated_defaults())
def test_a_stated_default_is_the_configurations(document, flag, stated):
    actions = _compare_actions()
    assert flag in actions, f"{document} names {flag}, which compare does not have"
    default = DERIVED.get(flag, actions[flag].default)
    assert _agrees(stated, default), f"{document} says {flag} defaults to {stated}; the configuration says {default!r}"
