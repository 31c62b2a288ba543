"""``compare --ray`` on a real two-node Ray cluster on this machine, against a local run of the same budget.

The cluster (tests/ray_cluster.py) is a head and a worker node, each one CPU
and one ``harness_slot``, in a temporary folder; it is stopped at the end and
no process of it may be left. Every run is the real default model, three
llama.cpp variants at a small budget (about half a minute each here).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from ray_cluster import ENV, RayCluster, _free_port  # noqa: E402  (tests/ is on sys.path: rootdir conftest)

VARIANTS = ("llamacpp-f32", "llamacpp-q8_0", "llamacpp-q4_k_m")
BUDGET = ["--variants", ",".join(VARIANTS), "--max-tokens", "256", "--ctx", "128", "--repetitions", "1",
          "--max-repetitions", "1", "--speed-budget", "1", "--warmup", "1", "--gen-tokens", "4", "--prompt-tokens",
          "32", "--agreement-tokens", "4", "--threads", "1"]  # one thread: each test node is given one CPU
RUN_TIMEOUT_S = 600
# Accuracy keys that are timings, not figures a second run must reproduce.
TIMING_KEYS = {"wall_s"}


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, stopped at the end; none of their processes may outlive it."""
    started = RayCluster(cpus_per_node=1)
    try:
        started.add_node()
        yield started
    finally:
        pids = started.stop()
        time.sleep(1)
        assert started.leftovers(pids) == [], "Ray processes left behind"


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, prepared) -> dict:
    """The same comparison with the local runner: the rows the Ray runs must reproduce."""
    out = tmp_path_factory.mktemp("local") / "run"
    result = _compare(out, out.parent / "store.sqlite")
    assert result.returncode == 0, result.stderr
    return _rows(out)


