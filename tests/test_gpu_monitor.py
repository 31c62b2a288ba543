"""GPU memory, utilisation and energy from NVML (harness.machine.nvml, harness.machine.monitor.GpuMonitor), read from a fake NVML.

The fake holds what a driver would report and counts the samples taken, so a
test can change the GPU's state mid-block and know the sampler saw it. The
real NVML of this machine is used in one test only: without a GPU it must
give no keys at all.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from harness.errors import UserError
from harness.machine.monitor import GpuMonitor, nvml_available
from harness.machine.nvml import Gpu, check_cuda_device, cuda_index

MB = 1024 * 1024


class FakeNvml:
    """The part of ``pynvml`` the harness calls, for GPUs whose state a test sets.

    ``missing``: names of calls the GPU does not support (they raise NVMLError).
    ``processes``: (pid, bytes or None) pairs NVML lists; ``energy_mj`` is read
    from ``energy_readings`` in turn (the last one repeats).
    """

    class NVMLError(Exception):
        pass

    def __init__(self, count=1, processes=(), used_bytes=1000 * MB, util=50, energy_readings=(1000,),
                 missing=(), init_error=None):
        self.count = count
        self.processes = list(processes)
        self.used_bytes = used_bytes
        self.util = util
        self.energy_readings = list(energy_readings)
        self.missing = set(missing)
        self.init_error = init_error
        self.samples = 0
        self.sampled = threading.Condition()
        self.handles_opened: list = []
        self.open_sessions = 0

    def _check(self, name):
        if name in self.missing:
            raise self.NVMLError(f"{name}: Not Supported")

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)
        self.open_sessions += 1

    def nvmlShutdown(self):
        self.open_sessions -= 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        self.handles_opened.append(index)
        return ("gpu", index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.handles_opened.append(uuid)
        return ("gpu", uuid)

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._check("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.util, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._check("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(used=self.used_bytes, total=80_000 * MB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._check("nvmlDeviceGetComputeRunningProcesses")
        listed = [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes]
        with self.sampled:
            self.samples += 1
            self.sampled.notify_all()
        return listed

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self._check("nvmlDeviceGetTotalEnergyConsumption")
        return self.energy_readings.pop(0) if len(self.energy_readings) > 1 else self.energy_readings[0]

    def wait_samples(self, n: int) -> None:
        """Block until the sampler has read the process list ``n`` more times."""
        with self.sampled:
            target = self.samples + n
            assert self.sampled.wait_for(lambda: self.samples >= target, timeout=10)


PID = 4242  # the process the monitors watch; never this test's own pid


def _monitor(fake, **kwargs):
    return GpuMonitor(0, pid=PID, interval_s=0.001, nvml=fake, **kwargs)


def test_peak_memory_is_the_process_own_when_nvml_lists_it_with_its_memory():
    fake = FakeNvml(processes=[(PID, 300 * MB), (1, 5000 * MB)], used_bytes=9000 * MB)
    with _monitor(fake) as gpu:
        fake.processes = [(PID, 500 * MB), (1, 5000 * MB)]
        fake.wait_samples(2)
        fake.processes = [(PID, 350 * MB), (1, 5000 * MB)]
        fake.wait_samples(2)
    assert gpu.metrics["gpu_peak_mem_mb"] == pytest.approx(500.0)
    assert gpu.metrics["gpu_util_pct"] == pytest.approx(50.0)
    assert fake.open_sessions == 0  # NVML shut down again


def test_a_device_without_per_process_memory_reports_the_device_peak():
    fake = FakeNvml(processes=[(PID, None)], used_bytes=2000 * MB)
    with _monitor(fake) as gpu:
        fake.used_bytes = 2600 * MB
        fake.wait_samples(2)
        fake.used_bytes = 2100 * MB
        fake.wait_samples(2)
    assert gpu.metrics["gpu_peak_mem_mb"] == pytest.approx(2600.0)


def test_a_process_nvml_never_lists_falls_back_to_the_device_used_memory():
    fake = FakeNvml(processes=[(1, 100 * MB)], used_bytes=1200 * MB)  # a container: NVML shows host pids
    with _monitor(fake) as gpu:
        fake.wait_samples(2)
    assert gpu.metrics["gpu_peak_mem_mb"] == pytest.approx(1200.0)


def test_a_process_that_ends_mid_run_keeps_its_peak_and_never_takes_the_device_memory():
    fake = FakeNvml(processes=[(PID, 400 * MB)], used_bytes=900 * MB)
    with _monitor(fake) as gpu:
        fake.wait_samples(2)
        fake.processes = []  # it ended; another job fills the device
        fake.used_bytes = 30_000 * MB
        fake.wait_samples(3)
    assert gpu.metrics["gpu_peak_mem_mb"] == pytest.approx(400.0)


def test_energy_is_the_counter_difference_in_joules():
    fake = FakeNvml(processes=[(PID, 100 * MB)], energy_readings=[10_000, 15_250])
    with _monitor(fake) as gpu:
        pass
    assert gpu.metrics["energy_j"] == pytest.approx(5.25)


@pytest.mark.parametrize("readings", [[10_000, 10_000], [10_000, 9_000]])
def test_an_energy_counter_that_did_not_advance_gives_no_energy_not_zero(readings):
    fake = FakeNvml(processes=[(PID, 100 * MB)], energy_readings=readings)
    with _monitor(fake) as gpu:
        pass
    assert "energy_j" not in gpu.metrics and "gpu_peak_mem_mb" in gpu.metrics


def test_missing_counters_leave_out_their_keys_only():
    fake = FakeNvml(processes=[(PID, 100 * MB)], missing={"nvmlDeviceGetTotalEnergyConsumption",
                                                          "nvmlDeviceGetUtilizationRates"})
    with _monitor(fake) as gpu:
        fake.wait_samples(1)
    assert set(gpu.metrics) == {"gpu_peak_mem_mb"}


def test_no_process_list_and_no_memory_info_gives_no_memory_key():
    fake = FakeNvml(missing={"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetMemoryInfo"},
                    energy_readings=[1, 2001])
    with _monitor(fake) as gpu:
        time.sleep(0.01)
    assert set(gpu.metrics) == {"gpu_util_pct", "energy_j"}


def test_nvml_that_fails_to_start_leaves_the_monitor_inert():
    fake = FakeNvml(init_error="Driver Not Loaded")
    with _monitor(fake) as gpu:
        pass
    assert gpu.metrics == {}


def test_a_gpu_index_past_the_visible_ones_leaves_the_monitor_inert_and_nvml_shut_down():
    fake = FakeNvml(count=1)
    with GpuMonitor(3, pid=PID, nvml=fake) as gpu:
        pass
    assert gpu.metrics == {} and fake.open_sessions == 0


@pytest.mark.skipif(nvml_available(), reason="this machine has an NVIDIA GPU")
def test_real_nvml_without_a_gpu_gives_no_keys_not_zeros():
    with GpuMonitor(0) as gpu:
        pass
    assert gpu.metrics == {}


# ---- which GPU a device names -----------------------------------------------------------------


@pytest.mark.parametrize("device,index", [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3), ("cpu", None)])
def test_cuda_index_of_a_device_name(device, index):
    assert cuda_index(device) == index


@pytest.mark.parametrize("visible,opened", [(None, 1), ("2,3", 3), ("GPU-aaaa,GPU-bbbb", "GPU-bbbb")])
def test_cuda_ordinals_follow_cuda_visible_devices(monkeypatch, visible, opened):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = FakeNvml(count=4)
    gpu = Gpu.open(1, fake)
    assert gpu is not None and gpu._handle == ("gpu", opened)
    gpu.close()
    assert fake.open_sessions == 0


def test_check_cuda_device_passes_cpu_and_a_present_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    check_cuda_device("cpu", FakeNvml(init_error="never asked"))
    check_cuda_device("cuda:1", FakeNvml(count=2))


@pytest.mark.parametrize(
    "device,fake,visible,message",
    [
        ("cuda", FakeNvml(init_error="NVML Shared Library Not Found"),
         None, r"^--device cuda: no NVIDIA GPU found \(NVML: NVML Shared Library Not Found\); run on a machine with one, "
               r"or pass --device cpu$"),
        ("cuda:2", FakeNvml(count=2), None, r"^--device cuda:2: this machine has 2 GPU\(s\), cuda:0 to cuda:1"),
        ("cuda", FakeNvml(count=2), "-1", r"CUDA_VISIBLE_DEVICES hides them all"),
    ],
)
def test_check_cuda_device_refuses_in_one_line_saying_what_to_do(monkeypatch, device, fake, visible, message):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(UserError) as caught:
        check_cuda_device(device, fake)
    assert "\n" not in caught.value.for_cli()
    assert __import__("re").search(message, caught.value.for_cli()), caught.value.for_cli()
    assert fake.open_sessions <= 0


# ---- the figures in Efficiency -----------------------------------------------------------------------


def _steady_backend(device: str):
    """A backend whose every generation produces all its tokens at 10 ms each."""
    from fakes import TimingOnlyBackend, fake_variant

    from harness.backends.base import Generation

    class Steady(TimingOnlyBackend):
        runtime = "steady"

        def generate(self, prompt_ids, max_new_tokens):
            return Generation(list(range(max_new_tokens)), 0.0, [0.01 * (i + 1) for i in range(max_new_tokens)])

    return Steady(fake_variant("steady-fp32"), device=device)


def test_efficiency_on_a_cuda_device_has_gpu_memory_utilisation_and_energy_per_token(monkeypatch):
    """Through measure_efficiency, with the fake as pynvml: energy per decode run and per produced token."""
    from harness.measure.efficiency import measure_efficiency

    fake = FakeNvml(processes=[], used_bytes=700 * MB, energy_readings=list(range(1000, 1_000_000, 3000)))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    result = measure_efficiency(_steady_backend("cuda"), prompt_tokens=4, gen_tokens=4, warmup=0, repetitions=3,
                                max_repetitions=3, token_pool=np.arange(10), powercap_root="/nonexistent")
    assert result.gpu_peak_mem_mb == pytest.approx(700.0)
    assert result.gpu_util_pct == pytest.approx(50.0)
    # each monitored block reads the counter twice, 3000 mJ apart: 3 J per decode run of 4 tokens
    assert result.energy_j == pytest.approx(3.0)
    assert result.energy_per_token_j == pytest.approx(0.75)
    assert result.energy_j_spread == pytest.approx([3.0, 3.0])


def test_efficiency_on_the_cpu_has_no_gpu_keys_at_all():
    from harness.measure.efficiency import measure_efficiency

    result = measure_efficiency(_steady_backend("cpu"), prompt_tokens=4, gen_tokens=4,
                                warmup=0, repetitions=3, max_repetitions=3, token_pool=np.arange(10),
                                powercap_root="/nonexistent")
    row = result.to_dict() if hasattr(result, "to_dict") else vars(result)
    for key in ("gpu_peak_mem_mb", "gpu_util_pct", "energy_j", "energy_per_token_j"):
        assert row.get(key) is None


def test_compare_with_cuda_on_a_machine_without_a_gpu_stops_in_one_line_with_status_2(tmp_path):
    if nvml_available():
        pytest.skip("this machine has an NVIDIA GPU")
    proc = subprocess.run([sys.executable, "-m", "harness", "compare", "--device", "cuda", "--out",
                           str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite"), "--cache-dir",
                           str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: no NVIDIA GPU found"), proc.stderr
    assert "pass --device cpu" in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()  # nothing built or written
