"""The Ray cluster a ``compare --ray`` run measures on: connecting to it, and checking it before anything runs.

Fair timing is expressed in Ray resources: a measurement takes one
``harness_slot`` (a custom resource a node is started with, 1 for one
measurement at a time) and, with ``--device cuda``, one GPU. A node without
the slot never measures; the head may coordinate only.

Every mistake a user can make here stops the run with one line, exit status 2,
before a row is written: an address where no cluster answers, a cluster
without the resources the run needs, a node that cannot import the harness,
lacks a variant's files or has other runtime versions than the head.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from harness.errors import UserError, one_line
from harness.machine.native_output import native_stderr_to

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task names in its errors
SLOT = "harness_slot"  # the custom resource one measurement takes: one per node measures one at a time
START_HEAD = f"ray start --head --resources '{{\"{SLOT}\": 1}}'"
DEFAULT_PORT = 6379  # ray start --head's GCS port
DEFAULT_CLIENT_PORT = 10001  # Ray Client's port (ray://host)
CONNECT_TIMEOUT_S = 5.0
# How long a node may take to answer the check (it may have to start a worker process first).
NODE_CHECK_TIMEOUT_S = 120.0
# The modules each runtime's numbers depend on: a node must have the head's versions of them.
RUNTIME_MODULES = {"llamacpp": ("llama_cpp",), "ort": ("onnxruntime", "onnxruntime_genai"),
                   "torch": ("torch", "transformers")}


@contextmanager
def connected(address: str, log: IO[str] | None = None) -> Iterator[None]:
    """Connected to the cluster at ``address`` until the block ends (``local``: a private cluster, stopped after).

    ``address``: ``auto`` ($RAY_ADDRESS, else the cluster running on this
    machine), ``local``, ``host:port`` or ``ray://host:port`` (Ray Client).
    ``log``: where Ray's native warnings while it connects go (its retries print one a second).
    """
    try:
        import ray
    except ImportError:
        raise UserError("Ray is not installed; pip install 'harness[ray]' (or pip install ray)",
                        setting="ray", value=address) from None
    options: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address == "local":
        options.update(address="local", resources={SLOT: 1}, include_dashboard=False)
    else:
        check_answers(address)
        options["address"] = address
    try:
        with native_stderr_to(log) if log is not None else nullcontext():
            ray.init(**options)
    except ConnectionError as exc:
        raise UserError(f"no Ray cluster found ({one_line(exc)}); start one with {START_HEAD}, or pass local",
                        setting="ray", value=address) from None
    try:
        yield
    finally:
        ray.shutdown()


def check_answers(address: str) -> None:
    """Fail fast where nothing listens: ray.init would retry for minutes, printing warnings.

    A socket connect only (Ray is not imported), so ``compare`` calls it before it builds or tokenizes anything.
    """
    given = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if not given or given in ("auto", "local"):
        return  # ray.init looks for a cluster on this machine and says at once when there is none
    client = given.startswith("ray://")
    host, _, port = given.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        host, port = given.removeprefix("ray://"), str(DEFAULT_CLIENT_PORT if client else DEFAULT_PORT)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        shown = given if address != "auto" else f"{given} ($RAY_ADDRESS)"
        raise UserError(f"no Ray cluster answers at {shown} ({exc.strerror or exc}); start one there with "
                        f"{START_HEAD} --port {port}, or pass local", setting="ray", value=address) from None


def check_cluster(address: str, device: str, variants: Sequence, runtimes: set[str]) -> None:
    """Check every node that may measure; a UserError names the first problem and what to do.

    ``variants``: every ``harness.manifest.Variant`` a task will load (the
    references included), which each such node must hold at the same path,
    with the head's manifest. ``runtimes``: the runtimes measured.
    """
    import ray

    need = {SLOT: 1.0, **({"GPU": 1.0} if device == "cuda" else {})}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    able = [n for n in nodes if all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items())]
    if not able:
        have = ", ".join(sorted({k for n in nodes for k in n.get("Resources", {}) if not k.startswith("node:")}))
        hint = (f"start GPU nodes with ray start --num-gpus N --resources '{{\"{SLOT}\": 1}}', or pass --device cpu"
                if device == "cuda" else f"start each node that may measure with --resources '{{\"{SLOT}\": 1}}'")
        raise UserError(f"no node of this cluster has {' and '.join(need)} (it has {have or 'nothing'}); {hint}",
                        setting="ray", value=address)
    files = {v.path: v.to_dict() for v in variants}
    modules = sorted({m for runtime in runtimes for m in RUNTIME_MODULES.get(runtime, ())})
    expected = _node_facts(files, modules)
    checks = [_remote_check(n["NodeID"]).remote(files, modules) for n in able]
    answered = 0
    for node, ref in zip(able, checks):
        facts = _answer(address, node, ref)
        if facts is not None:
            _judge(address, _node_name(node), facts, expected)
            answered += 1
    if not answered:
        raise UserError("every node that could measure left the cluster while it was checked; start them again",
                        setting="ray", value=address)


def _remote_check(node_id: str):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(_node_facts).options(
        num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))


def _answer(address: str, node: dict, ref) -> dict | None:
    """The node's facts; None when it left the cluster meanwhile (it gets no task)."""
    import ray

    try:
        return ray.get(ref, timeout=NODE_CHECK_TIMEOUT_S)
    except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
        return None
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"node {_node_name(node)} did not answer within {NODE_CHECK_TIMEOUT_S:g} s; check that it "
                        "is up (ray status) and has a free worker", setting="ray", value=address) from None
    except ray.exceptions.RayError as exc:
        why = ray_error_line(exc).split(". ")[0]  # Ray goes on with the worker's whole sys.path
        raise UserError(f"node {_node_name(node)} cannot run the harness ({why}); install it there "
                        "(pip install 'harness[ray]') in the Python that runs ray start", setting="ray",
                        value=address) from None


