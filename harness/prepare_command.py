"""``python -m harness prepare``: build the variants, with a progress line per variant and a summary."""

from __future__ import annotations

import json
import sys
import time

from tabulate import tabulate

from harness.sources import resolve_source
from harness.variants import prepare


def run_prepare(args) -> int:
    source = resolve_source(args.model)
    result = prepare_with_progress(source, args.variants, args.cache_dir, args.threads)
    if args.json:
        print(json.dumps({name: v.to_dict() for name, v in result.variants.items()}, indent=2))
    else:
        rows = [
            [v.name, v.runtime, v.precision, f"{v.size_bytes / 1e6:.1f}", f"{v.bits_per_weight:.2f}",
             "built" if v.name in result.built else "cached"]
            for v in result.variants.values()
        ]
        print(tabulate(rows, headers=["variant", "runtime", "precision", "size MB", "bits/weight", "this run"]))
        print(f"cache: {result.model_dir}")
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 1 if result.skipped else 0


def prepare_with_progress(source, names, cache, threads):
    """``variants.prepare`` with one progress bar per variant on stderr."""
    from tqdm import tqdm

    bars = {}

    def on_event(name: str, state: str) -> None:
        if state == "building":
            bars[name] = tqdm(total=1, desc=f"{name:<16}", file=sys.stderr, leave=True,
                              bar_format="{desc} {bar} {elapsed} {postfix}", disable=None)
            bars[name].set_postfix_str("building")
            bars[name].start_t = time.time()
            return
        bar = bars.pop(name, None)
        if bar is not None:
            bar.set_postfix_str(state)
            bar.update(1)
            bar.close()

    _quiet_libraries()
    return prepare(source, names, cache, threads, on_event)


def _quiet_libraries() -> None:
    """The libraries' own per-tensor progress bars would drown ours."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
