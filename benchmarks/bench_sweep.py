"""The harness's operating points next to llama-bench (depth, threads) and llama-batched-bench (parallel sequences).

On the same GGUF files, threads and llama.cpp build, in alternating rounds (one round: llama.cpp's tool, then the
harness's ``measure_point`` on a backend loaded once per thread count):

- llama-bench ``-p 512 -n 32 -d 0,4096 -t 1,2``: its ``pp512 @ dD`` and ``tg32 @ dD`` against the harness's
  prefill and decode at Point(depth=D, batch=1, threads=T).
- llama-batched-bench ``-npp 512 -ntg 32 -npl 1,4,8``: its S_PP (all sequences' prompt tokens over the prefill)
  against the harness's prefill at Point(depth=0, batch=B); its S_TG, which decodes after each sequence's 512-token
  prompt, against the harness's decode at Point(depth=512, batch=B) (the harness's decode runs on top of the depth,
  as llama-bench's ``tg`` does, so the prompt's tokens are its depth).

Prints per figure the medians over the rounds, with their spreads, and the ratio harness / tool (goal: >= 0.9);
then the batching gain, aggregate decode at B over B = 1, for the harness and for llama-batched-bench, and their
ratio (goal: >= 0.9). ``--runtimes`` adds the harness's own batching gains for torch-fp32 and ort-fp32.

    benchmarks/build_llama_tools.sh          # once: builds llama-bench and llama-batched-bench outside the repo
    python benchmarks/bench_sweep.py         # the default model's llamacpp-q8_0 and llamacpp-q4_k_m
    python benchmarks/bench_sweep.py --rounds 3 --json FILE.gguf ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_llama_bench import default_llama_bench
from common import loaded_backend, prepared_variants, summary, variant_from_gguf

from harness.manifest import Variant
from harness.measure.efficiency import measure_point
from harness.results import Point
from harness.text.tokenizer import speed_token_pool

PROMPT, GEN = 512, 32


def run_llama_bench(binary: Path, gguf: str, depths, threads, reps: int) -> dict:
    """{(depth, threads): {"prefill": samples, "decode": samples}} from one llama-bench call."""
    command = [str(binary), "-m", gguf, "-p", str(PROMPT), "-n", str(GEN), "-d", ",".join(map(str, depths)),
               "-t", ",".join(map(str, threads)), "-r", str(reps), "-fa", "1", "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    out: dict = {}
    for test in json.loads(done.stdout):
        kind = "prefill" if test["n_gen"] == 0 else "decode"
        out.setdefault((test["n_depth"], test["n_threads"]), {})[kind] = [float(v) for v in test["samples_ts"]]
    return out


def run_batched_bench(binary: Path, gguf: str, batches, threads: int) -> dict:
    """{batch: {"prefill": S_PP, "decode": S_TG}} from one llama-batched-bench call (one sample each)."""
    context = max(batches) * 1024  # each sequence's share of the (not unified) cache holds 512 + 32 tokens
    command = [str(binary), "-m", gguf, "-c", str(context), "-b", "512", "-ub", "512", "-npp", str(PROMPT),
               "-ntg", str(GEN), "-npl", ",".join(map(str, batches)), "-t", str(threads), "-fa", "on",
               "--output-format", "jsonl"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    out = {}
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("{") and '"speed_tg"' in line:
            row = json.loads(line)
            out[row["pl"]] = {"prefill": row["speed_pp"], "decode": row["speed_tg"]}
    return out


def harness_point(backend, point: Point, reps: int, pool, seed: int) -> tuple[float, float]:
    efficiency = measure_point(backend, point, warmup=1, repetitions=reps, max_repetitions=reps, seed=seed,
                               token_pool=pool)
    return efficiency.prefill_tok_s, efficiency.decode_tok_s


def bench_file(variant: Variant, tools: dict[str, Path], args) -> dict:
    pool = speed_token_pool(variant.tokenizer_path)
    samples: dict[tuple, list[float]] = {}

    def add(key, value):
        samples.setdefault(key, []).append(value)

    backends = {t: loaded_backend(variant, t) for t in sorted(set(args.threads) | {args.batch_threads})}
    try:
        for round_ in range(args.rounds):
            for (depth, threads), tests in run_llama_bench(tools["bench"], variant.path, args.depths, args.threads,
                                                           args.reps).items():
                for kind, values in tests.items():
                    add(("llama-bench", kind, depth, threads), sorted(values)[len(values) // 2])
            for depth in args.depths:
                for threads in args.threads:
                    pp, tg = harness_point(backends[threads], Point(depth, 1, threads, PROMPT, GEN), args.reps, pool,
                                           round_)
                    add(("harness", "prefill", depth, threads), pp)
                    add(("harness", "decode", depth, threads), tg)
            for batch, figures in run_batched_bench(tools["batched"], variant.path, args.batches,
                                                    args.batch_threads).items():
                for kind, value in figures.items():
                    add(("batched-bench", kind, batch), value)
            for batch in args.batches:
                backend = backends[args.batch_threads]
                pp, _ = harness_point(backend, Point(0, batch, args.batch_threads, PROMPT, GEN), args.reps, pool, round_)
                _, tg = harness_point(backend, Point(PROMPT, batch, args.batch_threads, PROMPT, GEN), args.reps, pool,
                                      round_)
                add(("harness-batch", "prefill", batch), pp)
                add(("harness-batch", "decode", batch), tg)
    finally:
        for backend in backends.values():
            backend.close()
    stats = {key: summary(values) for key, values in samples.items()}
    median = {key: s["median"] for key, s in stats.items()}
    depth_rows = [{"depth": d, "threads": t, "test": kind,
                   "llama_bench": stats["llama-bench", kind, d, t], "harness": stats["harness", kind, d, t],
                   "ratio": median["harness", kind, d, t] / median["llama-bench", kind, d, t]}
                  for d in args.depths for t in args.threads for kind in ("prefill", "decode")]
    batch_rows = [{"batch": b, "test": kind, "batched_bench": stats["batched-bench", kind, b],
                   "harness": stats["harness-batch", kind, b],
                   "ratio": median["harness-batch", kind, b] / median["batched-bench", kind, b]}
                  for b in args.batches for kind in ("prefill", "decode")]
    first = args.batches[0]
    gains = [{"batch": b,
              "harness_gain": median["harness-batch", "decode", b] / median["harness-batch", "decode", first],
              "batched_bench_gain": median["batched-bench", "decode", b] / median["batched-bench", "decode", first]}
             for b in args.batches[1:]]
    for gain in gains:
        gain["ratio"] = gain["harness_gain"] / gain["batched_bench_gain"]
    return {"variant": variant.name, "file": variant.path, "depths": depth_rows, "batches": batch_rows,
            "gains": gains}


def runtime_gains(args) -> list[dict]:
    """The harness's batching gain (aggregate decode at B over B = 1) for torch-fp32 and ort-fp32, at depth 0
    (ORT GenAI runs no depth with several sequences) and, for torch, at depth 512 as well."""
    prepared = prepared_variants()
    out = []
    for name, depths in (("torch-fp32", (0, PROMPT)), ("ort-fp32", (0,))):
        variant = prepared[name]
        pool = speed_token_pool(variant.tokenizer_path)
        backend = loaded_backend(variant, args.batch_threads)
        try:
            for depth in depths:
                decode = {b: [] for b in args.batches}
                for round_ in range(args.rounds):
                    for b in args.batches:
                        decode[b].append(harness_point(backend, Point(depth, b, args.batch_threads, PROMPT, GEN),
                                                       args.reps, pool, round_)[1])
                medians = {b: summary(v)["median"] for b, v in decode.items()}
                out += [{"variant": name, "depth": depth, "batch": b, "decode_tok_s": summary(decode[b]),
                         "gain": medians[b] / medians[args.batches[0]]} for b in args.batches[1:]]
        finally:
            backend.close()
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="GGUF files (default: the default model's llamacpp-q8_0 and -q4_k_m)")
    parser.add_argument("--tools", type=Path, default=None, help="folder of llama-bench and llama-batched-bench "
                        "(default: where build_llama_tools.sh puts them)")
    parser.add_argument("--depths", type=_ints, default=[0, 4096])
    parser.add_argument("--threads", type=_ints, default=[1, 2])
    parser.add_argument("--batches", type=_ints, default=[1, 4, 8])
    parser.add_argument("--batch-threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of llama.cpp's tools and the harness")
    parser.add_argument("--runtimes", action="store_true", help="also the batching gains of torch-fp32 and ort-fp32")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write every figure to PATH")
    args = parser.parse_args(argv)

    folder = args.tools or default_llama_bench().parent
    tools = {"bench": folder / "llama-bench", "batched": folder / "llama-batched-bench"}
    for binary in tools.values():
        if not binary.is_file():
            sys.exit(f"{binary}: not there; build it with benchmarks/build_llama_tools.sh or pass --tools")
    if args.files:
        variants = [variant_from_gguf(f) for f in args.files]
    else:
        prepared = prepared_variants()
        variants = [prepared[name] for name in ("llamacpp-q8_0", "llamacpp-q4_k_m") if name in prepared]
    results: dict = {"files": []}
    for variant in variants:  # each file's figures are kept (printed, written) as soon as they are measured
        results["files"].append(bench_file(variant, tools, args))
        _keep(results, args, {"files": results["files"][-1:]})
    if args.runtimes:
        results["runtimes"] = runtime_gains(args)
        _keep(results, args, {"files": [], "runtimes": results["runtimes"]})
    return 0


def _keep(results: dict, args, new: dict) -> None:
    """Write everything measured so far (--json) and print what is new."""
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    _print(new, args)
    sys.stdout.flush()


def _fmt(stats: dict) -> str:
    low, high = stats["spread"]
    return f"{stats['median']:.1f} [{low:.1f}-{high:.1f}]"


def _print(results: dict, args) -> None:
    from tabulate import tabulate

    if results["files"]:
        print(f"pp{PROMPT}/tg{GEN}, {args.rounds} alternating rounds of {args.reps} repetitions; tok/s median [min-max]")
    for result in results["files"]:
        print(f"\n{result['variant']} vs llama-bench (-d {','.join(map(str, args.depths))} "
              f"-t {','.join(map(str, args.threads))}):")
        print(tabulate([[f"{'pp' if r['test'] == 'prefill' else 'tg'}{PROMPT if r['test'] == 'prefill' else GEN} "
                         f"@ d{r['depth']}", r["threads"], _fmt(r["llama_bench"]), _fmt(r["harness"]),
                         f"{r['ratio']:.3f}"] for r in result["depths"]],
                       headers=["test", "threads", "llama-bench", "harness", "harness/tool"], disable_numparse=True))
        print(f"\n{result['variant']} vs llama-batched-bench (-npp {PROMPT} -ntg {GEN} -t {args.batch_threads}; "
              f"harness decode at depth {PROMPT}):")
        print(tabulate([[r["batch"], "S_PP" if r["test"] == "prefill" else "S_TG", _fmt(r["batched_bench"]),
                         _fmt(r["harness"]), f"{r['ratio']:.3f}"] for r in result["batches"]],
                       headers=["batch", "figure", "llama-batched-bench", "harness", "harness/tool"],
                       disable_numparse=True))
        print(tabulate([[g["batch"], f"{g['harness_gain']:.2f}", f"{g['batched_bench_gain']:.2f}", f"{g['ratio']:.3f}"]
                        for g in result["gains"]],
                       headers=["batch", "harness gain", "batched-bench gain", "ratio"], disable_numparse=True))
    if "runtimes" in results and results["runtimes"]:
        print("\nbatching gain of the other runtimes (aggregate decode at B over B = 1, harness only):")
        print(tabulate([[r["variant"], r["depth"], r["batch"], _fmt(r["decode_tok_s"]), f"{r['gain']:.2f}"]
                        for r in results["runtimes"]],
                       headers=["variant", "depth", "batch", "decode tok/s", "gain"], disable_numparse=True))


if __name__ == "__main__":
    sys.exit(main())
