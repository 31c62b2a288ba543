"""The harness's llama.cpp speed next to llama.cpp's own ``llama-bench`` on the same GGUF file and threads.

Each round runs ``llama-bench -m FILE -t T -p P -n G -r R -o json`` and then
the harness's ``measure_efficiency`` (R repetitions) on a backend loaded once;
rounds alternate so a drift in machine speed touches both. Prints the median
of all samples and the ratios harness/llama-bench (goal: >= 0.9) for prefill
(pp) and decode (tg).

    benchmarks/build_llama_tools.sh                         # once: builds llama-bench outside the repo
    python benchmarks/bench_llama_bench.py                  # the default model's llamacpp-q8_0
    python benchmarks/bench_llama_bench.py FILE.gguf ...    # any GGUF files
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import loaded_backend, prepared_variants, summary, variant_from_gguf

from harness.machine.environment import usable_cpus
from harness.manifest import Variant
from harness.measure.efficiency import measure_efficiency
from harness.text.tokenizer import speed_token_pool

# llama-bench's settings worth printing beside its figures: they decide its speed.
LLAMA_BENCH_SETTINGS = ("build_commit", "n_threads", "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v", "poll", "repack", "load_mode", "cpu_info")


def default_llama_bench() -> Path:
    import llama_cpp

    return Path.home() / ".cache" / "harness-tools" / f"llama.cpp-{llama_cpp.__version__}" / "build" / "bin" / "llama-bench"


def run_llama_bench(binary: Path, gguf: str, threads: int, prompt_tokens: int, gen_tokens: int, reps: int) -> dict:
    """llama-bench's pp and tg samples (tok/s) and the settings it ran with."""
    command = [str(binary), "-m", gguf, "-t", str(threads), "-p", str(prompt_tokens), "-n", str(gen_tokens), "-r", str(reps), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    tests = json.loads(done.stdout)
    out: dict = {"settings": {k: tests[0].get(k) for k in LLAMA_BENCH_SETTINGS}}
    for test in tests:
        kind = "prefill" if test["n_gen"] == 0 else "decode"
        out[kind] = [float(v) for v in test["samples_ts"]]
    return out


def bench_file(variant: Variant, binary: Path, threads: int, prompt_tokens: int, gen_tokens: int, reps: int, rounds: int) -> dict:
    backend = loaded_backend(variant, threads)
    pool = speed_token_pool(variant.tokenizer_path)
    samples: dict[str, list[float]] = {"bench_prefill": [], "bench_decode": [], "harness_prefill": [], "harness_decode": []}
    settings: dict = {}
    try:
        for round_ in range(rounds):
            bench = run_llama_bench(binary, variant.path, threads, prompt_tokens, gen_tokens, reps)
            settings = bench["settings"]
            samples["bench_prefill"] += bench["prefill"]
            samples["bench_decode"] += bench["decode"]
            eff = measure_efficiency(backend, prompt_tokens, gen_tokens, warmup=1, repetitions=reps,
                                     max_repetitions=reps, seed=round_, token_pool=pool)  # as llama-bench's -r
            # measure_efficiency reports medians; the spread holds min and max, the per-round median is the sample.
            samples["harness_prefill"].append(eff.prefill_tok_s)
            samples["harness_decode"].append(eff.decode_tok_s)
        describe = backend.describe()
    finally:
        backend.close()
    stats = {key: summary(v) for key, v in samples.items()}
    return {
        "variant": variant.name,
        "file": variant.path,
        "threads": threads,
        "llama_bench": {"prefill_tok_s": stats["bench_prefill"], "decode_tok_s": stats["bench_decode"], "settings": settings},
        "harness": {"prefill_tok_s": stats["harness_prefill"], "decode_tok_s": stats["harness_decode"], "backend": describe},
        "ratio_prefill": stats["harness_prefill"]["median"] / stats["bench_prefill"]["median"],
        "ratio_decode": stats["harness_decode"]["median"] / stats["bench_decode"]["median"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="GGUF files (default: the default model's llamacpp-q8_0)")
    parser.add_argument("--llama-bench", type=Path, default=None, help="the llama-bench binary (default: where build_llama_tools.sh puts it)")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of llama-bench and the harness")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by variant")
    args = parser.parse_args(argv)

    binary = args.llama_bench or default_llama_bench()
    if not binary.is_file():
        sys.exit(f"{binary}: no llama-bench there; build it with benchmarks/build_llama_tools.sh or pass --llama-bench")
    if args.files:
        variants = [variant_from_gguf(f) for f in args.files]
    else:
        prepared = prepared_variants()
        if "llamacpp-q8_0" not in prepared:
            sys.exit("no prepared llamacpp-q8_0: run `python -m harness prepare` or pass GGUF files")
        variants = [prepared["llamacpp-q8_0"]]

    results = {v.name: bench_file(v, binary, args.threads, args.prompt_tokens, args.gen_tokens, args.reps, args.rounds) for v in variants}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    from tabulate import tabulate

    rows = [
        [name, r["llama_bench"]["prefill_tok_s"]["median"], r["harness"]["prefill_tok_s"]["median"], r["ratio_prefill"],
         r["llama_bench"]["decode_tok_s"]["median"], r["harness"]["decode_tok_s"]["median"], r["ratio_decode"]]
        for name, r in results.items()
    ]
    headers = ["variant", "llama-bench pp", "harness pp", "harness/bench pp", "llama-bench tg", "harness tg", "harness/bench tg"]
    print(f"threads {args.threads}, pp{args.prompt_tokens}, tg{args.gen_tokens} (tok/s), {args.rounds} alternating rounds of {args.reps} reps")
    print(tabulate(rows, headers=headers, floatfmt=("", ".1f", ".1f", ".3f", ".1f", ".1f", ".3f")))
    first = next(iter(results.values()))
    print("llama-bench settings:", json.dumps(first["llama_bench"]["settings"]))
    print("harness backend:", json.dumps(first["harness"]["backend"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