def _compare(out: Path, store: Path, *extra: str, wait: bool = True, budget: list[str] = BUDGET,
             env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "harness", "compare", *budget, "--out", str(out), "--store", str(store), *extra]
    environment = {**os.environ, **ENV, **(env or {})}
    if not wait:
        return subprocess.Popen(command, cwd=out.parent, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=out.parent, env=environment, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def _rows(out: Path) -> dict:
    return {row["variant"]: row for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def _assert_close(local, remote, where: str) -> None:
    """Every number equal to 1e-9 relative, every other value equal, recursively."""
    if isinstance(local, dict):
        assert local.keys() == remote.keys(), where
        for key in local:
            if key not in TIMING_KEYS:
                _assert_close(local[key], remote[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert len(local) == len(remote), where
        for i, (a, b) in enumerate(zip(local, remote)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(local, float):
        assert math.isclose(local, remote, rel_tol=1e-9) or (math.isnan(local) and math.isnan(remote)), \
            f"{where}: {local} != {remote}"
    else:
        assert local == remote, f"{where}: {local!r} != {remote!r}"


def _overlaps(rows) -> list[tuple[str, str]]:
    """Pairs of rows measured on the same Ray node at overlapping times."""
    by_node = defaultdict(list)
    for row in rows:
        by_node[row["node"]["ray_node"]].append((row["started_unix"], row["ended_unix"], row["variant"]))
    found = []
    for spans in by_node.values():
        spans.sort()
        found += [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    return found


def _wait_for(condition, timeout_s: float, what: str, run: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` or as soon as ``run`` ended."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if run is not None and run.poll() is not None:
            raise AssertionError(f"the run ended (status {run.returncode}) before {what}:\n{run.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_ray_rows_equal_a_local_runs_accuracy_with_one_measurement_per_node_at_a_time(cluster, local_rows,
                                                                                    tmp_path):
    out, store = tmp_path / "run", tmp_path / "store.sqlite"
    result = _compare(out, store, "--ray", cluster.address)
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert sorted(rows) == sorted(VARIANTS)
    for name, row in rows.items():
        assert row["status"] == "ok", row["error"]
        assert row["node"]["host"] and row["node"]["cpu"] and row["node"]["ray_node"], row["node"]
        _assert_close(local_rows[name]["accuracy"], row["accuracy"], name)
    assert "ray_node" not in local_rows[VARIANTS[0]]["node"]  # a local run names no Ray node
    assert len({row["node"]["ray_node"] for row in rows.values()}) == 2, "both nodes should have measured"
    assert _overlaps(rows.values()) == []
    assert (out / "logs" / "llamacpp-q8_0.log").is_file()  # each task's child output came back to the head
    history = subprocess.run([sys.executable, "-m", "harness", "history", "--store", str(store)],
                             capture_output=True, text=True, timeout=60)
    assert (out / "run_id").read_text().strip() in history.stdout  # the run is in the store
    print(result.stdout)
    for name in VARIANTS:
        row = rows[name]
        print(f"{name:16} node {row['node']['ray_node'][:12]} {row['started_unix']:.1f}-{row['ended_unix']:.1f}")


def test_resume_after_the_head_is_killed_measures_only_the_missing_rows(cluster, tmp_path):
    out, store = tmp_path / "run", tmp_path / "store.sqlite"
    head = _compare(out, store, "--ray", cluster.address, wait=False)
    results = out / "results.jsonl"
    try:
        _wait_for(lambda: results.is_file() and results.read_text().count("\n") >= 1, RUN_TIMEOUT_S,
                  "the first row", head)
    finally:
        head.send_signal(signal.SIGKILL)
        head.communicate()
    kept = results.read_text()
    assert 1 <= kept.count("\n") < len(VARIANTS)
    # The killed driver's tasks end with it: their workers go, and each measurement child with its worker.
    _wait_for(lambda: not any(node.measuring() for node in cluster.nodes), 60, "the killed run's tasks to end")
    killed_at = time.time()

    result = _compare(out, store, "--ray", cluster.address, "--resume")
    assert result.returncode == 0, result.stderr
    text = results.read_text()
    assert text.startswith(kept)  # the finished rows stay as they were
    new = [json.loads(line) for line in text[len(kept):].splitlines()]
    done = {json.loads(line)["variant"] for line in kept.splitlines()}
    assert sorted(row["variant"] for row in new) == sorted(set(VARIANTS) - done)  # the missing ones, once each
    assert all(row["started_unix"] >= killed_at - 1 for row in new)
    print(f"head killed after {sorted(done)}; --resume measured {[row['variant'] for row in new]}")


def _refused(address: str, out: Path, *extra: str, before_scoring: bool = False) -> str:
    """The one error line of a run that must stop before measuring; asserts nothing reached the store.

    ``before_scoring``: the run must stop before it tokenizes the text (its "scoring N tokens" line).
    """
    store = out.parent / f"{out.name}.sqlite"
    result = _compare(out, store, "--ray", address, *extra)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --ray {address}: "), result.stderr
    assert not store.exists() and not (out / "results.jsonl").exists()
    if before_scoring:
        assert ": scoring " not in result.stderr, result.stderr
    return last


def test_bad_ray_input_stops_with_one_line_and_exit_2_before_the_store(cluster, tmp_path):
    nowhere = f"127.0.0.1:{_free_port()}"
    assert "no Ray cluster answers at" in _refused(nowhere, tmp_path / "nowhere", before_scoring=True)
    assert "has harness_slot and GPU" in _refused(cluster.address, tmp_path / "cuda", "--device", "cuda")
    bare = cluster.add_node(python=cluster.python_without_harness())  # Ray installed, the harness not
    try:
        line = _refused(cluster.address, tmp_path / "bare")
    finally:
        cluster.remove_node(bare)
    assert "cannot run the harness" in line and "install it there" in line, line
    print(line)


def test_ray_local_runs_on_a_private_cluster_that_ends_with_the_run(tmp_path):
    before = _ray_daemons()
    out = tmp_path / "run"
    ray_tmp = tempfile.mkdtemp(prefix="hrl-", dir="/tmp")  # its session folder, not /tmp/ray (short: socket paths)
    try:
        result = _compare(out, tmp_path / "store.sqlite", "--ray", "local", env={"RAY_TMPDIR": ray_tmp},
                          budget=[*BUDGET[2:], "--variants", "llamacpp-q8_0", "--reference", "none"])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    [row] = _rows(out).values()
    assert row["status"] == "ok" and row["node"]["ray_node"]
    assert _ray_daemons() - before == set()  # its GCS and raylet stopped with it


def _ray_daemons() -> set[int]:
    """Ray's GCS servers and raylets running on this machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            name = (entry / "cmdline").read_bytes().split(b"\0")[0] if entry.name.isdigit() else b""
        except OSError:
            continue
        if name.endswith((b"/gcs_server", b"/raylet")):
            found.add(int(entry.name))
    return found


def test_each_variant_and_operating_point_is_a_task_of_its_own(cluster, tmp_path):
    """--sweep on the cluster: every (variant, point) is a Ray task, on either node, one at a time per node."""
    out, store = tmp_path / "run", tmp_path / "store.sqlite"
    budget = [*BUDGET[2:], "--variants", "llamacpp-q8_0", "--sweep", "batch=1,2"]
    result = _compare(out, store, "--ray", cluster.address, budget=budget)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    points = [row for row in rows if row.get("point")]
    assert sorted((r["variant"], r["point"]["batch"]) for r in points) == [
        ("llamacpp-f32", 1), ("llamacpp-f32", 2), ("llamacpp-q8_0", 1), ("llamacpp-q8_0", 2)]
    for row in points:
        assert row["status"] == "ok", row["error"]
        assert row["node"]["ray_node"] and row["efficiency"]["decode_tok_s"] > 0
    assert len({row["node"]["ray_node"] for row in rows}) == 2, "both nodes should have measured"
    assert _overlaps(rows) == []
    report = json.loads((out / "report.json").read_text())
    assert len(report["points"]) == 4 and len(report["results"]) == 2


def test_a_lost_worker_node_costs_its_task_one_retry_and_the_run_completes(cluster, tmp_path):
    """Runs last: it kills the cluster's worker node (its raylet, as a machine going down would)."""
    worker = cluster.nodes[1]
    lost_id = _node_id(worker)
    out, store = tmp_path / "run", tmp_path / "store.sqlite"
    head = _compare(out, store, "--ray", cluster.address, wait=False)
    try:
        _wait_for(lambda: worker.measuring(), RUN_TIMEOUT_S, "a measurement on the worker node", head)
        time.sleep(1)  # well inside it
        lost = [pid for pid in worker.pids() if pid != worker.process.pid]  # ray start --block itself stays
        os.kill(worker.raylet_pid(), signal.SIGKILL)
        stdout, stderr = head.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if head.poll() is None:
            head.kill()
    assert head.returncode in (0, 1), stderr
    rows = _rows(out)
    assert sorted(rows) == sorted(VARIANTS)  # no row dropped
    retried = [line for line in stderr.splitlines() if "submitted once more" in line]
    assert len(retried) == 1 and ("NodeDiedError" in retried[0] or "WorkerCrashedError" in retried[0]), stderr
    name = retried[0].split(":")[0]
    row = rows[name]
    assert row["status"] == "ok" or row["error"].startswith("lost on Ray"), row
    if row["status"] == "ok":
        assert row["node"]["ray_node"] != lost_id  # measured again, elsewhere
    assert _overlaps([r for r in rows.values() if r["status"] == "ok"]) == []
    # The lost node's workers and their measurement children end with it.
    _wait_for(lambda: cluster.leftovers(lost) == [], 60, "the lost node's processes to end")
    print(retried[0])
    where = row["node"]["ray_node"][:12] if row.get("node") else "no node"
    print(f"retried {name}: {row['status']} on {where}; lost node {lost_id[:12]}")


def _node_id(node) -> str:
    """The Ray node id of a test node, from its raylet's command line (``--node_id=...``)."""
    args = Path(f"/proc/{node.raylet_pid()}/cmdline").read_bytes().split(b"\0")
    return next(a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id="))


def test_a_record_survives_its_trip_between_nodes(tmp_path):
    """The reference's record, read on its node and written on another, is what a local child would open."""
    from harness.backends.base import LogitBlock
    from harness.measure.reference_record import RECORD_FILES, LogitRecorder, RecordedReference
    from harness.run.local import VariantJob
    from harness.run.on_ray import _read_record, _write_record
    from harness.text.protocols import Window

    rng = np.random.default_rng(0)
    windows = [Window(np.arange(6), 2, np.arange(3, 6)), Window(np.arange(5), 1, np.arange(2, 5))]
    logits = [rng.standard_normal((w.n_scored, 7)).astype(np.float32) for w in windows]
    made, moved = tmp_path / "made", tmp_path / "moved"
    made.mkdir(), moved.mkdir()
    with LogitRecorder(made, 1 << 20) as recorder:
        for block in logits:
            list(recorder.tee([LogitBlock(0, block, np.zeros(len(block), np.int64))]))
        recorder.finish([[1, 2], [3]])
    def job(folder):  # what compare hands the runner: the record's folder and its files, in the order written
        return VariantJob("v", "fake", "fp32", print, record_dir=str(folder), writes_record=True,
                          record_files=RECORD_FILES)

    _write_record(_read_record(job(made)), moved, RECORD_FILES)
    reread = RecordedReference.open_if_complete(moved, windows)
    assert reread is not None and reread.continuations == [[1, 2], [3]]
    for index, expected in enumerate(logits):
        got = np.concatenate([block.logits for block in reread.window_blocks(index, 2)])
        np.testing.assert_array_equal(got, expected)
    assert _read_record(job(tmp_path)) is None  # no finished record: the variants run the reference live

