"""Is the speed tests' warm-up enough? The first measured prefill against the ones after it, per warm-up.

Each variant is loaded in a fresh process per warm-up kind, so its first-call
costs are real, then runs ``--reps`` prefills of ``--prompt-tokens``, each
followed by a decode, as ``harness.measure.efficiency`` measures them. The figure is
the first measured prefill's time over the median of the others: 1.00 means
the warm-up left nothing for the first measured run to pay. Warm-up kinds:

- ``none``: no warm-up;
- ``probe``: the probe prefill (``WARMUP_PROBE_TOKENS``) and a decode, what
  the harness runs when the probe projects a prefill of at least ``LONG_PREFILL_S``;
- ``full``: the probe, the full prompt and a decode, what it runs otherwise.

The ``rule`` column is the kind the harness picks for the variant, from the
probe's projection, and ``saved s`` what skipping the full prompt saves.
Passes alternate over the variants, so a drift in machine speed touches all.

    python benchmarks/bench_warmup.py                       # every prepared variant of the default model
    python benchmarks/bench_warmup.py --variant-dir DIR     # one or more variant directories
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import loaded_backend, prepared_variants, variant_from_dir

from harness.machine.environment import usable_cpus
from harness.manifest import Variant
from harness.measure.efficiency import (
    WARMUP_PROBE_TOKENS,
    _decode,
    _prefill_seconds,
    _prompt_drawer,
    warms_up_full_prompt,
)
from harness.text.tokenizer import speed_token_pool

KINDS = ("none", "probe", "full")


def run_child(variant_dir: str, kind: str, threads: int, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    """In this fresh process: load, warm up as ``kind`` says, then the measured prefills."""
    from harness.kernels import set_num_threads

    variant = Variant.load(variant_dir)
    set_num_threads(threads)
    backend = loaded_backend(variant, threads)
    try:
        draw = _prompt_drawer(speed_token_pool(variant.tokenizer_path), 0)
        start = time.perf_counter()
        probe_s = full_s = None
        if kind != "none":
            probe_s = _prefill_seconds(backend, draw(min(WARMUP_PROBE_TOKENS, prompt_tokens)))
            if kind == "full":
                full_s = _prefill_seconds(backend, draw(prompt_tokens))
            _decode(backend, draw, gen_tokens)
        warmup_s = time.perf_counter() - start
        ttft_s = []
        for _ in range(reps):
            ttft_s.append(_prefill_seconds(backend, draw(prompt_tokens)))
            _decode(backend, draw, gen_tokens)
    finally:
        backend.close()
    return {"probe_s": probe_s, "full_warmup_s": full_s, "warmup_s": warmup_s, "ttft_s": ttft_s,
            "first_over_rest": ttft_s[0] / float(np.median(ttft_s[1:]))}


def measure(variant: Variant, kind: str, args) -> dict:
    path = Path(variant.path)
    variant_dir = path if path.is_dir() else path.parent  # a GGUF lies in its variant's directory
    command = [sys.executable, __file__, "--child", str(variant_dir), kind,
               "--threads", str(args.threads), "--prompt-tokens", str(args.prompt_tokens),
               "--gen-tokens", str(args.gen_tokens), "--reps", str(args.reps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant-dir", action="append", default=[], help="a variant directory (manifest.json); repeatable")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=4, help="measured prefills after the warm-up (>= 2)")
    parser.add_argument("--passes", type=int, default=2, help="fresh processes per variant and warm-up kind")
    parser.add_argument("--json", action="store_true", help="print every measurement as one JSON object")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT_DIR", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps < 2:
        parser.error("--reps must be at least 2: the first prefill is compared with the ones after it")
    if args.child:
        print(json.dumps(run_child(*args.child, args.threads, args.prompt_tokens, args.gen_tokens, args.reps)))
        return 0

    variants = [variant_from_dir(d) for d in args.variant_dir] or list(prepared_variants().values())
    if not variants:
        sys.exit("no prepared variants found: run `python -m harness prepare` or pass --variant-dir")
    results: dict[str, dict[str, list[dict]]] = {v.name: {kind: [] for kind in KINDS} for v in variants}
    for pass_ in range(args.passes):
        for variant in variants:
            for kind in KINDS:
                result = measure(variant, kind, args)
                results[variant.name][kind].append(result)
                print(f"pass {pass_ + 1} {variant.name} {kind}: "
                      f"{result.get('error') or format(result['first_over_rest'], '.3f')}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print_table(results, args)
    return 0


def _ratio(measured: list[dict]) -> str:
    ratios = [m["first_over_rest"] for m in measured if "error" not in m]
    if not ratios:
        return next(m["error"] for m in measured)
    return f"{np.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"


def print_table(results: dict[str, dict[str, list[dict]]], args) -> None:
    from tabulate import tabulate

    rows = []
    for name, by_kind in results.items():
        probes = [m["probe_s"] for kind in ("probe", "full") for m in by_kind[kind] if "error" not in m]
        fulls = [m["full_warmup_s"] for m in by_kind["full"] if "error" not in m]
        probe_tokens = min(WARMUP_PROBE_TOKENS, args.prompt_tokens)
        probe_s = float(np.median(probes)) if probes else float("nan")
        projected = probe_s * args.prompt_tokens / probe_tokens
        rule = "full" if warms_up_full_prompt(probe_s, probe_tokens, args.prompt_tokens) else "probe"
        saved = float(np.median(fulls)) if rule == "probe" and fulls else 0.0
        rows.append([name, *(_ratio(by_kind[kind]) for kind in KINDS), f"{projected:.2f}", rule, f"{saved:.1f}"])
    print(f"threads {args.threads}, pp{args.prompt_tokens}, tg{args.gen_tokens}, {args.reps} measured prefills, "
          f"{args.passes} passes; first measured prefill / median of the rest, median [min, max] over passes")
    print(tabulate(rows, headers=["variant", *KINDS, "projected s", "rule", "saved s"]))


if __name__ == "__main__":
    sys.exit(main())
