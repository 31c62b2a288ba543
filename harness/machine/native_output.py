"""What C libraries (llama.cpp) print on file descriptor 2, sent elsewhere.

``contextlib.redirect_stderr`` only swaps ``sys.stderr``; native code writes to
the descriptor itself, so this swaps the descriptor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def native_stderr_to(target: str | os.PathLike | IO) -> Iterator[Path | None]:
    """Send what C libraries write to fd 2 to ``target`` instead of the terminal.

    ``target``: a path (a log file, written anew; ``os.devnull``), or a file
    already open for writing (appended to; the block yields None then).
    """
    sys.stderr.flush()
    with contextlib.ExitStack() as stack:
        if hasattr(target, "fileno"):
            target.flush()
            sink, shown = target, None
        else:
            sink, shown = stack.enter_context(open(target, "wb")), Path(target)
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield shown
        finally:
            os.dup2(saved, 2)
            os.close(saved)
