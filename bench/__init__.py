"""Benchmarks: figures and ratios against a peer measured in the same run (``python -m bench.run``).

Nothing here is a test: the benchmarks print numbers; they check only that both sides built what they should,
and fail loudly when not. Each benchmark is a function returning a :class:`Result` (see bench/run.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One line of the results table. ``ratio`` is peer / ours: above 1 means Image Factory does better."""

    benchmark: str
    measure: str
    ours: str
    peer: str = ""
    ratio: str = ""
    note: str = ""


def process_cpu_seconds(pid: int) -> float:
    """The CPU (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    rows: list[Row]
    #: Markdown paragraphs printed after the table (how the figures were made, profiles, ...).
    details: list[str] = field(default_factory=list)
