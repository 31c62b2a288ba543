"""The runner: one spawned child per variant, failures become rows, results survive a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.results import VariantRow
from harness.run.local import (
    VariantJob,
    append_result,
    read_results,
    run_in_child,
    run_variants,
)


# ---- child targets: top level, so a spawned child can import them -------------------------------
def row_for(name: str, log: str | None = None, sleep_s: float = 0.0) -> dict:
    """A variant that works; logs its start and end so a test can count executions."""
    if log:
        with open(log, "a") as f:
            f.write(f"start {name} {os.getpid()}\n")
    time.sleep(sleep_s)
    if log:
        with open(log, "a") as f:
            f.write(f"end {name}\n")
    return {"variant": name, "status": "ok", "backend": {"pid": os.getpid()}, "efficiency": {"decode_tok_s": 1.0}}


def kill_self(signum: int) -> dict:
    os.kill(os.getpid(), signum)
    time.sleep(10)
    return {}


def hang() -> dict:
    time.sleep(120)
    return {}


def raise_value_error() -> dict:
    raise ValueError("bad\nthing happened")


def return_list() -> list:
    return [1, 2]


def exit_quietly() -> dict:
    os._exit(3)


def job(name: str, target=row_for, args=None, log_path=None) -> VariantJob:
    return VariantJob(name, "fake", "fp32", target, (name,) if args is None else args, log_path=log_path)


def stored(name: str, status: str = "ok", error: str | None = None) -> VariantRow:
    return VariantRow(name, "fake", "fp32", status, error)


def print_and_write_natively(name: str) -> dict:
    """A child that writes as a runtime's native code does: straight to file descriptors 1 and 2."""
    print(f"python stdout of {name}")
    os.write(1, f"native stdout of {name}\n".encode())
    os.write(2, f"native stderr of {name}\n".encode())
    return {"variant": name, "status": "ok"}


# ---- tests ------------------------------------------------------------------------------------
def test_child_killed_by_signal_and_child_past_timeout_become_failed_rows_while_others_finish(tmp_path):
    jobs = [
        job("a"),
        job("segv", kill_self, (signal.SIGSEGV,)),
        job("b"),
        job("hang", hang, ()),
        job("killed", kill_self, (signal.SIGKILL,)),
        job("c"),
    ]
    t0 = time.monotonic()
    rows = run_variants(jobs, tmp_path / "results.jsonl", timeout_s=3.0)
    assert time.monotonic() - t0 < 60  # the hung child was stopped at its timeout, not waited for

    by_name = {r.variant: r for r in rows}
    assert [r.variant for r in rows] == ["a", "segv", "b", "hang", "killed", "c"]
    for name in "abc":
        assert by_name[name].status == "ok" and by_name[name].error is None
    assert by_name["segv"].status == "failed"
    assert by_name["segv"].error == "killed by SIGSEGV"
    assert by_name["killed"].error.startswith("killed by SIGKILL")
    assert by_name["hang"].status == "failed"
    assert by_name["hang"].error == "timed out after 3 s"
    for name in ("segv", "hang", "killed"):
        assert by_name[name].runtime == "fake" and by_name[name].precision == "fp32"
        assert "\n" not in by_name[name].error
    # Every variant ran in a process of its own.
    pids = {by_name[n].backend["pid"] for n in "abc"}
    assert len(pids) == 3 and os.getpid() not in pids
    # The file holds the same rows, in order.
    assert read_results(tmp_path / "results.jsonl") == rows


def test_exception_in_child_becomes_one_line_error_with_traceback_kept():
    outcome = run_in_child(raise_value_error, timeout_s=60)
    assert not outcome.ok
    assert outcome.error == "ValueError: bad thing happened"
    assert "raise_value_error" in outcome.traceback


def test_child_that_exits_without_a_result_or_returns_a_non_row_fails_with_the_reason(tmp_path):
    rows = run_variants([job("quiet", exit_quietly, ()), job("list", return_list, ())], tmp_path / "r.jsonl", timeout_s=60)
    assert rows[0].error == "exited with status 3 without sending a result"
    assert rows[1].error == "the child returned list, not a result row (dict)"


def test_resume_skips_finished_variants_and_runs_the_rest(tmp_path):
    path = tmp_path / "results.jsonl"
    log = str(tmp_path / "runs.log")
    run_variants([job("a", args=("a", log)), job("b", args=("b", log))], path, timeout_s=60)
    rows = run_variants([job(n, args=(n, log)) for n in "abc"], path, timeout_s=60, resume=True)
    assert [r.variant for r in rows] == ["a", "b", "c"]
    assert _executions(log) == {"a": 1, "b": 1, "c": 1}
    assert [r.variant for r in read_results(path)] == ["a", "b", "c"]


