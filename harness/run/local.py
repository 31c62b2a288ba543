"""Each variant in a child process of its own, with a timeout; rows appended to a JSONL file as they finish.

A crash, a kill by a signal (the OOM killer's included) or a timeout costs
only that variant: it becomes a ``status: "failed"`` row whose ``error`` says
why, and the run goes on. Every row is appended, flushed and fsynced as its
variant finishes, so a killed run keeps what it finished and ``resume=True``
continues without redoing it. A child's own output, the runtimes' native log
lines included, goes to the job's log file, never to the terminal.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from harness import defaults
from harness.errors import UserError, one_line
from harness.results import Point, VariantRow

DEFAULT_TIMEOUT_S = float(defaults.TIMEOUT_S)
# Once the child has sent its row, how long it may take to exit before it is killed.
EXIT_GRACE_S = 30.0
# How long a child may take to stop after SIGTERM before it is killed.
TERM_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class VariantJob:
    """One variant's work: ``target(*args, **kwargs)`` returns its result row as a dict; both must pickle.

    ``log_path``: where the child's stdout and stderr go (appended); None keeps the parent's.
    ``model``: which of the run's models it belongs to; (model, variant) names a job.
    What a runner that places jobs on other machines needs, so it never looks inside ``args``:
    ``device`` (``cpu``, ``cuda`` or ``cuda:N``), ``loads`` (every ``harness.manifest.Variant`` whose
    files the job reads), and ``record_dir``: a folder the job shares with other jobs of its model,
    which one of them (``writes_record``) fills and the others read; the target gets it as its
    ``record_dir`` keyword, so a runner may hand it a folder of the node it runs on. ``record_files``:
    the files of that record in the order they are written, the last one marking it finished.
    ``point``: the operating point (``harness.results.Point``) a speed-only job measures; None for the
    variant's own job. (model, variant, point) names a job, and its row.
    """

    variant: str
    runtime: str
    precision: str
    target: Callable[..., dict]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    log_path: str | None = None
    model: str | None = None
    device: str = "cpu"
    loads: tuple = ()
    record_dir: str | None = None
    writes_record: bool = False
    record_files: tuple[str, ...] = ()
    point: Point | None = None

    @property
    def key(self) -> tuple[str | None, str, str | None]:
        return self.model, self.variant, self.point.key if self.point else None


@dataclass(frozen=True)
class ChildOutcome:
    """What came back from a child: its value, or a one-line error (and the traceback when it raised)."""

    value: Any = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def failed_row(job: VariantJob, error: str, trace: str | None = None) -> VariantRow:
    """The result row of a variant (or of one of its points) whose child failed."""
    return replace(VariantRow.failed(job.variant, job.runtime, job.precision, error, trace), point=job.point)


# ---- one child --------------------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child when its parent dies, so a killed run leaves no orphan.

    The child's parent is the forkserver, which exits when the run's process ends (its last client
    is gone); ``parent_pid`` is the run's process itself, checked once the signal is armed.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's finally still kills its child
        return
    if not psutil.pid_exists(parent_pid) or os.getppid() == 1:  # the run ended before prctl took effect
        os._exit(1)


def _send_output_to(log_path: str) -> None:
    """Point this process's file descriptors 1 and 2 at ``log_path``: native libraries write there directly."""
    import sys

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream, target_fd in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(fd, target_fd)
    os.close(fd)


