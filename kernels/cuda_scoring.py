"""Token NLL and divergence of logits that live on an NVIDIA GPU: Numba CUDA kernels, one thread block per row.

The CPU kernels' math (``rows.py``) in one pass over each row: every thread
walks its strided share of the row keeping an online (max, sum of exp(x - max))
pair, rescaled when a larger value arrives, so the row is read from device
memory once; the block then merges its threads' pairs in shared memory, in
float64. Exponentials are float32 (the SFU's), their sums float64, and the KL's
weighted sum sum p (ref - test) is float64 throughout, as on the CPU: KL =
E_ref[ref - test] - lse_ref + lse_test can be a small difference of ~100-nat
terms. Identical rows give identical sums, hence a KL of exactly 0.

Only the per-row results (8 bytes each) cross PCIe, never the (N, V) block.
Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs these kernels on the
CPU, which is how the tests check them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .config import CUDA_FASTMATH, CUDA_THREADS_PER_ROW
from .divergence import Divergence
from .validate import check_targets, is_device_array, raise_for_bad_rows

_NEG_INF = -math.inf


def copy_to_host(array) -> np.ndarray:
    """A device array's contents as a numpy array: one copy over PCIe (``dispatch.to_host`` is the public door)."""
    return _as_numba(array).copy_to_host()


def available() -> bool:
    """Whether these kernels can run here: a working CUDA driver and GPU (or the simulator)."""
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit reads as "not here"
        return False


def _as_numba(array):
    """A Numba device array viewing ``array``'s memory (no copy): torch/CuPy through their CUDA array interface."""
    if getattr(array, "__cuda_ndarray__", False):
        return array
    return cuda.as_cuda_array(array)


def check_device_logits(logits, name: str = "logits"):
    """``logits`` as a Numba device array of C-contiguous float32 (N, V), or raise saying what to change."""
    if not is_device_array(logits):
        raise TypeError(f"{name} must be a GPU array (a CUDA torch tensor or a Numba device array), "
                        f"got {type(logits).__name__}; the CPU kernels take numpy arrays")
    array = _as_numba(logits)
    if np.dtype(array.dtype) != np.float32:
        raise TypeError(f"{name} has dtype {np.dtype(array.dtype)}; pass float32 (tensor.float() for a torch tensor)")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, V), got shape {tuple(array.shape)}; reshape to (-1, vocab_size)")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has an empty vocabulary axis (shape {tuple(array.shape)}); V must be >= 1")
    if array.size and (array.strides[1] != 4 or (array.shape[0] > 1 and array.strides[0] != 4 * array.shape[1])):
        raise ValueError(f"{name} is not C-contiguous; pass {name}.contiguous() (torch) or a contiguous copy")
    return array


class _HostRows:
    """Rows of a device array copied to the host one at a time, for ``raise_for_bad_rows``'s diagnosis."""

    def __init__(self, array):
        self._array = array

    def __getitem__(self, i: int) -> np.ndarray:
        return self._array[i : i + 1].copy_to_host()[0]


def _device_targets(targets, n_rows: int, vocab_size: int):
    host = copy_to_host(targets) if is_device_array(targets) else np.asarray(targets)
    return cuda.to_device(check_targets(host, n_rows, vocab_size))


def _threads(threads_per_row: int | None) -> int:
    threads = CUDA_THREADS_PER_ROW if threads_per_row is None else threads_per_row
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1 or threads & (threads - 1):
        raise ValueError(f"threads_per_row must be a power of two, got {threads!r}; pass e.g. 256")
    if threads > 1024:
        raise ValueError(f"threads_per_row={threads} exceeds CUDA's 1024 threads per block; pass 1024 or less")
    return threads


