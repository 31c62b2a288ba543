"""Resource trackers: a process's RSS and CPU time, and an NVIDIA GPU's memory, utilisation and energy.

Both are context managers that sample on a background thread and always stop
it in ``finally``. The GPU tracker reads NVML through ``harness.machine.nvml`` and is
inert where NVML is missing (no NVIDIA driver, no GPU): its metrics are then an
empty dict, so GPU keys are absent from a CPU run's results rather than zero;
a counter the GPU lacks leaves out that key alone.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from harness.machine.nvml import Gpu

MB = 1024 * 1024
# 100 Hz, the rate the method asks for, kept on average by a fixed schedule. Not faster: every wake-up
# takes a core from a runtime using all of them (a psutil RSS read costs ~10 us, the preempted thread more).
DEFAULT_INTERVAL_S = 0.01


@dataclass(frozen=True)
class ResourceUsage:
    """What a ``ResourceMonitor`` saw over its ``with`` block."""

    duration_s: float
    baseline_rss_mb: float  # RSS when the block began
    sampled_peak_rss_mb: float  # highest RSS among the samples
    os_peak_rss_mb: float | None  # the kernel's high-water mark for the process since it started; None if unreadable
    cpu_util_pct: float  # process CPU time / wall time; 100 = one core busy, 200 = two
    samples: int

    @property
    def peak_rss_mb(self) -> float:
        """Sampled peak, raised to the OS's own max RSS, which also catches spikes between samples."""
        return max(self.sampled_peak_rss_mb, self.os_peak_rss_mb or 0.0)

    @property
    def sample_hz(self) -> float:
        return self.samples / self.duration_s if self.duration_s > 0 else float("nan")


def os_peak_rss_mb(pid: int | None = None) -> float | None:
    """The kernel's max RSS for ``pid`` (default: this process), from VmHWM in /proc.

    Not ``ru_maxrss``: Linux carries it over from the parent through fork and
    exec, so a spawned child would report its parent's peak when that is larger.
    Outside Linux (no /proc), ``ru_maxrss`` of this process is the best there is.
    """
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid == os.getpid():
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max_rss / MB if sys.platform == "darwin" else max_rss / 1024  # bytes on macOS, KiB on Linux
    return None


class _Sampler:
    """Calls ``sample()`` every ``interval_s`` on average, on a daemon thread until stopped; ``Event.wait`` sleeps without the GIL."""

    def __init__(self, sample: Callable[[], None], interval_s: float, name: str):
        self._sample = sample
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            deadline = time.monotonic() + self._interval_s
            while not self._stop.wait(max(0.0, deadline - time.monotonic())):
                self._sample()
                deadline += self._interval_s  # a fixed schedule: the time a sample takes does not lower the rate
        except BaseException as exc:  # surfaced by the owner after join, never lost in a thread
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class ResourceMonitor:
    """Samples a process's RSS at ``1 / interval_s`` Hz and its CPU time over a ``with`` block.

    ``usage`` is set when the block ends, also when it raises.
    """

    def __init__(self, pid: int | None = None, interval_s: float = DEFAULT_INTERVAL_S, clock=time.perf_counter):
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self._clock = clock
        self._process = psutil.Process(self.pid)
        self._peak_rss = 0
        self._samples = 0
        self.usage: ResourceUsage | None = None

    def _sample(self) -> None:
        rss = self._process.memory_info().rss
        self._samples += 1
        if rss > self._peak_rss:
            self._peak_rss = rss

    def __enter__(self) -> "ResourceMonitor":
        self._sample()
        self._baseline_rss = self._peak_rss
        self._cpu0 = self._process.cpu_times()
        self._t0 = self._clock()
        self._sampler = _Sampler(self._sample, self.interval_s, f"rss-sampler-{self.pid}")
        self._sampler.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._sampler.stop()
        finally:
            t1 = self._clock()
            cpu1 = self._process.cpu_times()
            self._sample()
            duration_s = t1 - self._t0
            cpu_s = (cpu1.user - self._cpu0.user) + (cpu1.system - self._cpu0.system)
            self.usage = ResourceUsage(
                duration_s=duration_s,
                baseline_rss_mb=self._baseline_rss / MB,
                sampled_peak_rss_mb=self._peak_rss / MB,
                os_peak_rss_mb=os_peak_rss_mb(self.pid),
                cpu_util_pct=100.0 * cpu_s / duration_s if duration_s > 0 else float("nan"),
                samples=self._samples,
            )
        if self._sampler.error is not None:
            raise RuntimeError(f"RSS sampler failed: {self._sampler.error!r}") from self._sampler.error


