"""Energy and CO2 per image (tasks.run.energy): RAPL counters from powercap trees built in tmp_path (sysfs
itself cannot be staged), the CPU power table and grid intensities read from the vendored CodeCarbon
data, and the arithmetic checked against numbers worked out by hand."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.run.energy import (
    DEFAULT_WATTS_PER_CPU,
    count_sockets,
    energy_method,
    energy_summary,
    estimated_power,
    grid_intensity,
    match_cpu,
    measured_power,
    rapl_delta_joules,
    read_rapl,
)
from tasks.store.errors import QuantbenchError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tasks" / "run" / "codecarbon"
WRAP_UJ = 262_143_328_850  # a common max_energy_range_uj
NOBODY = 65534


def _domain(root: Path, directory: str, name: str, energy_uj: int, max_range_uj: int | None = WRAP_UJ) -> Path:
    """One powercap domain as sysfs lists it (energy_uj mode 0400, root-only, as on recent kernels)."""
    domain = root / directory
    domain.mkdir(parents=True, exist_ok=True)
    (domain / "name").write_text(f"{name}\n")
    (domain / "energy_uj").write_text(f"{energy_uj}\n")
    (domain / "energy_uj").chmod(0o400)
    if max_range_uj is not None:
        (domain / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return domain


def _two_packages(root: Path, package0_uj: int, package1_uj: int) -> None:
    """Two packages with core/DRAM sub-domains, a psys domain, an MMIO mirror and the control type."""
    _domain(root, "intel-rapl:0", "package-0", package0_uj)
    _domain(root, "intel-rapl:0:0", "core", 5_000_000_000)
    _domain(root, "intel-rapl:0:1", "dram", 6_000_000_000)
    _domain(root, "intel-rapl:1", "package-1", package1_uj)
    _domain(root, "intel-rapl:1:0", "core", 7_000_000_000)
    _domain(root, "intel-rapl:2", "psys", 9_000_000_000)
    _domain(root, "intel-rapl-mmio:0", "package-0", 8_000_000_000)
    (root / "intel-rapl").mkdir()  # the control type itself: no counters
    (root / "intel-rapl" / "enabled").write_text("1\n")


def _csv_tdp() -> dict[str, str]:
    """CodeCarbon's table read here on its own: the first TDP (W, as written) of each name."""
    with (DATA / "cpu_power.csv").open(newline="") as file:
        table: dict[str, str] = {}
        for row in csv.DictReader(file):
            table.setdefault(row["Name"], row["TDP"])
    return table


def test_rapl_sums_the_top_level_package_domains_only(tmp_path):
    _two_packages(tmp_path, 1_000_000, 2_000_000)
    before = read_rapl(tmp_path)
    assert before is not None and set(before.counters) == {"intel-rapl:0", "intel-rapl:1"}
    assert [c.energy_uj for c in before.counters.values()] == [1_000_000, 2_000_000]
    assert {c.max_energy_range_uj for c in before.counters.values()} == {WRAP_UJ}
    _two_packages(tmp_path / "later", 4_500_000, 2_250_000)
    assert rapl_delta_joules(before, read_rapl(tmp_path / "later")) == pytest.approx(3.5 + 0.25)


def test_rapl_wraparound_adds_the_counter_range(tmp_path):
    _domain(tmp_path / "a", "intel-rapl:0", "package-0", WRAP_UJ - 171_150)
    _domain(tmp_path / "b", "intel-rapl:0", "package-0", 657_700)
    assert rapl_delta_joules(read_rapl(tmp_path / "a"), read_rapl(tmp_path / "b")) == pytest.approx(0.82885)  # 171,150 + 657,700 µJ
    _domain(tmp_path / "c", "intel-rapl:0", "package-0", WRAP_UJ - 171_150, max_range_uj=None)
    _domain(tmp_path / "d", "intel-rapl:0", "package-0", 657_700, max_range_uj=None)
    before, after = read_rapl(tmp_path / "c"), read_rapl(tmp_path / "d")
    assert before.counters["intel-rapl:0"].max_energy_range_uj is None
    assert rapl_delta_joules(before, after) is None  # wrapped by an unknown amount
    _two_packages(tmp_path / "e", 1, 1)
    assert rapl_delta_joules(read_rapl(tmp_path / "a"), read_rapl(tmp_path / "e")) is None  # other packages


