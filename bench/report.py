"""The results file every benchmark writes: the machine it ran on, the table of :class:`bench.Row`, the details,
the command that made it; written under bench/results/ (or ``--out``) and printed. And the figures' formats the
tables share (seconds, ratios)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench import Result, Row

#: Where the results files go by default.
RESULTS = Path(__file__).resolve().parent / "results"


def results_file(kind: str = "") -> Path:
    """bench/results/results-<kind>-<YYYY-MM-DD>.md (without a kind: results-<YYYY-MM-DD>.md), dated now."""
    return RESULTS / f"results-{kind + '-' if kind else ''}{datetime.now(UTC):%Y-%m-%d}.md"


def cpus() -> int:
    """The CPUs this process may run on (``nproc``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def machine() -> dict[str, str]:
    """The date (``date -u``), CPUs, CPU model, memory, load, and the versions that matter."""
    try:
        date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        date = datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                          if line.startswith("model name")), cpu_model)
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kib = next((int(line.split()[1]) for line in meminfo.read_text().splitlines()
                          if line.startswith("MemTotal:")), 0)
        memory = f"{total_kib / 1024 / 1024:.1f} GiB"

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": date,
        "cpus": f"{cpus()} (nproc)",
        "cpu model": cpu_model,
        "memory": memory,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "apache-airflow": version("apache-airflow"),
        "dag-factory": version("dag-factory"),
    }


def table(rows: list[Row]) -> str:
    header = ["benchmark", "measure", "Image Factory", "peer", "ratio (peer / ours)", "note"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join([r.benchmark, r.measure, r.ours, r.peer, r.ratio, r.note]) + " |" for r in rows]
    return "\n".join(lines)


def report(info: dict[str, str], rows: list[Row], details: list[str], seconds: float,
           made_by: str = "`make bench` (`python -m bench.run all`)") -> str:
    lines = [f"# Benchmarks, {datetime.now(UTC):%Y-%m-%d}", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
              f"- benchmark run time: {seconds:.0f} s", "", table(rows), ""]
    for paragraph in details:
        lines += [paragraph, ""]
    lines.append(f"Made by {made_by}; see bench/README.md.")
    return "\n".join(lines) + "\n"


def publish(text: str, out: Path) -> None:
    """Print a results table and write it to ``out``."""
    out.write_text(text)
    print("\n" + text)
    print(f"written to {out}")


def run_and_publish(benchmark: Callable[[], Result], made_by: str, out: Path | None, kind: str) -> None:
    """One benchmark run on its own (``python -m bench.NAME``): its results file, to ``out`` or to
    :func:`results_file` of ``kind``."""
    info = machine()
    started = time.perf_counter()
    outcome = benchmark()
    publish(report(info, outcome.rows, outcome.details, time.perf_counter() - started, made_by),
            out or results_file(kind))


# --- the figures' formats ------------------------------------------------------------------------------------


def secs(value: float | None) -> str:
    """Seconds, to a tenth; ``-`` when not known."""
    return "-" if value is None else f"{value:.1f} s"


def ms(value: float | None) -> str:
    """Milliseconds shown as seconds, to a hundredth; ``-`` when not known."""
    return "-" if value is None else f"{value / 1000:.2f} s"


def ratio(peer: float | None, ours: float | None) -> str:
    """The table's ratio, peer / ours (above 1: Image Factory does better); ``-`` when either is missing or 0."""
    return "-" if not peer or not ours else f"{peer / ours:.2f}"
