"""A real Ray cluster on this machine for the tests: a head and worker nodes, each a ``ray start --block`` process.

Each node is one ``ray start --block`` process and its descendants (GCS,
raylet, the raylet's workers, their measurement children), in a temporary
folder of its own. ``stop`` ends exactly those processes, by id, never with
``ray stop`` (which would end every Ray process on the machine). Ray puts each
worker in a process group of its own, so a node is followed by parent links.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLOT = "harness_slot"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
READY_LINE = "Ray runtime started"
# Ray 2.5x enables token authentication on a head where ~/.ray/auth_token exists (ray.init(address="local")
# writes one), and a node joining without it is refused: the test cluster and its drivers set the mode.
ENV = {"RAY_AUTH_MODE": "disabled"}


def _ray_command(python: str | None = None) -> list[str]:
    """The ``ray`` CLI of ``python`` (default: this one, where the test extra installed it), not whatever is on PATH.

    A node runs its tasks in the Python that started it.
    """
    return [python or sys.executable, "-m", "ray.scripts.scripts"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RayNode:
    """One ``ray start --block`` process and its descendants."""

    def __init__(self, args: list[str], temp_dir: Path, log: Path, python: str | None = None):
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*_ray_command(python), "start", "--block", "--temp-dir", str(temp_dir),
                 "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **ENV})
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY_LINE not in log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def raylet_pid(self) -> int:
        """The node's raylet: killing it loses the node, as a machine going down would."""
        for pid in self.pids():
            if _cmdline(pid).split(b"\0")[0].endswith(b"/raylet"):
                return pid
        raise RuntimeError("this node has no raylet")

    def measuring(self) -> list[int]:
        """The measurement children running on this node: spawned by a worker, or forked by its forkserver."""
        return [pid for pid in self.pids()
                if b"multiprocessing.spawn" in _cmdline(pid) or b"multiprocessing.forkserver" in _cmdline(_parent(pid))]

    def pids(self) -> list[int]:
        """``ray start --block`` and its live descendants."""
        return _descendants(self.process.pid)

    def stop(self) -> list[int]:
        """SIGTERM to ``ray start --block`` (it stops what it started), then SIGKILL to any of its processes left.

        Returns the processes it found, for a check that none is left.
        """
        started = {pid: _start_time(pid) for pid in self.pids()}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        for pid, start in started.items():
            if _start_time(pid) == start:  # the very process found before, not a later one with its id
                _kill(pid)
        self.process.wait()
        return list(started)


class RayCluster:
    """A head and worker nodes on 127.0.0.1, each with one ``harness_slot``."""

    def __init__(self, cpus_per_node: int = 1):
        self.root = Path(tempfile.mkdtemp(prefix="hray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.cpus = cpus_per_node
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[RayNode] = []
        self.add_node(head=True)

    def add_node(self, head: bool = False, slots: int = 1, python: str | None = None) -> RayNode:
        resources = json.dumps({SLOT: slots})
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false",
                 "--dashboard-port", str(_free_port())] if head else [
            "--address", self.address]
        index = len(self.nodes)
        temp_dir = self.root / f"n{index}"
        temp_dir.mkdir()
        node = RayNode([*where, "--num-cpus", str(self.cpus), "--resources", resources], temp_dir,
                       self.root / f"node{index}.log", python)
        self.nodes.append(node)
        return node

    def remove_node(self, node: RayNode) -> list[int]:
        """Stop ``node`` as its machine would leave the cluster; returns its processes."""
        self.nodes.remove(node)
        return node.stop()

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def stop(self) -> list[int]:
        """Every node stopped, workers first; returns their processes (``leftovers`` says which still live)."""
        stopped = [pid for node in reversed(self.nodes) for pid in node.stop()]
        shutil.rmtree(self.root, ignore_errors=True)
        return stopped

    def python_without_harness(self) -> str:
        """A Python that imports ray but not harness, as on a node where only Ray was installed.

        A venv whose one ``.pth`` line adds this environment's site-packages as
        a plain path: its packages import, but the ``.pth`` files there (an
        editable install's import hook) are not run.
        """
        import sysconfig

        venv = self.root / "no-harness"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        return str(python)

    def leftovers(self, pids: list[int]) -> list[int]:
        """Those of ``pids`` still alive (zombies aside)."""
        return [pid for pid in pids if _state(pid) not in (None, "Z")]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with its id, what names one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(root: int) -> list[int]:
    """``root`` and every live process below it, by parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return [pid for pid in found if _state(pid) not in (None, "Z")]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
