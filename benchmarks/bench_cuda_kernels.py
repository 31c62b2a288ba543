"""Benchmark the CUDA scoring kernels against torch's cross_entropy and torch's KL-divergence composition on one GPU.

    python benchmarks/bench_cuda_kernels.py [--rows 2048] [--vocab 49152] [--reps 20] [--device cuda:0]
                                            [--threads-per-row 128,256,512,1024] [--json]

On the same float32 logits on the GPU, in round-robin repetitions (each a
synchronised ``perf_counter`` over ``--inner`` launches, so launch overhead
counts as it does in a run):

- NLL: ``harness.kernels.cuda_scoring``'s kernel (results left on the device)
  against ``torch.nn.functional.cross_entropy(reduction="none")``;
- divergence (KL, top-1 agreement, Δp and both NLLs, what the harness needs
  per row) against the torch composition of the same: two log_softmax, kl_div,
  two argmax, two gathers;
- both wrappers end to end (validation, targets to the device, results to the
  host, the NaN check), as ``harness.kernels`` runs them;
- the device's copy bandwidth (a 1 GiB device-to-device copy, read + write),
  and each kernel's read bandwidth against it;
- accuracy: the largest per-row error of ours and torch's against the same
  math in float64 on the GPU, and of the summed NLL.

Without a CUDA GPU (or a CUDA build of torch, or numba's CUDA target) it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="logit rows (N)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (V)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per operation (>= 5)")
    parser.add_argument("--inner", type=int, default=10, help="launches per timed repetition")
    parser.add_argument("--device", default="cuda:0", help="the GPU (cuda or cuda:N)")
    parser.add_argument("--threads-per-row", default="", help="block sizes to compare, e.g. 128,256,512,1024 "
                        "(default: the configured one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be >= 5: medians of fewer are too noisy")
    return args


def no_gpu_reason(device: str) -> str | None:
    """Why the benchmark cannot run here, in one line; None when it can."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch finds no CUDA GPU"
    from harness.kernels import device_scoring_available

    if not device_scoring_available():
        return "numba's CUDA target finds no GPU (install numba-cuda)"
    return None


def _time(ops: dict, reps: int, inner: int, sync) -> dict[str, list[float]]:
    """Round-robin medians' raw material: seconds per launch of each op, ``reps`` values each."""
    for fn in ops.values():
        fn()  # untimed: compilation, first allocations
    sync()
    times_s: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(reps):
        for name, fn in ops.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times_s[name].append((time.perf_counter() - start) / inner)
    return times_s


