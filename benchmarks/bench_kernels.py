"""Benchmark the Numba scoring kernels against PyTorch and numpy on the same CPU.

    python benchmarks/bench_kernels.py [--rows 2048] [--vocab 49152] [--threads 2] [--reps 5] [--json]

Every operation runs once untimed, then `--reps` timed repetitions taken in
turn (ours, torch, numpy, ...) so that load from other processes hits all of
them alike. Ratios are torch median / our median.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="logit rows (N)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (V)")
    parser.add_argument("--threads", type=int, default=2, help="threads for numba and torch")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per operation (>= 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--skip-compile", action="store_true", help="skip the cold-compile subprocess (~10 s)")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be >= 5: medians of fewer are too noisy on a shared machine")
    return args


def _cold_compile_s(threads: int) -> float:
    """Seconds for warmup() in a fresh process with an empty Numba cache: the true compile time."""
    code = "import harness.kernels as k; print(k.warmup())"
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NUMBA_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _numpy_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The textbook float32 numpy NLL: what one writes without a kernel."""
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return lse - logits[np.arange(len(targets)), targets]


def _time_round_robin(ops: dict, reps: int) -> dict[str, list[float]]:
    for fn in ops.values():
        fn()  # untimed: first-touch allocations, torch's thread pool, caches
    times_s: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(reps):
        for name, fn in ops.items():
            start = time.perf_counter()
            fn()
            times_s[name].append(time.perf_counter() - start)
    return times_s


def main(argv=None) -> dict:
    args = _parse_args(argv)
    import torch
    import torch.nn.functional as F
    from tabulate import tabulate

    import harness.kernels as kernels

    compile_s = None if args.skip_compile else _cold_compile_s(args.threads)
    numba_threads = kernels.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    cached_first_call_s = kernels.warmup()

    rng = np.random.default_rng(0)
    shape = (args.rows, args.vocab)
    ref = rng.standard_normal(shape, dtype=np.float32) * np.float32(3.0)
    test = ref + rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
    targets = rng.integers(0, args.vocab, args.rows)
    ref_t, test_t, targets_t = torch.from_numpy(ref), torch.from_numpy(test), torch.from_numpy(targets)

    def torch_kld():
        log_p, log_q = F.log_softmax(ref_t, dim=-1), F.log_softmax(test_t, dim=-1)
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)

    ops = {
        "nll_ours": lambda: kernels.token_nll(ref, targets),
        "nll_torch": lambda: F.cross_entropy(ref_t, targets_t, reduction="none"),
        "nll_numpy": lambda: _numpy_nll(ref, targets),
        "kld_ours": lambda: kernels.divergence(ref, test, targets),
        "kld_torch": torch_kld,
        "read_numpy_sum": lambda: ref.sum(),
    }
    times_s = _time_round_robin(ops, args.reps)
    median_s = {name: float(np.median(t)) for name, t in times_s.items()}

    # The comparison is only meaningful if the answers agree.
    nll_max_diff = float(np.abs(kernels.token_nll(ref, targets) - F.cross_entropy(ref_t, targets_t, reduction="none").numpy()).max())
    kld_max_diff = float(np.abs(kernels.divergence(ref, test, targets).kld - torch_kld().numpy()).max())

    block_bytes = ref.nbytes
    read_bytes = {"nll_ours": block_bytes, "nll_torch": block_bytes, "nll_numpy": block_bytes,
                  "kld_ours": 2 * block_bytes, "kld_torch": 2 * block_bytes, "read_numpy_sum": block_bytes}
    result = {
        "shape": list(shape),
        "threads": args.threads,
        "numba_threads": numba_threads,
        "reps": args.reps,
        "nll_ratio_vs_torch": median_s["nll_torch"] / median_s["nll_ours"],
        "nll_ratio_vs_numpy": median_s["nll_numpy"] / median_s["nll_ours"],
        "kld_ratio_vs_torch": median_s["kld_torch"] / median_s["kld_ours"],
        "nll_gbps": block_bytes / median_s["nll_ours"] / 1e9,
        "kld_gbps": 2 * block_bytes / median_s["kld_ours"] / 1e9,
        "read_gbps": block_bytes / median_s["read_numpy_sum"] / 1e9,
        "median_ms": {name: 1e3 * s for name, s in median_s.items()},
        "spread_ms": {name: [1e3 * min(t), 1e3 * max(t)] for name, t in times_s.items()},
        "noisy": [name for name, t in times_s.items() if max(t) - min(t) > 0.1 * np.median(t)],
        "compile_s": compile_s,
        "cached_first_call_s": cached_first_call_s,
        "nll_max_abs_diff_vs_torch": nll_max_diff,
        "kld_max_abs_diff_vs_torch": kld_max_diff,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    rows = [
        [name, f"{1e3 * median_s[name]:.1f}", f"{1e3 * min(times_s[name]):.1f}-{1e3 * max(times_s[name]):.1f}",
         f"{read_bytes[name] / median_s[name] / 1e9:.2f}"]
        for name in ops
    ]
    print(f"{shape[0]} x {shape[1]} float32, {args.threads} thread(s), median of {args.reps}")
    print(tabulate(rows, headers=["operation", "median ms", "min-max ms", "GB/s read"]))
    print(f"NLL: {result['nll_ratio_vs_torch']:.2f}x torch, {result['nll_ratio_vs_numpy']:.2f}x numpy;"
          f" KLD: {result['kld_ratio_vs_torch']:.2f}x torch")
    first = f"cold compile {compile_s:.1f} s, " if compile_s is not None else ""
    print(f"{first}first call from cache {cached_first_call_s:.2f} s (not in the medians)")
    if result["noisy"]:
        print(f"noisy (max-min > 10% of median): {', '.join(result['noisy'])}")
    return result


if __name__ == "__main__":
    main()
