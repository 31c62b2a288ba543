"""The reference's logits, recorded once per run so no variant's child has to run the reference again.

The reference's own child tees the float32 logits of every scored row, window
after window, into one file, and writes its greedy continuations of the
generation prompts beside it; the file gets its final name only when whole, so
a record that exists is complete. Each later child memory-maps it and streams
it block by block as a live reference would: the same numbers, read instead of
recomputed.

A record costs ``rows x V x 4`` bytes of disk (510 x 49,152 x 4 B = 100 MB for
the default budget). Past ``record_limit`` (2 GiB, about 10,000 scored
tokens of SmolLM2, or less where the disk is short) the record is dropped and
every child runs the reference beside its variant instead, which needs no disk
at all: the whole of WikiText-2 would take 30 GB.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from harness.backends.base import LogitBlock
from harness.kernels import to_host
from harness.text.protocols import Window

RECORD_LIMIT_BYTES = 2 << 30
# A record may take at most this share of the free disk space.
RECORD_FREE_SPACE_SHARE = 0.75
LOGITS_NAME = "logits.f32"
CONTINUATIONS_NAME = "continuations.json"
# The record's files in the order they are written: the logits, renamed into place last, mark it finished.
RECORD_FILES = (CONTINUATIONS_NAME, LOGITS_NAME)


def record_limit(directory: str | Path) -> int:
    """Bytes a record in ``directory`` may take: ``RECORD_LIMIT_BYTES``, or three quarters of the free space."""
    return min(RECORD_LIMIT_BYTES, int(RECORD_FREE_SPACE_SHARE * shutil.disk_usage(directory).free))


class LogitRecorder:
    """Writes a reference's scored logits to ``directory`` as they stream past (``tee``), then ``finish``.

    A record that would pass ``limit_bytes``, or a failed write, is dropped
    with one line on stderr (the child's log): the reference's own scoring goes
    on, and the variants run it live. Use it as a context manager: leaving it
    unfinished drops the partial file.
    """

    def __init__(self, directory: str | Path, limit_bytes: int):
        self.directory = Path(directory)
        self._partial = self.directory / (LOGITS_NAME + ".partial")
        self._limit = limit_bytes
        self._written = 0
        try:
            self._file = open(self._partial, "wb")
        except OSError as exc:  # no record, as for any failed write: the variants run the reference live
            self._file = None
            _notice(f"cannot open {self._partial} ({exc.strerror})")

    def __enter__(self) -> "LogitRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # a no-op once finished

    def tee(self, blocks: Iterable[LogitBlock]) -> Iterator[LogitBlock]:
        for block in blocks:
            if self._file is not None:  # a block on the GPU is copied to the host for the file
                self._write(np.ascontiguousarray(to_host(block.logits), dtype=np.float32))
            yield block

    def _write(self, logits: np.ndarray) -> None:
        if self._written + logits.nbytes > self._limit:
            _notice(f"it would pass its limit of {self._limit} bytes")
            self.discard()
            return
        try:
            self._file.write(logits.data)
            self._written += logits.nbytes
        except OSError as exc:
            _notice(f"write failed ({exc.strerror})")
            self.discard()

    def finish(self, continuations: Sequence[Sequence[int]]) -> None:
        """Make the record visible: continuations first, then the logits under their final name."""
        if self._file is None:
            return
        try:
            self._file.close()
            (self.directory / CONTINUATIONS_NAME).write_text(json.dumps([list(map(int, c)) for c in continuations]))
            os.replace(self._partial, self.directory / LOGITS_NAME)
        except OSError as exc:
            _notice(f"finishing failed ({exc.strerror})")
            self.discard()
        self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)


def _notice(why: str) -> None:
    print(f"reference record dropped, the variants will run the reference live: {why}", file=sys.stderr)


class RecordedReference:
    """A finished record, read back window by window as ``LogitBlock``s in the order it was written."""

    def __init__(self, directory: str | Path, windows: Sequence[Window]):
        directory = Path(directory)
        self._offsets = np.concatenate([[0], np.cumsum([w.n_scored for w in windows])])
        rows = int(self._offsets[-1])
        logits = np.memmap(directory / LOGITS_NAME, dtype=np.float32, mode="r")
        if rows == 0 or logits.size % rows:
            raise ValueError(f"{directory}: {logits.size} logits do not divide into {rows} scored rows")
        self._logits = logits.reshape(rows, -1)
        self._windows = list(windows)
        self.continuations: list[list[int]] = json.loads((directory / CONTINUATIONS_NAME).read_text())

    @classmethod
    def open_if_complete(cls, directory: str | Path | None, windows: Sequence[Window]) -> "RecordedReference | None":
        if directory is None or not (Path(directory) / LOGITS_NAME).is_file():
            return None
        return cls(directory, windows)

    def window_blocks(self, index: int, block_rows: int) -> Iterator[LogitBlock]:
        """The recorded blocks of window ``index``, ``block_rows`` rows at a time."""
        window = self._windows[index]
        ids = np.asarray(window.token_ids, dtype=np.int64)
        first = self._offsets[index]
        for row in range(0, window.n_scored, block_rows):
            n = min(block_rows, window.n_scored - row)
            pos = window.score_start + row
            # np.asarray: a plain ndarray view of the mapped rows, which the JIT kernels take as they are.
            yield LogitBlock(pos, np.asarray(self._logits[first + row : first + row + n]), ids[pos + 1 : pos + 1 + n])
