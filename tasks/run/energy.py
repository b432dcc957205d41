"""Energy and CO2 per image: measured by RAPL where the machine has it, else estimated from the CPU.

Both methods come down to one number, the power drawn per busy logical CPU (W), multiplied by the
process CPU time of a variant's inference (s):

- ``rapl``: the CPU packages' energy counters (``/sys/class/powercap/intel-rapl:N``, AMD too on
  recent kernels) read before and after the inference stage; :func:`measured_power` divides the
  package joules by the process CPU-seconds of the stage, so each variant gets the share of the
  measured energy that its CPU-seconds are of the stage's.
- ``cpu-power-estimate``: :func:`estimated_power`, the CPU model's TDP from CodeCarbon's table
  (vendored, ``tasks/run/codecarbon``), split over the machine's logical CPUs the way CodeCarbon's
  process tracking does; for a CPU the table does not know, CodeCarbon's default of 4 W per thread.

gCO2e come from the energy and a grid carbon intensity (:func:`grid_intensity`: a world average
unless a country or a number is given). In a run: ``method = energy_method(power, grid_setting)``
(the report's ``energy``), then per variant ``energy_summary(cpu_s, images, method["watts_per_cpu"],
method["grid_g_per_kwh"])``. Units: energy in J (µJ in the RAPL counters), power in W,
CPU time in s, carbon intensity in gCO2e/kWh.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from tasks.store.errors import QuantbenchError

POWERCAP = Path("/sys/class/powercap")
CPUINFO = Path("/proc/cpuinfo")
CODECARBON_VERSION = "3.3.2"  # of the files in tasks/run/codecarbon (see its NOTICE.md)
# CodeCarbon's DEFAULT_POWER_PER_CORE, "W per thread" for a CPU model not in its table.
DEFAULT_WATTS_PER_CPU = 4.0
J_PER_KWH = 3_600_000
TDP_NUMBER = re.compile(r"\d+(\.\d+)?")
PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")  # top-level domains; intel-rapl:N:M are sub-domains
RAPL = "rapl"
ESTIMATE = "cpu-power-estimate"
EXCLUDED = "idle power of the CPUs this process leaves idle, DRAM, GPU, disk, network, PSU losses and data-centre PUE"


# --- RAPL ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplCounter:
    """One package domain's cumulative energy (µJ) and the value it wraps at (µJ; None: unreadable)."""

    energy_uj: int
    max_energy_range_uj: int | None


@dataclass(frozen=True)
class RaplReading:
    """The package domains' counters at one moment, by domain directory name (``intel-rapl:0``)."""

    counters: dict[str, RaplCounter]


def read_rapl(root: Path = POWERCAP) -> RaplReading | None:
    """The CPU package counters under ``root``: the top-level ``intel-rapl:N`` domains named
    ``package-*`` (sub-domains ``intel-rapl:N:M`` such as core or DRAM are inside their package;
    ``psys`` covers more than the CPU). None when there is no such domain or one cannot be read
    (``energy_uj`` is root-only on recent kernels)."""
    try:
        domains = sorted(d for d in root.iterdir() if PACKAGE_DOMAIN.fullmatch(d.name))
        packages = [d for d in domains if (d / "name").read_text().strip().startswith("package")]
        counters = {d.name: RaplCounter(int((d / "energy_uj").read_text()), _max_range_uj(d)) for d in packages}
    except (OSError, ValueError):
        return None
    return RaplReading(counters) if counters else None


def _max_range_uj(domain: Path) -> int | None:
    try:
        return int((domain / "max_energy_range_uj").read_text())
    except (OSError, ValueError):
        return None


def rapl_delta_joules(before: RaplReading, after: RaplReading) -> float | None:
    """Package energy between two readings (J), summed over the packages. A counter lower after
    than before wrapped once: ``max_energy_range_uj`` is added (as CodeCarbon does). The readings
    must be less than one wrap apart (``max_energy_range_uj`` / package power, e.g. 262 kJ / 200 W
    ≈ 22 min): over a longer stage, read at least that often and add the deltas. None when the two
    readings have different packages or a wrapped counter has no known range."""
    if before.counters.keys() != after.counters.keys():
        return None
    total_uj = 0
    for domain, start in before.counters.items():
        end = after.counters[domain]
        delta = end.energy_uj - start.energy_uj
        if delta < 0:
            if end.max_energy_range_uj is None:
                return None
            delta += end.max_energy_range_uj
        total_uj += delta
    return total_uj / 1e6


# --- power per busy CPU ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPower:
    """Power per busy logical CPU (W) and how it was found.

    ``matched``/``tdp_w``: for an estimate, the table row and its TDP (W per package); None when
    the CPU is not in the table (DEFAULT_WATTS_PER_CPU) or with RAPL."""

    method: str  # RAPL or ESTIMATE
    cpu: str
    watts_per_cpu: float
    source: str
    assumptions: str
    matched: str | None = None
    tdp_w: float | None = None