def _child_main(conn: Connection, parent_pid: int, environ: Mapping[str, str], target: Callable, args: tuple,
                kwargs: Mapping, log_path: str | None = None) -> None:
    _die_with_parent(parent_pid)
    os.environ.clear()  # the parent's environment as it is now, not the server's from when it started
    os.environ.update(environ)
    if log_path is not None:
        _send_output_to(log_path)
    try:
        message = ("ok", target(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as text
        message = ("error", one_line(exc), traceback.format_exc())
    try:
        conn.send(message)
    except Exception as exc:  # an unpicklable value: say so instead of dying silently
        conn.send(("error", f"the child's result could not be sent: {one_line(exc)}", traceback.format_exc()))
    finally:
        conn.close()


def _cgroup_oom_kills() -> int | None:
    """The OOM-kill count of this process's cgroup (v2), to tell an OOM kill from another SIGKILL."""
    try:
        relative = Path("/proc/self/cgroup").read_text().split("\n")[0].split("::", 1)[1]
        events = Path("/sys/fs/cgroup", relative.lstrip("/"), "memory.events").read_text()
    except (OSError, IndexError):
        return None
    for line in events.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return None


def _exit_reason(exitcode: int | None, oom_before: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        oom_after = _cgroup_oom_kills()
        if -exitcode == signal.SIGKILL and None not in (oom_before, oom_after) and oom_after > oom_before:
            return f"killed by {name}: out of memory (the kernel's OOM killer)"
        return f"killed by {name}"
    return f"exited with status {exitcode} without sending a result"


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM, then SIGKILL if the child ignores it; always reaps it."""
    if process.is_alive():
        process.terminate()
        process.join(TERM_GRACE_S)
    if process.is_alive():
        process.kill()
    process.join()


def _child_context(target: Callable) -> multiprocessing.context.BaseContext:
    """The forkserver context, its server importing the target's module when it starts (once per run).

    Each variant still runs in a process of its own, forked from that clean
    server and never from the parent, without paying about a second of imports
    each (numpy, Numba and what the target's module imports at its top). Nothing
    is run in the server: Numba's thread pool must not be forked.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([target.__module__])
    return context


def run_in_child(
    target: Callable,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    log_path: str | None = None,
) -> ChildOutcome:
    """Run ``target(*args, **kwargs)`` in a fresh process (``_child_context``), waiting on its pipe and sentinel."""
    context = _child_context(target)
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(writer, os.getpid(), dict(os.environ), target, args, dict(kwargs or {}), log_path),
        name="harness-variant",
    )
    oom_before = _cgroup_oom_kills()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        process.start()
        writer.close()  # the child holds the only write end: its death reads as EOF
        message = None
        while message is None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([reader, process.sentinel], remaining)
            if not ready:
                return ChildOutcome(error=f"timed out after {timeout_s:g} s")
            # Read before judging an exit: a child may send its row and exit at once.
            if reader in ready or reader.poll():
                try:
                    message = reader.recv()
                except EOFError:
                    break
            elif process.sentinel in ready:
                break
        if message is None:
            process.join()
            return ChildOutcome(error=_exit_reason(process.exitcode, oom_before))
        process.join(EXIT_GRACE_S)  # a child stuck in native teardown is killed in finally; its row stands
        if message[0] == "ok":
            return ChildOutcome(value=message[1])
        return ChildOutcome(error=message[1], traceback=message[2])
    finally:
        _stop(process)
        reader.close()


# ---- the results file ---------------------------------------------------------------------------
def read_results(path: str | Path) -> list[VariantRow]:
    """Rows of a results JSONL file in order; a torn last line (a run killed mid-write) is left out."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(VariantRow.from_dict(json.loads(line)))
        except json.JSONDecodeError:
            if number == len(lines) - 1:  # no newline after it: the write was cut short
                continue
            raise UserError(f"{path}: line {number + 1} is not JSON; delete the file or start a new run") from None
        except (TypeError, AttributeError):
            raise UserError(f"{path}: line {number + 1} is not a result row; delete the file or start a new run") from None
    return rows


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that lacks its newline, so the next append starts on a line of its own."""
    with open(path, "rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            file.truncate(data.rfind(b"\n") + 1)
            file.flush()
            os.fsync(file.fileno())


def append_result(path: str | Path, row: VariantRow) -> None:
    """Append one row as a JSON line and make it durable before returning."""
    line = json.dumps(row.to_dict(), allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        os.fsync(file.fileno())


# ---- a run ------------------------------------------------------------------------------------
def run_variants(
    jobs: Sequence[VariantJob],
    results_path: str | Path,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    resume: bool = False,
    retry_failed: bool = False,
    on_row: Callable[[VariantRow], None] | None = None,
) -> list[VariantRow]:
    """Run each job in its own child, appending its row to ``results_path``; return one row per job, in job order.

    Without ``resume`` the file starts empty. With it, variants that already
    have a row there are not run again (failed ones are, with ``retry_failed``).
    ``on_row`` sees each new row as it is written (for progress output).
    """
    keys = job_keys(jobs)
    path = Path(results_path)
    done = open_results(path, resume, retry_failed)
    for job in jobs:
        if job.key in done:
            continue
        row = run_job(job, timeout_s)
        append_result(path, row)
        done[job.key] = row
        if on_row is not None:
            on_row(row)
    return [done[key] for key in keys]


def job_keys(jobs: Sequence[VariantJob]) -> list[tuple[str | None, str, str | None]]:
    """Each job's (model, variant, point), in order; two jobs with one key are a bug in the caller."""
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"(model, variant, point) keys must be unique, got {keys}")
    return keys


def open_results(path: Path, resume: bool, retry_failed: bool = False) -> dict[tuple, VariantRow]:
    """Make the results file ready for appending: emptied, or (``resume``) kept with the rows it already has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        return finished_rows(path, retry_failed)
    path.write_bytes(b"")
    return {}


def finished_rows(path: Path, retry_failed: bool = False) -> dict[tuple, VariantRow]:
    """The rows a resumed run keeps, by (model, variant, point): the last of each (failed ones dropped with
    ``retry_failed``).

    A torn last line is cut first, so the next append starts on a line of its own.
    """
    if not path.exists():
        return {}
    _drop_torn_tail(path)
    done = {row.key: row for row in read_results(path)}  # the last row of a variant (or point) wins
    if retry_failed:
        done = {key: row for key, row in done.items() if row.status != "failed"}
    return done


def run_job(job: VariantJob, timeout_s: float | None) -> VariantRow:
    """One job in its own child on this machine: its row, stamped with this node and the child's start and end."""
    from harness.machine.environment import node_info

    started = time.time()
    kwargs = {**job.kwargs, **({"record_dir": job.record_dir} if job.record_dir is not None else {})}
    row = _job_row(job, run_in_child(job.target, job.args, kwargs, timeout_s, job.log_path))
    return replace(row, model=job.model, point=job.point, node=node_info(), started_unix=round(started, 3),
                   ended_unix=round(time.time(), 3))


def _job_row(job: VariantJob, outcome: ChildOutcome) -> VariantRow:
    if not outcome.ok:
        return failed_row(job, outcome.error, outcome.traceback)
    if not isinstance(outcome.value, dict):
        return failed_row(job, f"the child returned {type(outcome.value).__name__}, not a result row (dict)")
    identity = {"variant": job.variant, "runtime": job.runtime, "precision": job.precision}
    return VariantRow.from_dict({**identity, **outcome.value})

