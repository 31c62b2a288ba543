"""``python -m harness prepare``: build the variants, with progress per variant and a summary.

Progress goes to stderr: a bar per variant on a terminal, else (CI, a log file)
one plain line per variant as it is built, found unavailable or skipped. A variant found in the
cache shows neither, so a run with nothing to build keeps stderr for its result
(and an error stays the one line there).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from tabulate import tabulate

from harness.build.sources import Source, resolve_source
from harness.build.variants import PrepareResult, prepare


def run_prepare(config) -> int:
    """Build what ``config`` asks for; the exit status is 1 when a variant was skipped or is unavailable.

    ``config`` has the attributes ``model``, ``variants``, ``cache_dir``, ``threads`` and ``json``.
    """
    sources = [resolve_source(model) for model in config.sources]  # every model checked before any is built
    names = list(config.variants) if config.variants else None
    status = 0
    for source in sources:
        status = max(status, _prepare_one(source, names, config))
    return status


def _prepare_one(source: Source, names: list[str] | None, config) -> int:
    result = prepare_with_progress(source, names, config.cache_dir, config.threads)
    if config.json:
        print(json.dumps({name: v.to_dict() for name, v in result.variants.items()}, indent=2))
    else:
        rows = [
            [v.name, v.runtime, v.precision, f"{v.size_bytes / 1e6:.1f}", f"{v.bits_per_weight:.2f}",
             "built" if v.name in result.built else "cached"]
            for v in result.variants.values()
        ]
        print(tabulate(rows, headers=["variant", "runtime", "precision", "size MB", "bits/weight", "this run"]))
        print(f"cache: {result.model_dir}")
    for name, reason in result.unavailable.items():  # its runtime cannot take this model
        print(f"unavailable {name}: {reason}", file=sys.stderr)
    for name, reason in result.skipped.items():  # its build failed
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 1 if result.skipped or result.unavailable else 0


def prepare_with_progress(source: Source, names: list[str] | None, cache, threads: int | None,
                          device: str = "cpu") -> PrepareResult:
    """``variants.prepare`` with progress on stderr: bars on a terminal, else one line per variant built or skipped.

    ``device``: whose catalogue (``variants.catalogue``); a GPU has its own ONNX variants.
    """
    _never_reach_a_model_hub()
    _quiet_libraries()
    on_event = _progress_bars() if sys.stderr.isatty() else _progress_lines()
    return prepare(source, names, cache, threads, on_event, device)


def _progress_bars() -> Callable[[str, str], None]:
    from tqdm import tqdm

    bars = {}

    def on_event(name: str, state: str) -> None:
        if state == "building":
            bars[name] = tqdm(total=1, desc=f"{name:<16}", file=sys.stderr, leave=True,
                              bar_format="{desc} {bar} {elapsed} {postfix}")
            bars[name].set_postfix_str("building")
            return
        bar = bars.pop(name, None)
        if bar is not None:
            bar.set_postfix_str(state)
            bar.update(1)
            bar.close()

    return on_event


def _progress_lines(clock: Callable[[], float] = time.perf_counter) -> Callable[[str, str], None]:
    """One line per variant built, skipped or unavailable: "built torch-fp32 in 12.3 s",
    "skipped ort-int4 after 3.1 s: <reason>", "unavailable llamacpp-f32 after 2.0 s: <reason>".

    Unavailable lines wait for a variant that is built, cached or skipped: when no runtime
    can take the model, prepare ends in one error line instead (``variants.prepare``).
    """
    started: dict[str, float] = {}
    held: list[str] = []

    def on_event(name: str, state: str) -> None:
        if state == "building":
            started[name] = clock()
            return
        outcome, _, reason = state.partition(": ")
        line = f"{outcome} {name}"
        if name in started:
            line += f" {'in' if outcome == 'built' else 'after'} {clock() - started.pop(name):.1f} s"
        line += f": {reason}" if reason else ""
        if outcome == "unavailable":
            held.append(line)
            return
        for earlier in held + ([] if outcome == "cached" else [line]):
            print(earlier, file=sys.stderr, flush=True)
        held.clear()

    return on_event


def _never_reach_a_model_hub() -> None:
    """Builds convert local files only: nothing in this process (and its children) may reach a model hub.

    The builders also ask transformers for local files only; this covers what
    they do not see (remote code, a library fetching a missing file). It holds
    for the rest of the process, since huggingface_hub reads it once, at import:
    ``compare`` loads its corpus, which may fetch WikiText-2, before it prepares.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _quiet_libraries() -> None:
    """The libraries' own per-tensor progress bars would drown ours."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
