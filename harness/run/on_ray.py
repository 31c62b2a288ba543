"""The run's jobs as Ray tasks: each one is ``runner.run_job`` on a node with a free slot, rows streamed to the head.

A task runs the local runner's own step on its node: a child per
variant, its timeout, its failed row on a crash, a kill or a timeout. It takes
one ``harness_slot`` (and one GPU with ``--device cuda``), so two measurements
never share a node (``harness.run.cluster``). The head appends each row to
results.jsonl (fsynced) as its task finishes, so ``resume`` works as it does
locally: only the jobs without a row are submitted again.

Files: the head prepares every variant; a node loads it from the same path
(shared storage, or the same ``prepare`` run there: the cache is keyed by the
source's content, and ``harness.run.cluster`` checks each node's manifests). The
reference's recorded logits (``harness.measure.reference_record``) travel through
Ray's object store: its task returns the record, the head puts it, and each
of the model's other tasks, submitted once the reference's row is in, writes
it to a folder of its own node and reads it there, as a local child would. A
node lost mid-task costs that task one retry elsewhere; a second loss is a
failed row with Ray's error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.results import VariantRow
from harness.run import cluster
from harness.run.cluster import ray_error_line
from harness.run.local import (
    DEFAULT_TIMEOUT_S,
    VariantJob,
    append_result,
    failed_row,
    job_keys,
    open_results,
    run_job,
)

RETRIES = 1  # a task whose node or worker is lost is submitted once more before its row says so
# The environment variables Ray sets in its workers that a local child would not see.
RAY_SET_ENV = ("OMP_NUM_THREADS",)
RAY_LOG_NAME = "ray.log"  # beside results.jsonl: what Ray itself printed during the run


def run_variants_on_ray(
    jobs: Sequence[VariantJob],
    results_path: str | Path,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    resume: bool = False,
    retry_failed: bool = False,
    on_row: Callable[[VariantRow], None] | None = None,
    address: str = "auto",
) -> list[VariantRow]:
    """``runner.run_variants`` on the Ray cluster at ``address``: one row per job, in job order.

    The cluster is checked (``harness.run.cluster.check_cluster``) before the
    results file is touched; a mistake there is a UserError.
    """
    keys = job_keys(jobs)
    path = Path(results_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Ray prints the cluster's own messages (a node marked dead, its raylet's last log lines) on stdout,
    # where --json - writes report.json, and its connection retries on stderr: both go to a file beside the results.
    with open(path.with_name(RAY_LOG_NAME), "a", encoding="utf-8") as ray_log, \
            contextlib.redirect_stdout(ray_log), cluster.connected(address, ray_log):
        cluster.check_cluster(address, _device(jobs), _variants(jobs), {job.runtime for job in jobs})
        done = open_results(path, resume, retry_failed)
        _Schedule(path, timeout_s, on_row, done).run([job for job in jobs if job.key not in done])
    return [done[key] for key in keys]


class _Schedule:
    """Submits the jobs, a model's reference before the jobs that read its record, and records rows as they finish."""

    def __init__(self, path: Path, timeout_s: float | None, on_row, done: dict):
        import ray

        self._ray = ray
        self._path, self._timeout_s, self._on_row, self._done = path, timeout_s, on_row, done
        self._pending: dict[Any, tuple[VariantJob, Any, int]] = {}  # ObjectRef -> (job, record ref, attempt)
        self._held: dict[str, list[VariantJob]] = {}  # record folder -> jobs waiting for their reference's record
        self._env = {name: os.environ.get(name) for name in RAY_SET_ENV}

    def run(self, jobs: list[VariantJob]) -> None:
        producers = {_record_role(job)[0] for job in jobs if _record_role(job)[1]}
        for job in jobs:
            record_dir, produces = _record_role(job)
            if record_dir in producers and not produces:
                self._held.setdefault(record_dir, []).append(job)
            else:
                self._submit(job)
        try:
            while self._pending:
                [ref], _ = self._ray.wait(list(self._pending), num_returns=1)
                self._finish(ref)
        finally:
            for ref in self._pending:  # interrupted: no task outlives the run
                self._ray.cancel(ref, force=True)

    def _submit(self, job: VariantJob, record=None, attempt: int = 0) -> None:
        task = _task(_device([job]))
        self._pending[task.remote(job, self._timeout_s, record, self._env)] = (job, record, attempt)

    def _finish(self, ref) -> None:
        job, record, attempt = self._pending.pop(ref)
        produced = None
        try:
            row, log, produced = self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:  # the task itself raised: no retry would help
            row = replace(failed_row(job, f"the Ray task failed: {ray_error_line(exc)}"), model=job.model)
        except self._ray.exceptions.RayError as exc:  # its worker or node was lost
            if attempt < RETRIES:
                print(f"{job.variant}: lost on Ray, submitted once more: {ray_error_line(exc)}", file=sys.stderr,
                      flush=True)
                self._submit(job, record, attempt + 1)
                return
            row = replace(failed_row(job, f"lost on Ray {attempt + 1} times: {ray_error_line(exc)}"), model=job.model)
        else:
            if job.log_path is not None:  # as a local child's, the file exists even when empty
                with open(job.log_path, "a", encoding="utf-8") as file:
                    file.write(log)
        append_result(self._path, row)
        self._done[job.key] = row
        if self._on_row is not None:
            self._on_row(row)
        record_dir, produces = _record_role(job)
        if produces:
            record_ref = self._ray.put(produced) if produced is not None else None
            for waiting in self._held.pop(record_dir, []):
                self._submit(waiting, record_ref)