def test_rapl_absent_or_without_packages_is_none(tmp_path):
    assert read_rapl(tmp_path / "no-powercap") is None
    _domain(tmp_path, "intel-rapl:0", "psys", 10)
    _domain(tmp_path, "intel-rapl:0:0", "package-0", 10)  # a sub-domain never counts as a package
    assert read_rapl(tmp_path) is None


def _read_rapl_unprivileged(root: Path) -> dict[str, int] | None:
    """read_rapl(root) by a user that file modes apply to: this process unless it is root, which
    reads anything; then a child that imports tasks.run.energy and becomes ``nobody`` before reading."""
    if os.geteuid() != 0:
        reading = read_rapl(root)
        return None if reading is None else {k: c.energy_uj for k, c in reading.counters.items()}
    code = ("import json, os, sys; from pathlib import Path; from tasks.run.energy import read_rapl; "
            f"os.setgid({NOBODY}); os.setuid({NOBODY}); r = read_rapl(Path(sys.argv[1])); "
            "print(json.dumps(None if r is None else {k: c.energy_uj for k, c in r.counters.items()}))")
    done = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_rapl_energy_readable_by_root_only_is_none():
    with tempfile.TemporaryDirectory() as folder:  # tmp_path's parents are closed to other users
        root = Path(folder)
        root.chmod(0o755)
        _domain(root, "intel-rapl:0", "package-0", 123_456)
        (root / "intel-rapl:0" / "energy_uj").chmod(0o444)
        assert _read_rapl_unprivileged(root) == {"intel-rapl:0": 123_456}  # the tree is reachable
        # root-only as on recent kernels; a non-root test runner owns the file, so it needs no bits at all
        (root / "intel-rapl:0" / "energy_uj").chmod(0o400 if os.geteuid() == 0 else 0o000)
        assert _read_rapl_unprivileged(root) is None


def test_cpu_names_match_codecarbons_table():
    table = _csv_tdp()
    assert table["AMD EPYC 7763"] == "280.0"  # checked in cpu_power.csv: "AMD EPYC 7763,280.0"
    for model_name, row in [("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763"),
                            ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "Intel Xeon Platinum 8375C"),
                            ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "Intel Xeon E5-2686 v4"),
                            ("Intel(R) Core(TM) i7-10700K CPU @ 3.80GHz", "Intel Core i7-10700K"),
                            ("apple m1", "Apple M1")]:
        assert match_cpu(model_name) == row
        tdp = float(table[row])
        power = estimated_power(model_name, logical_cpus=8)
        assert (power.matched, power.tdp_w, power.watts_per_cpu) == (row, tdp, tdp / 8)
        assert power.method == "cpu-power-estimate" and f"'{row}' TDP {tdp:g} W" in power.source


def test_tdp_is_split_over_the_machines_logical_cpus_per_socket():
    power = estimated_power("AMD EPYC 7763 64-Core Processor", logical_cpus=256, sockets=2)
    assert power.watts_per_cpu == 2.1875  # 280 W × 2 packages / 256 logical CPUs
    assert "280 W × 2 socket(s) / 256 logical CPUs" in power.source


@pytest.mark.parametrize("model_name", ["AMD EPYC", "Common KVM processor", "Intel(R) Xeon(R) CPU @ 2.20GHz", ""])
def test_a_cpu_the_table_does_not_single_out_gets_codecarbons_default(model_name):
    assert match_cpu(model_name) is None
    power = estimated_power(model_name, logical_cpus=2)
    assert power.watts_per_cpu == DEFAULT_WATTS_PER_CPU == 4.0  # CodeCarbon's DEFAULT_POWER_PER_CORE, W per thread
    assert (power.matched, power.tdp_w) == (None, None)
    assert "CodeCarbon's default for an unknown CPU, 4 W per thread" in power.source


def test_epyc_alone_is_ambiguous_in_the_table():
    table = _csv_tdp()
    epyc_tdps = [float(tdp) for name, tdp in table.items() if name.startswith("AMD EPYC ")]
    assert len(epyc_tdps) > 100 and len(set(epyc_tdps)) > 5  # many rows, with different TDPs