@cache
def _cpu_table() -> tuple[tuple[str, float], ...]:
    """CodeCarbon's ``cpu_power.csv`` as ``(name, TDP W)`` rows, in file order, less the 4 whose TDP
    is not a number (old Celerons, e.g. "27.29.5"; CodeCarbon itself fails on them)."""
    text = (resources.files("tasks.run") / "codecarbon" / "cpu_power.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return tuple((row["Name"], float(row["TDP"])) for row in rows if TDP_NUMBER.fullmatch(row["TDP"]))


def _tdp_watts(name: str) -> float:
    """The TDP (W) of a row of CodeCarbon's table (its first row of that exact name)."""
    return next(tdp for row, tdp in _cpu_table() if row == name)


def _words(text: str) -> frozenset[str]:
    """rapidfuzz's ``default_process`` (lower case, non-alphanumerics to spaces), split into words."""
    return frozenset(re.sub(r"[\W_]+", " ", text.lower()).split())


def _exact(name: str) -> str | None:
    """The first table row equal to ``name`` ignoring case."""
    lowered = name.lower()
    return next((row for row, _ in _cpu_table() if row.lower() == lowered), None)


def _without_frequency(model_name: str) -> str:
    """CodeCarbon's clean-up of a model name: no "(R)", nothing from " CPU @ " on, no " CPU", no "@ N.NNGHz"."""
    name = model_name.replace("(R)", "")
    if name.find(" CPU @ ") > 0:
        name = name[:name.find(" CPU @ ")]
    return re.sub(r" @\s*\d+\.\d+GHz", "", name.replace(" CPU", ""))


def match_cpu(model_name: str) -> str | None:
    """The table row CodeCarbon 3.3.2 (``TDP._get_matching_cpu``, not greedy) picks for a CPU model
    name as in /proc/cpuinfo, or None. Its rapidfuzz scores have a cutoff of 100, which makes them
    exact rules, applied here without rapidfuzz: the row equal to the name ignoring case; else to
    the cleaned name (:func:`_without_frequency`); else the one row whose words are a subset or a
    superset of the cleaned name's (token_set_ratio 100); none when several are ("AMD EPYC": every
    EPYC row contains both words)."""
    cleaned = _without_frequency(model_name)
    found = _exact(model_name) or _exact(cleaned)
    if found:
        return found
    words = _words(cleaned)
    related = [row for row, _ in _cpu_table() if words & _words(row) and (words <= _words(row) or _words(row) <= words)]
    return related[0] if len(related) == 1 else None


def count_sockets(cpuinfo: Path = CPUINFO) -> int:
    """CPU packages of this machine: distinct ``physical id`` in /proc/cpuinfo; 1 when it has none."""
    try:
        ids = {line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("physical id")}
    except OSError:
        return 1
    return len(ids) or 1


def estimated_power(cpu: str, logical_cpus: int, sockets: int = 1) -> CpuPower:
    """W per busy logical CPU from the CPU model name: the table's TDP × ``sockets`` / ``logical_cpus``
    (the machine's, os.cpu_count()), CodeCarbon's process-mode model (the table has no thread
    counts); for a model the table does not know, DEFAULT_WATTS_PER_CPU."""
    matched = match_cpu(cpu)
    table = f"CodeCarbon {CODECARBON_VERSION} cpu_power.csv"
    if matched is None:
        return CpuPower(ESTIMATE, cpu, DEFAULT_WATTS_PER_CPU,
                        source=f"'{cpu}' matches no single row of {table}: CodeCarbon's default for an unknown CPU, "
                               f"{DEFAULT_WATTS_PER_CPU:g} W per thread",
                        assumptions=(f"each busy logical CPU draws {DEFAULT_WATTS_PER_CPU:g} W (a generic figure, not this CPU's); "
                                     f"excludes {EXCLUDED}"))
    tdp = _tdp_watts(matched)
    return CpuPower(ESTIMATE, cpu, tdp * sockets / logical_cpus, matched=matched, tdp_w=tdp,
                    source=f"{table}: '{matched}' TDP {tdp:g} W × {sockets} socket(s) / {logical_cpus} logical CPUs",
                    assumptions=("each busy logical CPU draws its share of the package TDP, the package at full load "
                                 "(TDP is a thermal limit, not a measurement); all the package's logical CPUs are "
                                 "visible here (in a VM that holds a slice of a larger CPU this over-estimates); "
                                 f"excludes {EXCLUDED}"))


def measured_power(cpu: str, package_joules: float, cpu_s: float) -> CpuPower:
    """W per busy logical CPU measured by RAPL: the packages' energy over the inference stage (J,
    :func:`rapl_delta_joules`) / the process CPU time of that stage (s, > 0)."""
    return CpuPower(RAPL, cpu, package_joules / cpu_s,
                    source=f"RAPL package counters ({POWERCAP}): {package_joules:.6g} J over {cpu_s:.6g} CPU-s of inference",
                    assumptions=("the packages' whole energy over the stage, idle power and any other process included, "
                                 "shared among the variants by their CPU-seconds; excludes DRAM, GPU, disk, network, "
                                 "PSU losses and data-centre PUE"))


# --- grid carbon intensity -----------------------------------------------------------------------


def _data(name: str) -> dict:
    return json.loads((resources.files("tasks.run") / "codecarbon" / name).read_text(encoding="utf-8"))


def grid_intensity(setting: str | None) -> tuple[float, str]:
    """``(gCO2e/kWh, where it comes from)`` for the grid setting: None → CodeCarbon's world average;
    an ISO 3166-1 alpha-3 country code ("FRA", any case) → that country's figure in CodeCarbon's
    energy-mix data; a number ("420") → that many gCO2e/kWh."""
    if setting is None:
        world = _data("carbon_intensity_per_source.json")
        return float(world["world_average"]), (f"world average, CodeCarbon {CODECARBON_VERSION} carbon_intensity_per_source.json "
                                                f"(from {world['world_average_source']})")
    text = setting.strip()
    countries = _data("global_energy_mix.json")
    if text.upper() in countries:
        country = countries[text.upper()]
        return float(country["carbon_intensity"]), (f"{country['country_name']} ({text.upper()}) {country['year']}, "
                                                    f"CodeCarbon {CODECARBON_VERSION} global_energy_mix.json")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise QuantbenchError(f"grid carbon intensity {setting!r} is neither a country code nor a number: give an ISO "
                              f"3166-1 alpha-3 code ({len(countries)} known, e.g. FRA, DEU, USA), gCO2e/kWh (e.g. 420) "
                              "or nothing for the world average")
    return value, "as set (grid carbon intensity setting)"


# --- per variant and for the report ---------------------------------------------------------------


def energy_summary(cpu_s: float, images: int, watts_per_cpu: float, grid_g_per_kwh: float) -> dict:
    """One variant's ``{"cpu_s_per_image": s, "j_per_image": J, "gco2e_per_million_images": g}`` from
    the process CPU time of its inference (s) over ``images`` (> 0), W per busy CPU
    (:class:`CpuPower`) and the grid's gCO2e/kWh."""
    cpu_s_per_image = cpu_s / images
    j_per_image = cpu_s_per_image * watts_per_cpu
    return {"cpu_s_per_image": cpu_s_per_image, "j_per_image": j_per_image,
            "gco2e_per_million_images": j_per_image * 1_000_000 / J_PER_KWH * grid_g_per_kwh}


def energy_method(power: CpuPower, grid_setting: str | None) -> dict:
    """The report's ``energy``: how J and gCO2e were found, with the figures and assumptions used."""
    grid_g_per_kwh, grid_source = grid_intensity(grid_setting)
    return {"method": power.method, "cpu": power.cpu, "watts_per_cpu": power.watts_per_cpu, "source": power.source,
            "grid_g_per_kwh": grid_g_per_kwh, "grid_source": grid_source,
            "assumptions": f"J per image = process CPU-seconds per image × W per busy logical CPU; {power.assumptions}"}


def run_power(cpu: str, package_joules: float | None, stage_cpu_s: float) -> CpuPower:
    """The run's power model: measured when RAPL counted the inference stage here (``package_joules``
    over ``stage_cpu_s`` > 0), else estimated from the CPU model for this machine's logical CPUs."""
    if package_joules is not None and stage_cpu_s > 0:
        return measured_power(cpu, package_joules, stage_cpu_s)
    return estimated_power(cpu, os.cpu_count() or 1, count_sockets())


def variant_energy(inference: dict, method: dict) -> dict:
    """``{"j_per_image", "gco2e_per_million_images"}`` for one variant's ``inference`` summary
    (``tasks.run.usage.inference_summary``) under the run's ``energy`` method; None where its CPU time
    is not known."""
    if inference.get("cpu_s") is None or not inference.get("images"):
        return {"j_per_image": None, "gco2e_per_million_images": None}
    summary = energy_summary(inference["cpu_s"], inference["images"], method["watts_per_cpu"], method["grid_g_per_kwh"])
    return {"j_per_image": round(summary["j_per_image"], 6), "gco2e_per_million_images": round(summary["gco2e_per_million_images"], 3)}
