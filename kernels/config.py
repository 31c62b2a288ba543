"""Settings shared by every kernel: fastmath flags, chunk length and thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba

# No `nnan`/`ninf`: -inf logits (a masked vocabulary) are valid input, and NaN
# must survive to the output so the wrappers can report it instead of hiding it.
# `reassoc` lets LLVM split the row sums over vector lanes; `contract` gives FMAs.
FASTMATH = {"contract", "reassoc", "arcp", "nsz", "afn"}

# Elements per chunk of a row: 8 KiB of float32, so the second pass over a chunk
# (and both rows of a divergence) reads from L1, and each float32 partial sum
# covers few enough terms to stay within ~1e-7 relative before it joins the
# float64 row total.
CHUNK = 2048

# Rows handed to a thread at a time. Numba's default splits rows evenly up
# front, so one thread preempted by another process stalls the whole call;
# small tasks let the other thread take over its rows.
ROWS_PER_TASK = 8


def set_num_threads(n: int) -> int:
    """Run the kernels on `n` threads (capped at NUMBA_NUM_THREADS); returns the count used.

    Numba's setting is per calling thread, so call this from the thread that
    runs the kernels.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    used = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(used)
    return used


@contextmanager
def small_row_tasks() -> Iterator[None]:
    """Within the block, parallel kernels hand out ROWS_PER_TASK rows at a time (per calling thread)."""
    # Set from Python: `with parallel_chunksize` inside a cached kernel breaks Numba's cache.
    previous = numba.set_parallel_chunksize(ROWS_PER_TASK)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(previous)

# The CUDA kernels (cuda_scoring.py): threads per block, one block per row. A power of two; 256
# threads stream a 49,152-wide row in 192 coalesced loads each and leave room for 8 blocks per SM.
CUDA_THREADS_PER_ROW = 256
# Off: precise expf/logf and IEEE division. The kernels are bound by memory bandwidth, so the fast
# approximations (and flushing denormals to zero) would buy little and cost the float64-checked accuracy.
CUDA_FASTMATH = False
