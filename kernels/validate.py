"""Input checks shared by the public kernel wrappers: each error says how to fix the call."""

from __future__ import annotations

import numpy as np

_ACCEPTED = (np.float32, np.float16)


def is_device_array(array) -> bool:
    """True for GPU data: an object with ``__cuda_array_interface__`` (torch, CuPy) or a Numba device array."""
    return hasattr(array, "__cuda_array_interface__") or bool(getattr(array, "__cuda_ndarray__", False))


def check_logits(logits, name: str = "logits") -> np.ndarray:
    """Return `logits` as a C-contiguous float32 (N, V) array, or raise saying what to change.

    float16 is accepted and converted (a copy); other dtypes are refused rather
    than silently copied, since a float64 copy of a large block doubles memory.
    """
    if not isinstance(logits, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array, got {type(logits).__name__}; "
            "pass tensor.float().numpy() for a torch tensor"
        )
    if logits.dtype not in _ACCEPTED:
        raise TypeError(f"{name} has dtype {logits.dtype}; pass float32 (e.g. {name}.astype(np.float32))")
    if logits.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, V), got shape {logits.shape}; reshape to (-1, vocab_size)")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has an empty vocabulary axis (shape {logits.shape}); V must be >= 1")
    if not logits.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; pass np.ascontiguousarray({name})")
    if logits.dtype == np.float16:
        return logits.astype(np.float32)
    return logits


def check_targets(targets, n_rows: int, vocab_size: int) -> np.ndarray:
    """Return `targets` as an int64 (N,) array of token ids in [0, V), or raise."""
    if not isinstance(targets, np.ndarray):
        targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets have dtype {targets.dtype}; pass integer token ids (e.g. targets.astype(np.int64))")
    if targets.shape != (n_rows,):
        raise ValueError(f"targets have shape {targets.shape}, expected ({n_rows},): one token id per logits row")
    bad = np.flatnonzero((targets < 0) | (targets >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"targets[{i}] = {int(targets[i])} is outside the vocabulary [0, {vocab_size}); "
            f"{bad.size} target(s) out of range: drop ignored positions (e.g. -100) before scoring"
        )
    return np.ascontiguousarray(targets, dtype=np.int64)


def check_same_shape(ref: np.ndarray, test: np.ndarray) -> None:
    """Raise unless reference and test logits have the same (N, V) shape."""
    if ref.shape != test.shape:
        raise ValueError(
            f"ref_logits {ref.shape} and test_logits {test.shape} differ; "
            "score the same positions with the same vocabulary (slice the larger vocabulary to match)"
        )


def raise_for_bad_rows(row_results: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first row whose result is NaN, and why; the kernels produce NaN only for bad input."""
    bad = np.flatnonzero(np.isnan(row_results))
    if not bad.size:
        return
    i = int(bad[0])
    for name, array in arrays.items():
        row = array[i]
        if np.isnan(row).any():
            problem = f"{name}[{i}] contains NaN"
            break
        if np.isposinf(row).any():
            problem = f"{name}[{i}] contains +inf"
            break
        if np.isneginf(row).all():
            problem = f"{name}[{i}] is entirely -inf (every token masked)"
            break
    else:
        problem = f"row {i} gave NaN"
    raise ValueError(
        f"{problem} ({bad.size} bad row(s)); logits must be finite or -inf (masked) "
        "with at least one finite entry per row: check the model output or the mask"
    )
