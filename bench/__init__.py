"""Benchmarks: figures and ratios against a peer measured in the same run (``python -m bench.run``).

Nothing here is a test: the benchmarks print numbers; they check only that both sides built what they should,
and fail loudly when not. Each benchmark is a function returning a :class:`Result` (see bench/run.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def install_debian_package(package: str) -> None:
    """``apt-get install`` one of Debian's packages (a benchmark's peer or server), as scripts/setup.sh does:
    as root, or through sudo. Raises RuntimeError with apt's output when it fails."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing Debian's {package} package (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(sudo + command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:] or result.stdout[-2000:]}")


@dataclass(frozen=True)
class Row:
    """One line of the results table. ``ratio`` is peer / ours: above 1 means Image Factory does better."""

    benchmark: str
    measure: str
    ours: str
    peer: str = ""
    ratio: str = ""
    note: str = ""


@dataclass
class Result:
    rows: list[Row]
    #: Markdown paragraphs printed after the table (how the figures were made, profiles, ...).
    details: list[str] = field(default_factory=list)
