"""Where the logits are decides which kernels score them: numpy arrays on the CPU kernels, GPU arrays on the GPU.

A runtime that computes logits on the GPU (PyTorch on CUDA) hands its blocks
over as device tensors, and they are scored where they are
(``cuda_scoring``): only the per-row results cross PCIe. Logits that a runtime
can hand to the host only (llama-cpp-python, onnxruntime-genai) are numpy
arrays and take the CPU kernels. A divergence with one side on each copies the
device side to the host. Nothing here imports ``numba.cuda`` until GPU data
arrives.
"""

from __future__ import annotations

import numpy as np

from .divergence import Divergence
from .divergence import divergence as cpu_divergence
from .nll import token_nll as cpu_token_nll
from .validate import is_device_array


def to_host(array) -> np.ndarray:
    """``array`` as a numpy array: GPU data copied over (once), anything else as ``np.asarray`` gives it."""
    if not is_device_array(array):
        return np.asarray(array)
    from .cuda_scoring import copy_to_host

    return copy_to_host(array)


def device_scoring_available() -> bool:
    """Whether logits on the GPU can be scored there: numba's CUDA target imports and finds a GPU (or its simulator)."""
    try:
        from .cuda_scoring import available
    except Exception:  # numba without a CUDA target, or a broken CUDA toolkit
        return False
    return available()


def token_nll(logits, targets) -> np.ndarray:
    """Negative log-likelihood (nats) of each row's target, float64 (N,), scored where ``logits`` (N, V) live."""
    if is_device_array(logits):
        from .cuda_scoring import cuda_token_nll

        return cuda_token_nll(logits, targets)
    return cpu_token_nll(logits, targets)


def divergence(ref_logits, test_logits, targets) -> Divergence:
    """Per-row divergence of test logits from reference logits (N, V): on the GPU when both live there."""
    ref_on_device, test_on_device = is_device_array(ref_logits), is_device_array(test_logits)
    if ref_on_device and test_on_device:
        from .cuda_scoring import cuda_divergence

        return cuda_divergence(ref_logits, test_logits, targets)
    if ref_on_device or test_on_device:  # one side was handed to the host: score both there
        ref_logits, test_logits = to_host(ref_logits), to_host(test_logits)
    return cpu_divergence(ref_logits, test_logits, targets)
