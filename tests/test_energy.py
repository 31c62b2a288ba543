"""CPU package energy from RAPL, on fake powercap trees: which zones count, wrap-around, and no reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.machine.energy import PackageEnergy, package_zones

MAX_RANGE_UJ = 262_143_328_850  # what an Intel package reports


def zone(root: Path, name: str, label: str, energy_uj: int, max_range_uj: int = MAX_RANGE_UJ) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "name").write_text(f"{label}\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return folder


def set_energy(folder: Path, energy_uj: int) -> None:
    (folder / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def two_packages(tmp_path):
    """Two packages, a subzone of the first (its core), a psys zone and an unrelated control type."""
    root = tmp_path / "powercap"
    packages = [zone(root, "intel-rapl:0", "package-0", 1_000_000), zone(root, "intel-rapl:1", "package-1", 5_000_000)]
    zone(root, "intel-rapl:0:0", "core", 700_000)  # part of package 0: counting it would count twice
    zone(root, "intel-rapl:2", "psys", 9_000_000)  # the platform, not a CPU package
    (root / "dtpm").mkdir()
    return root, packages


def test_only_top_level_package_zones_count_and_their_energy_adds_up(two_packages):
    root, (pkg0, pkg1) = two_packages
    packages = PackageEnergy(root)
    assert [z.energy_path.parent.name for z in packages.zones] == ["intel-rapl:0", "intel-rapl:1"]
    with packages.measure() as meter:
        set_energy(pkg0, 3_500_000)  # +2.5 J
        set_energy(pkg1, 5_250_000)  # +0.25 J
        set_energy(root / "intel-rapl:0:0", 2_700_000)  # the core's 2 J are inside package 0's 2.5 J
    assert meter.metrics == {"cpu_energy_j": pytest.approx(2.75)}


def test_a_counter_that_wrapped_past_its_range_is_unwrapped(tmp_path):
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 990, max_range_uj=1000)
    packages = PackageEnergy(tmp_path)
    with packages.measure() as meter:
        set_energy(pkg, 30)  # 990 -> 1000 wraps to 0 -> 30: 40 uJ
    assert meter.metrics["cpu_energy_j"] == pytest.approx(40e-6)
    assert packages.joules((990,), (30,)) == pytest.approx(40e-6)
    assert packages.joules((30,), (990,)) == pytest.approx(960e-6)


def test_amd_packages_under_the_same_driver_names_are_read(tmp_path):
    zone(tmp_path, "intel-rapl:0", "package-0", 0)  # what the rapl driver exposes on an AMD EPYC
    assert PackageEnergy(tmp_path).available


def test_no_reading_when_the_root_is_missing_empty_or_a_counter_unreadable(tmp_path):
    assert package_zones(tmp_path / "missing") == () and package_zones(tmp_path) == ()
    zone(tmp_path, "intel-rapl:0", "package-0", 100)
    locked = zone(tmp_path, "intel-rapl:1", "package-1", 100)
    (locked / "energy_uj").unlink()
    (locked / "energy_uj").mkdir()  # reading it raises, as a root-only file does for a user
    packages = PackageEnergy(tmp_path)
    assert not packages.available  # a sum over package 0 alone would be wrong, not smaller
    with packages.measure() as meter:
        pass
    assert meter.metrics == {}


def test_a_counter_that_becomes_unreadable_during_the_block_gives_no_reading(tmp_path):
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 100)
    packages = PackageEnergy(tmp_path)
    with packages.measure() as meter:
        (pkg / "energy_uj").write_text("garbage\n")
    assert meter.metrics == {}


def test_a_zone_without_a_name_file_counts_as_a_package(tmp_path):
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 100)
    (pkg / "name").unlink()
    assert len(PackageEnergy(tmp_path).zones) == 1