def cuda_token_nll(logits, targets, threads_per_row: int | None = None) -> np.ndarray:
    """Negative log-likelihood (nats) of each row's target: float64 (N,) on the host, from device logits (N, V).

    As ``harness.kernels.token_nll``: a target whose logit is -inf gets +inf;
    a row with NaN, +inf or no finite logit raises ValueError naming it.
    ``threads_per_row``: the thread block size (a power of two up to 1024).
    """
    array = check_device_logits(logits)
    n_rows, width = array.shape
    device_targets = _device_targets(targets, n_rows, width)
    out = cuda.device_array(n_rows, dtype=np.float64)
    threads = _threads(threads_per_row)
    if n_rows:
        _kernels(threads)[0][n_rows, threads](array, device_targets, out)
    nll = out.copy_to_host()
    raise_for_bad_rows(nll, {"logits": _HostRows(array)})
    return nll


def cuda_divergence(ref_logits, test_logits, targets, threads_per_row: int | None = None) -> Divergence:
    """``harness.kernels.divergence`` of two device blocks (N, V): per-row results on the host."""
    ref = check_device_logits(ref_logits, "ref_logits")
    test = check_device_logits(test_logits, "test_logits")
    if tuple(ref.shape) != tuple(test.shape):
        raise ValueError(f"ref_logits {tuple(ref.shape)} and test_logits {tuple(test.shape)} differ; "
                         "score the same positions with the same vocabulary (slice the larger vocabulary to match)")
    n_rows, width = ref.shape
    device_targets = _device_targets(targets, n_rows, width)
    outs = [cuda.device_array(n_rows, dtype=np.float64) for _ in range(4)]  # kld, delta_p, ref_nll, test_nll
    agree = cuda.device_array(n_rows, dtype=np.uint8)
    threads = _threads(threads_per_row)
    if n_rows:
        _kernels(threads)[1][n_rows, threads](ref, test, device_targets, *outs, agree)
    kld, delta_p, ref_nll, test_nll = (o.copy_to_host() for o in outs)
    raise_for_bad_rows(kld + delta_p, {"ref_logits": _HostRows(ref), "test_logits": _HostRows(test)})
    return Divergence(kld=kld, top1_agree=agree.copy_to_host().astype(bool), delta_p=delta_p,
                      ref_nll=ref_nll, test_nll=test_nll)


@cuda.jit(device=True, fastmath=CUDA_FASTMATH)
def _scaled(total, top, new_top):
    """``total`` (a sum of exp(x - top)) expressed relative to ``new_top`` >= top.

    A thread that saw no finite value has top -inf and a sum of 0, or NaN when it
    met a NaN: ``total * 0`` keeps that NaN for the wrapper to report.
    """
    if top == _NEG_INF:
        return total * 0.0
    return total * math.exp(np.float64(top) - np.float64(new_top))


@cuda.jit(device=True, fastmath=CUDA_FASTMATH)
def _finish_lse(top, total):
    """log-sum-exp of a row from its (max, sum), NaN for a row of +inf or with no finite entry (bad input)."""
    if top == _NEG_INF or top == math.inf:
        return math.nan
    return np.float64(top) + math.log(total)


@cuda.jit(device=True)
def _earlier_max(value, index, other_value, other_index):
    """Whether (other_value, other_index) beats (value, index) for argmax: larger, or equal at a lower index."""
    return other_value > value or (other_value == value and other_index < index)


