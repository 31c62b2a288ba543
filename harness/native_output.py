"""What C libraries (llama.cpp) print on file descriptor 2, sent elsewhere.

``contextlib.redirect_stderr`` only swaps ``sys.stderr``; native code writes to
the descriptor itself, so this swaps the descriptor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def native_stderr_to(path: str | os.PathLike) -> Iterator[Path]:
    """Send what C libraries write to fd 2 to ``path`` (a log file, ``os.devnull``) instead of the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield Path(path)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
