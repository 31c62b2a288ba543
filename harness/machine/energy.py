"""CPU package energy from RAPL, read through Linux's powercap interface.

Each CPU package is a top-level zone ``<root>/intel-rapl:<N>`` whose ``name``
starts with ``package`` (AMD's RAPL is exposed under the same name by the same
driver on recent kernels; ``psys`` and the ``intel-rapl:N:M`` subzones, parts
of a package, are left out so nothing is counted twice). ``energy_uj`` is a
cumulative counter in microjoules that wraps to 0 past
``max_energy_range_uj``. It is the whole package's energy, every process's,
so a busy neighbour adds to it.

Where the root is missing (a virtual machine, macOS), holds no package zone, or
a counter cannot be read (since Linux 5.10 ``energy_uj`` is readable by root
only), there is no reading: the energy figures are then absent from the
results, never zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POWERCAP_ROOT = Path("/sys/class/powercap")
_TOP_LEVEL_ZONE = re.compile(r"^intel-rapl:\d+$")


@dataclass(frozen=True)
class _Zone:
    energy_path: Path
    max_range_uj: int


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def package_zones(root: str | Path = POWERCAP_ROOT) -> tuple[_Zone, ...]:
    """Every package zone under ``root``, or () when any of them cannot be read (a partial sum would mislead)."""
    root = Path(root)
    try:
        candidates = sorted(p for p in root.iterdir() if _TOP_LEVEL_ZONE.match(p.name))
    except OSError:
        return ()
    zones = []
    for zone in candidates:
        try:
            name_file = zone / "name"
            if name_file.exists() and not name_file.read_text().strip().startswith("package"):
                continue  # psys: the platform, not a CPU package
            _read_int(zone / "energy_uj")
            zones.append(_Zone(zone / "energy_uj", _read_int(zone / "max_energy_range_uj")))
        except (OSError, ValueError):
            return ()
    return tuple(zones)


class PackageEnergy:
    """The CPU packages' energy counters under a powercap ``root``; ``measure()`` times a block in joules."""

    def __init__(self, root: str | Path = POWERCAP_ROOT):
        self.zones = package_zones(root)

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def read_uj(self) -> tuple[int, ...] | None:
        """Each zone's counter now, or None when one cannot be read."""
        try:
            return tuple(_read_int(zone.energy_path) for zone in self.zones)
        except (OSError, ValueError):
            return None

    def joules(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """Energy between two readings, summed over the packages; a counter that wrapped once is unwrapped."""
        total_uj = 0
        for zone, start, end in zip(self.zones, before, after):
            delta = end - start
            if delta < 0:  # passed max_energy_range_uj and restarted from 0
                delta += zone.max_range_uj
            total_uj += delta
        return total_uj / 1e6

    def measure(self) -> "EnergyMeter":
        return EnergyMeter(self)


class EnergyMeter:
    """Package energy over a ``with`` block: ``metrics`` holds ``cpu_energy_j``, or is empty without a reading."""

    def __init__(self, packages: PackageEnergy):
        self._packages = packages
        self._before: tuple[int, ...] | None = None
        self.metrics: dict[str, float] = {}

    def __enter__(self) -> "EnergyMeter":
        if self._packages.available:
            self._before = self._packages.read_uj()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._before is None:
            return
        after = self._packages.read_uj()
        if after is not None:
            self.metrics = {"cpu_energy_j": self._packages.joules(self._before, after)}