def _copy_bandwidth_gb_s(torch, device, reps: int) -> float:
    """Device memory bandwidth as a copy sees it: 2 x bytes (read + write) / seconds, median of ``reps``."""
    src = torch.empty(2**28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    times = _time({"copy": lambda: dst.copy_(src)}, reps, 3, torch.cuda.synchronize)["copy"]
    return 2 * 2**30 / statistics.median(times) / 1e9


def _torch_divergence(torch, ref, test, targets):
    """The torch composition of what the divergence kernel returns per row."""
    f = torch.nn.functional
    log_p = f.log_softmax(ref, dim=-1)
    log_q = f.log_softmax(test, dim=-1)
    kld = f.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    agree = ref.argmax(-1) == test.argmax(-1)
    ref_nll = -log_p.gather(1, targets[:, None])[:, 0]
    test_nll = -log_q.gather(1, targets[:, None])[:, 0]
    return kld, agree, torch.exp(-test_nll) - torch.exp(-ref_nll), ref_nll, test_nll


def _accuracy(torch, ref, test, targets, ours_nll, ours_kld) -> dict[str, float]:
    """Largest per-row errors against float64 on the GPU: ours and torch's float32 ops."""
    f = torch.nn.functional
    want_nll = f.cross_entropy(ref.double(), targets, reduction="none")
    want_kld = _torch_divergence(torch, ref.double(), test.double(), targets)[0]
    torch_nll = f.cross_entropy(ref, targets, reduction="none").double()
    torch_kld = _torch_divergence(torch, ref, test, targets)[0].double()
    ours_nll, ours_kld = torch.as_tensor(ours_nll, device=ref.device), torch.as_tensor(ours_kld, device=ref.device)

    def worst(got, want):
        return float((got - want).abs().max())

    total = float(want_nll.sum())
    return {
        "ours_nll_max_abs_err": worst(ours_nll, want_nll),
        "torch_nll_max_abs_err": worst(torch_nll, want_nll),
        "ours_nll_sum_rel_err": abs(float(ours_nll.sum()) - total) / abs(total),
        "torch_nll_sum_rel_err": abs(float(torch_nll.sum()) - total) / abs(total),
        "ours_kld_max_abs_err": worst(ours_kld, want_kld),
        "torch_kld_max_abs_err": worst(torch_kld, want_kld),
    }


def main(argv=None) -> dict:
    args = _parse_args(argv)
    reason = no_gpu_reason(args.device)
    if reason:
        print(f"bench_cuda_kernels: no GPU to run on ({reason}); run it on a machine with an NVIDIA GPU")
        sys.exit(1)
    import numpy as np
    import torch
    from numba import cuda

    from harness.kernels.config import CUDA_FASTMATH, CUDA_THREADS_PER_ROW
    from harness.kernels.cuda_scoring import _kernels, cuda_divergence, cuda_token_nll

    device = torch.device(args.device)
    torch.cuda.set_device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    ref = torch.randn(args.rows, args.vocab, device=device, generator=gen) * 3.0  # (N, V) float32
    test = ref + 0.1 * torch.randn(args.rows, args.vocab, device=device, generator=gen)
    targets = torch.randint(0, args.vocab, (args.rows,), device=device, generator=gen)
    targets_host = targets.cpu().numpy()
    d_ref, d_test, d_targets = cuda.as_cuda_array(ref), cuda.as_cuda_array(test), cuda.as_cuda_array(targets)
    outs = [cuda.device_array(args.rows, dtype=np.float64) for _ in range(4)]
    agree = cuda.device_array(args.rows, dtype=np.uint8)
    f = torch.nn.functional
    sizes = [int(t) for t in args.threads_per_row.split(",") if t] or [CUDA_THREADS_PER_ROW]

    ops = {"torch cross_entropy": lambda: f.cross_entropy(ref, targets, reduction="none"),
           "torch KLD composition": lambda: _torch_divergence(torch, ref, test, targets)}
    for threads in sizes:
        nll_kernel, div_kernel = _kernels(threads)
        ops[f"ours NLL kernel ({threads} thr)"] = (
            lambda k=nll_kernel, t=threads: k[args.rows, t](d_ref, d_targets, outs[0]))
        ops[f"ours divergence kernel ({threads} thr)"] = (
            lambda k=div_kernel, t=threads: k[args.rows, t](d_ref, d_test, d_targets, *outs, agree))
    ops["ours token_nll wrapper (to host)"] = lambda: cuda_token_nll(ref, targets_host)
    ops["ours divergence wrapper (to host)"] = lambda: cuda_divergence(ref, test, targets_host)
    times = _time(ops, args.reps, args.inner, torch.cuda.synchronize)
    bandwidth = _copy_bandwidth_gb_s(torch, device, args.reps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    block_bytes = args.rows * args.vocab * 4
    best_nll = min((n for n in medians if n.startswith("ours NLL kernel")), key=medians.get)
    best_div = min((n for n in medians if n.startswith("ours divergence kernel")), key=medians.get)
    result = {
        "gpu": torch.cuda.get_device_name(device),
        "rows": args.rows, "vocab": args.vocab, "reps": args.reps, "inner": args.inner,
        "cuda_fastmath": CUDA_FASTMATH, "configured_threads_per_row": CUDA_THREADS_PER_ROW,
        "copy_bandwidth_gb_s": bandwidth,
        "ms": {name: {"median": 1e3 * medians[name], "min": 1e3 * min(v), "max": 1e3 * max(v)}
               for name, v in times.items()},
        "best_nll_kernel": best_nll, "best_divergence_kernel": best_div,
        "nll_speedup_vs_cross_entropy": medians["torch cross_entropy"] / medians[best_nll],
        "kld_speedup_vs_torch_composition": medians["torch KLD composition"] / medians[best_div],
        "nll_read_gb_s": block_bytes / medians[best_nll] / 1e9,
        "divergence_read_gb_s": 2 * block_bytes / medians[best_div] / 1e9,
        "accuracy_vs_float64": _accuracy(torch, ref, test, targets, cuda_token_nll(ref, targets_host),
                                         cuda_divergence(ref, test, targets_host).kld),
    }
    result["nll_fraction_of_copy_bandwidth"] = result["nll_read_gb_s"] / bandwidth
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return result


def _print_table(result: dict) -> None:
    print(f"{result['gpu']}: {result['rows']} x {result['vocab']} float32, {result['reps']} reps x "
          f"{result['inner']} launches; median [min, max] ms")
    for name, ms in result["ms"].items():
        print(f"  {name:<40} {ms['median']:8.3f}  [{ms['min']:.3f}, {ms['max']:.3f}]")
    print(f"  NLL: {result['nll_speedup_vs_cross_entropy']:.2f}x torch cross_entropy (goal >= 2x); reads "
          f"{result['nll_read_gb_s']:.0f} GB/s = {result['nll_fraction_of_copy_bandwidth']:.2f} of the "
          f"{result['copy_bandwidth_gb_s']:.0f} GB/s copy bandwidth (goal >= 0.5)")
    print(f"  KLD: {result['kld_speedup_vs_torch_composition']:.2f}x the torch composition (goal >= 3x); reads "
          f"{result['divergence_read_gb_s']:.0f} GB/s")
    acc = result["accuracy_vs_float64"]
    print(f"  vs float64: NLL max |err| ours {acc['ours_nll_max_abs_err']:.2e}, "
          f"torch {acc['torch_nll_max_abs_err']:.2e}; "
          f"summed NLL rel ours {acc['ours_nll_sum_rel_err']:.1e}, torch {acc['torch_nll_sum_rel_err']:.1e}; "
          f"KLD max |err| ours {acc['ours_kld_max_abs_err']:.2e}, torch {acc['torch_kld_max_abs_err']:.2e}")


if __name__ == "__main__":
    main()