def nvml_available() -> bool:
    """True when nvidia-ml-py imports, the NVIDIA driver answers and CUDA can see at least one GPU."""
    gpu = Gpu.open(0)
    if gpu is None:
        return False
    gpu.close()
    return True


class GpuMonitor:
    """Peak GPU memory, mean GPU utilisation and energy on one NVIDIA GPU over a ``with`` block.

    ``metrics`` holds ``gpu_peak_mem_mb``, ``gpu_util_pct`` and ``energy_j``,
    each only where the GPU reports it, and is empty where NVML is missing.
    Memory is the process's own (``pid``, default this one) where NVML lists
    it with its memory; where it lists it without (a driver that cannot tell)
    or never lists it (in a container NVML shows host PIDs) it is the device's
    used memory, every process's. A process that NVML stops listing mid-block
    (it ended, or released its context) keeps the peak seen so far. Energy is
    the device's total-energy counter at the end minus at the start; a counter
    that did not advance (a block shorter than its update period) gives none.
    ``device_index`` is the CUDA ordinal (``cuda:N``); ``nvml``: a fake for tests.
    """

    def __init__(self, device_index: int = 0, pid: int | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 nvml: Any = None):
        self.device_index = device_index
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self.metrics: dict[str, float] = {}
        self._nvml = nvml
        self._gpu: Gpu | None = None

    def _sample(self) -> None:
        gpu = self._gpu
        util = gpu.util_pct()
        if util is not None:
            self._utils.append(util)
        listed, used = gpu.process_bytes(self.pid)
        if self._per_process and not listed:
            return  # ended or released its context: its peak is what was seen
        if used is None:
            used = gpu.used_bytes()
        if used is not None:
            self._peak_mem = max(self._peak_mem, used)

    def __enter__(self) -> "GpuMonitor":
        self._gpu = Gpu.open(self.device_index, self._nvml)
        if self._gpu is None:
            return self  # no NVIDIA driver or no such GPU: stay inert, metrics stay empty
        try:
            listed, used = self._gpu.process_bytes(self.pid)
            self._per_process = listed and used is not None
            self._utils: list[float] = []
            self._peak_mem = 0
            self._energy0 = self._gpu.energy_mj()
            self._sample()
            self._sampler = _Sampler(self._sample, self.interval_s, f"nvml-sampler-{self.device_index}")
            self._sampler.start()
        except BaseException:
            self._gpu.close()
            self._gpu = None
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._gpu is None:
            return
        try:
            self._sampler.stop()
            self._sample()
            energy1 = self._gpu.energy_mj()
        finally:
            self._gpu.close()
            self._gpu = None
        metrics: dict[str, float] = {}
        if self._utils:
            metrics["gpu_util_pct"] = sum(self._utils) / len(self._utils)
        if self._peak_mem:
            metrics["gpu_peak_mem_mb"] = self._peak_mem / MB
        if self._energy0 is not None and energy1 is not None and energy1 > self._energy0:
            metrics["energy_j"] = (energy1 - self._energy0) / 1000.0
        self.metrics = metrics
        if self._sampler.error is not None:
            raise RuntimeError(f"NVML sampler failed: {self._sampler.error!r}") from self._sampler.error
