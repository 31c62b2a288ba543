"""NVIDIA GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``): which GPU a device names, and its counters.

Every counter is read so that one the GPU does not have (an older GPU has no
energy counter, a vGPU or a MIG slice no utilisation, a Windows or
containerised driver no per-process memory) reads as None: the figure is then
absent from the results, never zero, and the others are still read.

``cuda:N`` counts the GPUs CUDA sees, and NVML counts all of them:
``CUDA_VISIBLE_DEVICES`` (which Ray and schedulers set) maps one to the other.
"""

from __future__ import annotations

import os
import re
from typing import Any

from harness.errors import UserError

_DEVICE = re.compile(r"^cuda(?::(\d+))?$")


def cuda_index(device: str) -> int | None:
    """The CUDA ordinal of ``device`` ('cuda' -> 0, 'cuda:1' -> 1); None for 'cpu' or anything else."""
    match = _DEVICE.match(device)
    if match is None:
        return None
    return int(match.group(1) or 0)


def load_nvml(nvml: Any = None) -> tuple[Any, str | None]:
    """``(module, None)`` with NVML initialised, or ``(None, why not)``; pass a fake ``nvml`` to test."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            return None, f"nvidia-ml-py is not installed ({exc})"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return None, f"NVML: {exc}" if str(exc) else f"NVML: {type(exc).__name__}"
    return nvml, None


def _visible(nvml) -> list[Any]:
    """NVML handles of the GPUs CUDA sees, in CUDA's order (``CUDA_VISIBLE_DEVICES``: indices or UUIDs)."""
    count = nvml.nvmlDeviceGetCount()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    handles = []
    for entry in (e.strip() for e in listed.split(",")):
        if entry.isdigit() and int(entry) < count:
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
        elif entry.startswith(("GPU-", "MIG-")):
            handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
        else:
            break  # CUDA stops at the first entry it cannot use ("-1", "", a bad index)
    return handles


def check_cuda_device(device: str, nvml: Any = None) -> None:
    """Raise UserError (one line, exit status 2) unless ``device`` names a GPU this machine has; 'cpu' passes."""
    index = cuda_index(device)
    if index is None:
        return
    loaded, why = load_nvml(nvml)
    if loaded is None:
        raise UserError(f"no NVIDIA GPU found ({why}); run on a machine with one, or pass --device cpu",
                        setting="device", value=device)
    try:
        count = len(_visible(loaded))
    finally:
        loaded.nvmlShutdown()
    if count == 0:
        raise UserError("no NVIDIA GPU is visible (CUDA_VISIBLE_DEVICES hides them all); "
                        "unset it or pass --device cpu", setting="device", value=device)
    if index >= count:
        raise UserError(f"this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; pass one of them",
                        setting="device", value=device)


class Gpu:
    """One GPU's NVML counters, each read as a number or None. A context manager: NVML is shut down on exit.

    ``Gpu.open(index)`` returns None where NVML or the GPU is missing.
    """

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, index: int, nvml: Any = None) -> "Gpu | None":
        loaded, _ = load_nvml(nvml)
        if loaded is None:
            return None
        try:
            handles = _visible(loaded)
            if index < len(handles):
                return cls(loaded, handles[index])
        except Exception:  # the driver answered init but not this: no GPU to read
            pass
        loaded.nvmlShutdown()
        return None

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None

    def __enter__(self) -> "Gpu":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read(self, name: str, *args: Any) -> Any:
        """``nvml.<name>(handle, *args)``, or None when NVML says the GPU cannot tell (any NVMLError)."""
        try:
            return getattr(self._nvml, name)(self._handle, *args)
        except self._nvml.NVMLError:
            return None

    def util_pct(self) -> float | None:
        """Percent of the last sample period in which a kernel ran on the GPU."""
        rates = self._read("nvmlDeviceGetUtilizationRates")
        return None if rates is None else float(rates.gpu)

    def used_bytes(self) -> int | None:
        """Memory in use on the whole device, every process's."""
        info = self._read("nvmlDeviceGetMemoryInfo")
        return None if info is None else int(info.used)

    def process_bytes(self, pid: int) -> tuple[bool, int | None]:
        """(listed, bytes): whether ``pid`` holds a CUDA context here, and its memory when the driver reports it."""
        processes = self._read("nvmlDeviceGetComputeRunningProcesses")
        for process in processes or ():
            if process.pid == pid:
                used = getattr(process, "usedGpuMemory", None)
                return True, (int(used) if used is not None else None)
        return False, None

    def energy_mj(self) -> int | None:
        """Energy the GPU used since the driver loaded, in millijoules (Volta and newer)."""
        energy = self._read("nvmlDeviceGetTotalEnergyConsumption")
        return None if energy is None else int(energy)
