"""The machine and software a run measured on, captured with every run so figures can be compared honestly."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import psutil

NOT_INSTALLED = "not installed"

# Distribution names, read from package metadata so capturing them never imports torch.
RUNTIME_DISTRIBUTIONS = {
    "torch": "torch",
    "transformers": "transformers",
    "onnxruntime": "onnxruntime",
    "onnxruntime_genai": "onnxruntime-genai",
    "llama_cpp": "llama-cpp-python",
}
# GPU builds ship under other distribution names; the first one installed wins.
ALTERNATIVE_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime-gpu",),
    "onnxruntime_genai": ("onnxruntime-genai-cuda",),
}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else psutil.cpu_count() or 1


def thread_count(requested: int | None) -> int:
    """The thread policy, in one place: the count asked for, else every usable CPU.

    Every runtime, the quantizer and the scoring kernels get this one explicit
    count: left to themselves they disagree (llama-cpp-python takes half the cores).
    """
    return requested or usable_cpus()


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist`` (read from its metadata, never imported), else None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str]:
    """Each runtime's installed version, or 'not installed'."""
    versions = {}
    for module, dist in RUNTIME_DISTRIBUTIONS.items():
        found = (package_version(name) for name in (dist, *ALTERNATIVE_DISTRIBUTIONS.get(module, ())))
        versions[module] = next((v for v in found if v is not None), NOT_INSTALLED)
    return versions


def gpus() -> list[dict[str, Any]]:
    """Name, memory and driver of each NVIDIA GPU; empty without NVML."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no NVIDIA driver or no GPU
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            found.append(
                {
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_mb": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20),
                    "driver": driver,
                }
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def node_info():
    """This machine as a row records it (``results.NodeInfo``): host name, CPU, first GPU."""
    from harness.results import NodeInfo

    found = gpus()
    return NodeInfo(host=platform.node(), cpu=cpu_model(), gpu=found[0]["name"] if found else None)


def capture_environment(threads: int | None = None) -> dict[str, Any]:
    """CPU, cores, threads used, RAM, GPUs and driver, OS, Python and runtime versions.

    Scalar facts sit at the top level (the report prints them in its header);
    ``gpus`` and ``versions`` are nested.
    """
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(logical=True),
        "usable_cpus": usable_cpus(),
        "threads": threads,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    found = gpus()
    if found:
        env["gpu"] = found[0]["name"]
        env["gpu_driver"] = found[0]["driver"]
        env["gpus"] = found
    env["versions"] = runtime_versions()
    return env