def test_sockets_from_cpuinfo(tmp_path):
    two = tmp_path / "two"
    two.write_text("".join(f"processor\t: {i}\nmodel name\t: AMD EPYC\nphysical id\t: {i // 4}\n\n" for i in range(8)))
    assert count_sockets(two) == 2
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n\n")
    assert count_sockets(arm) == 1
    assert count_sockets(tmp_path / "absent") == 1


def test_grid_intensity_world_average_country_or_number():
    world = json.loads((DATA / "carbon_intensity_per_source.json").read_text())
    countries = json.loads((DATA / "global_energy_mix.json").read_text())
    value, source = grid_intensity(None)
    assert value == world["world_average"] == 475
    assert "world average" in source and "CodeCarbon 3.3.2" in source and world["world_average_source"] in source
    assert grid_intensity("FRA") == (countries["FRA"]["carbon_intensity"], "France (FRA) 2023, CodeCarbon 3.3.2 global_energy_mix.json")
    assert grid_intensity("FRA")[0] == 56.039
    assert grid_intensity("deu")[0] == countries["DEU"]["carbon_intensity"]
    assert grid_intensity(" USA ")[0] == countries["USA"]["carbon_intensity"]
    assert grid_intensity("420") == (420.0, "as set (grid carbon intensity setting)")
    assert grid_intensity("12.5")[0] == 12.5 and grid_intensity("0")[0] == 0.0


@pytest.mark.parametrize("setting", ["XYZ", "FR", "France", "-5", "nan", "inf", ""])
def test_grid_intensity_rejects_anything_else_in_one_line(setting):
    with pytest.raises(QuantbenchError) as error:
        grid_intensity(setting)
    message = str(error.value)
    assert repr(setting) in message and "FRA" in message and "420" in message and "\n" not in message


def test_energy_per_image_and_co2_per_million_images():
    # 12 CPU-s over 100 images at 4 W per busy CPU: 0.12 s and 0.48 J per image; a million images
    # use 480,000 J = 0.1333 kWh, × 475 g/kWh = 63.33 g.
    summary = energy_summary(cpu_s=12.0, images=100, watts_per_cpu=4.0, grid_g_per_kwh=475.0)
    assert summary == pytest.approx({"cpu_s_per_image": 0.12, "j_per_image": 0.48, "gco2e_per_million_images": 63.3333333})
    # 1 J per image in France: 1e6 J = 0.27778 kWh × 56.039 g/kWh = 15.566 g.
    assert energy_summary(50.0, 500, 10.0, 56.039)["gco2e_per_million_images"] == pytest.approx(15.566389)


def test_rapl_energy_is_shared_by_cpu_seconds():
    # 90 J over 30 CPU-s: 3 W per busy CPU; variants of 10 and 20 CPU-s get 30 J and 60 J, all of it.
    power = measured_power("AMD EPYC", package_joules=90.0, cpu_s=30.0)
    assert (power.method, power.watts_per_cpu) == ("rapl", 3.0)
    first, second = energy_summary(10.0, 50, power.watts_per_cpu, 475.0), energy_summary(20.0, 40, power.watts_per_cpu, 475.0)
    assert (first["j_per_image"], second["j_per_image"]) == (pytest.approx(0.6), pytest.approx(1.5))
    assert first["j_per_image"] * 50 + second["j_per_image"] * 40 == pytest.approx(90.0)


def test_energy_method_states_method_figures_and_assumptions():
    method = energy_method(estimated_power("AMD EPYC", logical_cpus=2), None)
    assert set(method) == {"method", "cpu", "watts_per_cpu", "source", "grid_g_per_kwh", "grid_source", "assumptions"}
    assert (method["method"], method["cpu"], method["watts_per_cpu"], method["grid_g_per_kwh"]) == ("cpu-power-estimate", "AMD EPYC", 4.0, 475.0)
    assert "CPU-seconds per image × W per busy logical CPU" in method["assumptions"]
    assert "DRAM" in method["assumptions"] and "PUE" in method["assumptions"]
    rapl = energy_method(measured_power("AMD EPYC", 90.0, 30.0), "FRA")
    assert (rapl["method"], rapl["watts_per_cpu"], rapl["grid_g_per_kwh"]) == ("rapl", 3.0, 56.039)
    assert "90 J over 30 CPU-s" in rapl["source"] and "shared among the variants by their CPU-seconds" in rapl["assumptions"]
    with pytest.raises(QuantbenchError):
        energy_method(estimated_power("AMD EPYC", 2), "Atlantis")