@functools.lru_cache(maxsize=None)
def _kernels(threads: int):
    """The (nll, divergence) kernels for blocks of ``threads`` threads: shared arrays need a constant size."""

    @cuda.jit(fastmath=CUDA_FASTMATH)
    def nll_kernel(logits, targets, out):
        # logits (N, V) float32, targets (N,) int64, out (N,) float64; block i scores row i
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        width = logits.shape[1]
        tops = cuda.shared.array(threads, np.float32)
        sums = cuda.shared.array(threads, np.float64)
        top = np.float32(_NEG_INF)
        total = np.float32(0.0)  # a thread sums V / threads terms: float32 holds ~1e-7 of it
        for j in range(tid, width, threads):
            x = logits[row, j]
            if x > top:
                total = total * math.exp(top - x) + np.float32(1.0) if top != _NEG_INF else np.float32(1.0)
                top = x
            elif x != _NEG_INF:  # NaN lands here and poisons the sum, as it must
                total += math.exp(x - top)
        tops[tid] = top
        sums[tid] = np.float64(total)
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if tid < stride:
                a, b = tops[tid], tops[tid + stride]
                new_top = max(a, b)
                sums[tid] = _scaled(sums[tid], a, new_top) + _scaled(sums[tid + stride], b, new_top)
                tops[tid] = new_top
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            out[row] = _finish_lse(tops[0], sums[0]) - np.float64(logits[row, targets[row]])

    @cuda.jit(fastmath=CUDA_FASTMATH)
    def divergence_kernel(ref, test, targets, kld, delta_p, ref_nll, test_nll, agree):
        # ref, test (N, V) float32; targets (N,) int64; outputs (N,) float64, agree (N,) uint8
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        width = ref.shape[1]
        ref_tops = cuda.shared.array(threads, np.float32)
        test_tops = cuda.shared.array(threads, np.float32)
        ref_sums = cuda.shared.array(threads, np.float64)
        test_sums = cuda.shared.array(threads, np.float64)
        weighted = cuda.shared.array(threads, np.float64)  # sum of exp(ref - ref_top) * (ref - test)
        ref_args = cuda.shared.array(threads, np.int64)
        test_args = cuda.shared.array(threads, np.int64)
        ref_top = np.float32(_NEG_INF)
        test_top = np.float32(_NEG_INF)
        ref_total = 0.0
        test_total = 0.0
        ref_weighted = 0.0
        ref_arg = 0
        test_arg = 0
        for j in range(tid, width, threads):
            r = ref[row, j]
            t = test[row, j]
            if r > ref_top:  # strict: the first index among a thread's ties, as argmax
                scale = math.exp(np.float64(ref_top) - np.float64(r)) if ref_top != _NEG_INF else 0.0
                ref_total = ref_total * scale + 1.0
                ref_weighted = ref_weighted * scale + (np.float64(r) - np.float64(t))
                ref_top = r
                ref_arg = j
            elif r != _NEG_INF:  # a masked reference token has p = 0 and adds nothing, whatever the test's
                p = np.float64(math.exp(r - ref_top))
                ref_total += p
                ref_weighted += p * (np.float64(r) - np.float64(t))
            if t > test_top:
                test_total = (test_total * math.exp(np.float64(test_top) - np.float64(t))
                              if test_top != _NEG_INF else 0.0) + 1.0
                test_top = t
                test_arg = j
            elif t != _NEG_INF:
                test_total += np.float64(math.exp(t - test_top))
        ref_tops[tid], test_tops[tid] = ref_top, test_top
        ref_sums[tid], test_sums[tid], weighted[tid] = ref_total, test_total, ref_weighted
        ref_args[tid], test_args[tid] = ref_arg, test_arg
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if tid < stride:
                other = tid + stride
                a, b = ref_tops[tid], ref_tops[other]
                new_top = max(a, b)
                ref_sums[tid] = _scaled(ref_sums[tid], a, new_top) + _scaled(ref_sums[other], b, new_top)
                weighted[tid] = _scaled(weighted[tid], a, new_top) + _scaled(weighted[other], b, new_top)
                if _earlier_max(a, ref_args[tid], b, ref_args[other]):
                    ref_args[tid] = ref_args[other]
                ref_tops[tid] = new_top
                a, b = test_tops[tid], test_tops[other]
                new_top = max(a, b)
                test_sums[tid] = _scaled(test_sums[tid], a, new_top) + _scaled(test_sums[other], b, new_top)
                if _earlier_max(a, test_args[tid], b, test_args[other]):
                    test_args[tid] = test_args[other]
                test_tops[tid] = new_top
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            ref_lse = _finish_lse(ref_tops[0], ref_sums[0])
            test_lse = _finish_lse(test_tops[0], test_sums[0])
            target = targets[row]
            kld[row] = weighted[0] / ref_sums[0] - ref_lse + test_lse
            ref_nll[row] = ref_lse - np.float64(ref[row, target])
            test_nll[row] = test_lse - np.float64(test[row, target])
            delta_p[row] = math.exp(-test_nll[row]) - math.exp(-ref_nll[row])
            agree[row] = 1 if ref_args[0] == test_args[0] else 0

    return nll_kernel, divergence_kernel