@functools.lru_cache(maxsize=None)
def _task(device: str):
    """The Ray task of one job: a slot of its own, a GPU for CUDA, no automatic retry (``RETRIES`` is ours)."""
    import ray

    from harness.run.cluster import SLOT

    return ray.remote(_run_on_node).options(
        num_cpus=0, num_gpus=1 if device == "cuda" else 0, resources={SLOT: 1}, max_retries=0)


# ---- on the node --------------------------------------------------------------------------------
def _run_on_node(job: VariantJob, timeout_s: float | None, record: dict | None, env: dict[str, str | None]):
    """``runner.run_job`` here, with the job's files and record on this node: (row, log text, record made or None)."""
    import ray

    for name, value in env.items():  # the child sees the head's values, not Ray's
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    with tempfile.TemporaryDirectory(prefix="harness-task-") as scratch:
        local = _here(job, Path(scratch), record)
        row = run_job(local, timeout_s)
        log = Path(local.log_path) if local.log_path else None
        text = log.read_text(encoding="utf-8", errors="replace") if log is not None and log.is_file() else ""
        produced = _read_record(local) if _record_role(local)[1] else None
    node = replace(row.node, ray_node=ray.get_runtime_context().get_node_id())
    return replace(row, node=node), text, produced


def _here(job: VariantJob, scratch: Path, record: dict | None) -> VariantJob:
    """The job with its log and its reference record in ``scratch``, a folder of this node."""
    log_path = None if job.log_path is None else str(scratch / Path(job.log_path).name)
    if job.record_dir is None:
        return replace(job, log_path=log_path)
    record_dir = scratch / "reference"
    record_dir.mkdir()
    if record is not None:
        _write_record(record, record_dir, job.record_files)
    return replace(job, log_path=log_path, record_dir=str(record_dir))


def _read_record(job: VariantJob) -> dict | None:
    """The finished record the job left in its folder, as a value Ray can carry, else None (the record was dropped)."""
    import numpy as np

    folder = Path(job.record_dir)
    if not (folder / job.record_files[-1]).is_file():
        return None
    return {name: np.fromfile(folder / name, dtype=np.uint8) for name in job.record_files}


def _write_record(record: dict, record_dir: Path, names: Sequence[str]) -> None:
    """The record as the reference's child left it; a node short of disk runs the reference live instead.

    The files are written in the job's order, each whole before its name appears, so the last one
    (which a reader takes as the mark of a finished record) comes last.
    """
    try:
        for name in names:
            partial = record_dir / (name + ".partial")
            record[name].tofile(partial)
            partial.rename(record_dir / name)
    except OSError as exc:
        print(f"reference record not written here ({exc.strerror}); the reference runs live", file=sys.stderr)


# ---- what a job is ------------------------------------------------------------------------------
def _record_role(job: VariantJob) -> tuple[str | None, bool]:
    """The folder of the record the job reads or writes (None: it has none), and whether it writes it."""
    return job.record_dir, job.record_dir is not None and job.writes_record


def _device(jobs: Sequence[VariantJob]) -> str:
    """``cuda`` when a job runs on a GPU (``cuda`` or ``cuda:N``: Ray makes its GPU the task's only one)."""
    return "cuda" if any(job.device.startswith("cuda") for job in jobs) else "cpu"


def _variants(jobs: Sequence[VariantJob]) -> list:
    """Every variant a job loads: its own, and its reference (a node running it live needs those files)."""
    return list({variant.path: variant for job in jobs for variant in job.loads}.values())
