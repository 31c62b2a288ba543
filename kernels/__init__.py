"""Installed as ``harness.kernels`` (pyproject's package-dir): Numba log-softmax, token NLL and divergence kernels.

``token_nll`` and ``divergence`` score logits where they live: numpy arrays on
the CPU kernels, GPU arrays (a CUDA torch tensor) on the CUDA kernels of
``cuda_scoring`` (``dispatch.py``).
"""

from __future__ import annotations

import time

import numpy as np

from .config import set_num_threads
from .dispatch import Divergence, device_scoring_available, divergence, is_device_array, to_host, token_nll
from .softmax import log_softmax
from .streaming import Quantiles, RunningStats

__all__ = [
    "Divergence",
    "Quantiles",
    "RunningStats",
    "device_scoring_available",
    "divergence",
    "is_device_array",
    "log_softmax",
    "set_num_threads",
    "to_host",
    "token_nll",
    "warmup",
]


def warmup() -> float:
    """Compile (or load from Numba's on-disk cache) every kernel; returns the seconds it took."""
    start_s = time.perf_counter()
    logits = np.zeros((2, 3), dtype=np.float32)
    targets = np.zeros(2, dtype=np.int64)
    log_softmax(logits)
    token_nll(logits, targets)
    divergence(logits, logits, targets)
    return time.perf_counter() - start_s
