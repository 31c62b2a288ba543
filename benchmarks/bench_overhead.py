"""The harness's own overhead: its prefill and decode tok/s against a minimal direct loop on the same runtime.

For each runtime, the harness backend (through ``measure_efficiency``) and a
bare loop (``direct_loops.py``) drive the same loaded model with the same threads,
in turns, one repetition each per round, on fresh random prompts. Prints the
medians and the ratios direct/harness (goal: <= 1.05), and the median of the
per-round (paired) ratios, which a drift in machine speed does not move;
``--json`` prints an object keyed by runtime.

    python benchmarks/bench_overhead.py                      # the default model's prepared variants
    python benchmarks/bench_overhead.py --variant-dir DIR    # one or more variant directories
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import numpy as np
from common import (
    DEFAULT_VARIANTS,
    loaded_backend,
    prepared_variants,
    summary,
    variant_from_dir,
)
from direct_loops import DIRECT

from harness.machine.environment import usable_cpus
from harness.manifest import Variant
from harness.measure.efficiency import DECODE_PROMPT_TOKENS, measure_efficiency
from harness.text.tokenizer import speed_token_pool


def bench_runtime(variant: Variant, threads: int, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    """Interleaved rounds of one harness and one direct repetition, after one warmup of each."""
    backend = loaded_backend(variant, threads)
    direct = DIRECT[variant.runtime](variant, threads, shared=backend.native)
    pool = speed_token_pool(variant.tokenizer_path)
    rng = np.random.default_rng(12345)
    values: dict[str, list[float]] = {"harness_prefill": [], "harness_decode": [], "direct_prefill": [], "direct_decode": []}

    def harness_rep(seed: int, keep: bool) -> None:
        eff = measure_efficiency(backend, prompt_tokens, gen_tokens, warmup=0, repetitions=1, seed=seed, token_pool=pool,
                                 max_repetitions=1)  # one repetition per round: the rounds interleave
        if keep:
            values["harness_prefill"].append(eff.prefill_tok_s)
            values["harness_decode"].append(eff.decode_tok_s)

    def direct_rep(keep: bool) -> None:
        prefill_s = direct.prefill_s(rng.choice(pool, prompt_tokens).tolist())
        produced, decode_s = direct.decode(int(rng.choice(pool, DECODE_PROMPT_TOKENS)[0]), gen_tokens)
        if keep:
            values["direct_prefill"].append(prompt_tokens / prefill_s)
            values["direct_decode"].append(produced / decode_s)

    try:
        harness_rep(0, keep=False)
        direct_rep(keep=False)
        for round_ in range(reps):
            # Alternate who goes first, so neither always runs on a cache the other warmed.
            if round_ % 2:
                direct_rep(keep=True)
                harness_rep(round_ + 1, keep=True)
            else:
                harness_rep(round_ + 1, keep=True)
                direct_rep(keep=True)
        describe = backend.describe()
    finally:
        backend.close()
        direct.close()
    stats = {key: summary(v) for key, v in values.items()}
    return {
        "variant": variant.name,
        "threads": threads,
        "backend": describe,
        "harness": {"prefill_tok_s": stats["harness_prefill"], "decode_tok_s": stats["harness_decode"]},
        "direct": {"prefill_tok_s": stats["direct_prefill"], "decode_tok_s": stats["direct_decode"]},
        "ratio_prefill": stats["direct_prefill"]["median"] / stats["harness_prefill"]["median"],
        "ratio_decode": stats["direct_decode"]["median"] / stats["harness_decode"]["median"],
        # Per round, direct/harness of two back-to-back repetitions: a drift in machine speed over the
        # run, which moves both medians, cancels within a round.
        "paired_ratio_prefill": summary(np.divide(values["direct_prefill"], values["harness_prefill"]).tolist()),
        "paired_ratio_decode": summary(np.divide(values["direct_decode"], values["harness_decode"]).tolist()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant-dir", action="append", default=[], help="a variant directory (manifest.json); repeatable")
    parser.add_argument("--runtimes", default="llamacpp,ort,torch", help="runtimes to bench when no --variant-dir is given")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5, help="measured rounds (>= 5 for the reported medians)")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by runtime")
    args = parser.parse_args(argv)

    if args.variant_dir:
        variants = [variant_from_dir(d) for d in args.variant_dir]
    else:
        prepared = prepared_variants()
        variants = [prepared[DEFAULT_VARIANTS[r]] for r in args.runtimes.split(",") if DEFAULT_VARIANTS.get(r) in prepared]
        if not variants:
            sys.exit("no prepared variants found: run `python -m harness prepare` or pass --variant-dir")

    results: dict[str, dict] = {}
    for variant in variants:
        try:
            results[variant.runtime] = bench_runtime(variant, args.threads, args.prompt_tokens, args.gen_tokens, args.reps)
            r = results[variant.runtime]  # progress, so a long run that is cut short still reports what it finished
            print(f"{variant.runtime}: direct/harness prefill {r['ratio_prefill']:.3f}, decode {r['ratio_decode']:.3f}; "
                  f"paired {r['paired_ratio_prefill']['median']:.3f}, {r['paired_ratio_decode']['median']:.3f}",
                  file=sys.stderr)
        except Exception as exc:  # one runtime failing still reports the others
            traceback.print_exc(file=sys.stderr)
            results[variant.runtime] = {"variant": variant.name, "error": f"{type(exc).__name__}: {exc}"}

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    from tabulate import tabulate

    rows = []
    for runtime, r in results.items():
        if "error" in r:
            rows.append([runtime, r["variant"], "error", r["error"], "", "", "", "", "", ""])
            continue
        h, d = r["harness"], r["direct"]
        rows.append([
            runtime, r["variant"],
            h["prefill_tok_s"]["median"], d["prefill_tok_s"]["median"], r["ratio_prefill"],
            _paired(r["paired_ratio_prefill"]),
            h["decode_tok_s"]["median"], d["decode_tok_s"]["median"], r["ratio_decode"],
            _paired(r["paired_ratio_decode"]),
        ])
    headers = ["runtime", "variant", "harness pp tok/s", "direct pp tok/s", "direct/harness pp", "paired pp",
               "harness tg tok/s", "direct tg tok/s", "direct/harness tg", "paired tg"]
    print(f"threads {args.threads}, pp{args.prompt_tokens}, tg{args.gen_tokens}, medians of {args.reps} interleaved rounds")
    print(tabulate(rows, headers=headers, floatfmt=("", "", ".1f", ".1f", ".3f", "", ".1f", ".1f", ".3f", "")))
    return 0


def _paired(ratios: dict) -> str:
    low, high = ratios["spread"]
    return f"{ratios['median']:.3f} [{low:.2f}-{high:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