def test_without_resume_the_file_starts_afresh(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, stored("old"))
    run_variants([job("a")], path, timeout_s=60)
    assert [r.variant for r in read_results(path)] == ["a"]


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, stored("a"))
    with open(path, "a") as f:
        f.write('{"variant": "b", "sta')  # the run died while writing b
    assert [r.variant for r in read_results(path)] == ["a"]
    rows = run_variants([job("a"), job("b")], path, timeout_s=60, resume=True)
    assert [r.status for r in rows] == ["ok", "ok"]
    assert [r.variant for r in read_results(path)] == ["a", "b"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_retry_failed_reruns_failed_rows_only(tmp_path):
    path = tmp_path / "results.jsonl"
    log = str(tmp_path / "runs.log")
    append_result(path, stored("a"))
    append_result(path, stored("b", "failed", "killed by SIGKILL"))
    rows = run_variants([job(n, args=(n, log)) for n in "ab"], path, timeout_s=60, resume=True, retry_failed=True)
    assert [r.status for r in rows] == ["ok", "ok"]
    assert _executions(log) == {"b": 1}


RUNNER_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_runner import job
    from harness.run.local import run_variants
    log = {log!r}
    if __name__ == "__main__":
        run_variants([job(n, args=(n, log, 0.2)) for n in "abcdef"], {path!r}, timeout_s=60,
                     resume=sys.argv[1] == "resume")
    """
)


def test_run_killed_half_way_resumes_without_redoing_finished_variants_and_loses_none(tmp_path):
    path, log = tmp_path / "results.jsonl", tmp_path / "runs.log"
    script = tmp_path / "run.py"
    script.write_text(RUNNER_SCRIPT.format(tests=str(Path(__file__).parent), log=str(log), path=str(path)))

    parent = subprocess.Popen([sys.executable, str(script), "fresh"])
    deadline = time.monotonic() + 60
    while len(read_results(path)) < 2 and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    finished_before = [r.variant for r in read_results(path)]
    assert 2 <= len(finished_before) < 6, finished_before

    # The variant that was running when the parent died died with it: no orphan keeps running.
    pids = [int(line.split()[2]) for line in log.read_text().splitlines() if line.startswith("start")]
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)

    subprocess.run([sys.executable, str(script), "resume"], check=True, timeout=120)
    rows = read_results(path)
    assert sorted(r.variant for r in rows) == list("abcdef")  # none lost, none twice
    completed = _executions(log, "end")
    for name in finished_before:
        assert completed[name] == 1  # finished variants were not redone
    assert set(completed) == set("abcdef")


def _executions(log: str | Path, kind: str = "start") -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in Path(log).read_text().splitlines():
        word, name = line.split()[:2]
        if word == kind:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; only the init process that adopted it has yet to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_rejects_duplicate_variant_names(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_variants([job("a"), job("a")], tmp_path / "r.jsonl")


def test_a_corrupt_line_before_the_last_is_a_user_error_not_silently_skipped(tmp_path):
    from harness.errors import UserError

    path = tmp_path / "results.jsonl"
    path.write_text('{"variant": "a", "runtime": "x", "precision": "y"}\nnot json\n{"variant": "b"}\n')
    with pytest.raises(UserError, match="line 2"):
        read_results(path)


def test_a_line_that_is_json_but_no_row_is_a_user_error(tmp_path):
    from harness.errors import UserError

    path = tmp_path / "results.jsonl"
    path.write_text('{"variant": "a", "runtime": "x", "precision": "y"}\n{"variant": "b"}\n')
    with pytest.raises(UserError, match="line 2 is not a result row"):
        read_results(path)


def test_a_childs_output_native_writes_included_goes_to_its_log_not_the_terminal(tmp_path, capfd):
    logs = [tmp_path / f"{n}.log" for n in "ab"]
    rows = run_variants([job(n, print_and_write_natively, (n,), str(log)) for n, log in zip("ab", logs)],
                        tmp_path / "r.jsonl", timeout_s=60)
    assert [r.status for r in rows] == ["ok", "ok"]
    for name, log in zip("ab", logs):
        # Python's buffered print may land after the native writes: the lines, not their order.
        assert sorted(log.read_text().splitlines()) == [f"native stderr of {name}", f"native stdout of {name}",
                                                        f"python stdout of {name}"]
    out, err = capfd.readouterr()
    assert "native" not in out + err and "python stdout" not in out + err


def test_a_variants_points_are_jobs_of_their_own_failing_and_resuming_apart(tmp_path):
    """--sweep's (variant, point) jobs: one variant's name, a key per point; a point that dies (here out of
    time) is a failed row of that point only, and a resumed run redoes just it."""
    from dataclasses import replace

    from harness.results import Point

    path, log = tmp_path / "results.jsonl", str(tmp_path / "runs.log")
    own = job("a", args=("a", log))
    deep, shallow = Point(4096, 8, 2, 512, 32), Point(0, 1, 2, 512, 32)
    points = [replace(job("a", args=("a", log)), point=shallow), replace(job("a", hang, ()), point=deep)]
    rows = run_variants([own, *points], path, timeout_s=3.0)
    assert [(r.variant, r.point, r.status) for r in rows] == [("a", None, "ok"), ("a", shallow, "ok"),
                                                              ("a", deep, "failed")]
    assert rows[2].error == "timed out after 3 s"
    assert len({r.key for r in read_results(path)}) == 3
    retried = [own, points[0], replace(job("a", args=("a", log)), point=deep)]
    rows = run_variants(retried, path, timeout_s=60, resume=True, retry_failed=True)
    assert [r.status for r in rows] == ["ok", "ok", "ok"] and rows[2].point == deep
    assert _executions(log) == {"a": 3}  # the variant's own job, its shallow point, then its deep point once