def _judge(address: str, node: str, facts: dict, expected: dict) -> None:
    """A UserError naming ``node`` and what to do when its facts differ from the head's."""
    what = None
    if facts["python"] != expected["python"] or facts["harness"] != expected["harness"]:
        what = (f"runs Python {facts['python']} with harness {facts['harness']}, the head Python "
                f"{expected['python']} with harness {expected['harness']}; install the same on every node")
    elif facts["missing"]:
        what = (f"lacks {facts['missing'][0]} or holds another build of it; put --cache-dir on storage every node "
                "mounts at the same path, or run the same python -m harness prepare there")
    elif facts["versions"] != expected["versions"]:
        differ = [f"{m} {facts['versions'][m]} (head {expected['versions'][m]})" for m in expected["versions"]
                  if facts["versions"][m] != expected["versions"][m]]
        what = f"has {', '.join(differ)}; install the head's versions there"
    if what is not None:
        raise UserError(f"node {node} {what}", setting="ray", value=address)


def ray_error_line(exc: BaseException) -> str:
    """A Ray error as one line: what the task raised when it raised (a RayTaskError wraps it), colour codes out."""
    cause = getattr(exc, "cause", None) or exc
    return _COLOUR.sub("", one_line(cause))


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:12]})"


def _node_facts(files: dict[str, dict], modules: Sequence[str]) -> dict:
    """What this node has of what a measurement needs (run on the node, as a Ray task, and on the head)."""
    from harness.machine.environment import package_version, runtime_versions
    from harness.manifest import MANIFEST_NAME, Variant

    versions = runtime_versions()
    missing = []
    for path, manifest in files.items():
        folder = Path(path) if (Path(path) / MANIFEST_NAME).is_file() else Path(path).parent
        try:
            same = Path(path).exists() and Variant.load(folder) == Variant.from_dict(manifest)
        except (OSError, ValueError, TypeError):
            same = False
        if not same:
            missing.append(path)
    return {"python": "%d.%d" % sys.version_info[:2], "harness": package_version("harness"),
            "missing": missing, "versions": {m: versions.get(m) for m in modules}}
