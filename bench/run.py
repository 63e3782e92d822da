"""Run the benchmarks and write the table: ``python -m bench.run [parse|all|NAME ...]`` (from the project root,
with ``PYTHONPATH=plugins:.``; ``make bench`` does it). The table is printed and written to
bench/results/results-<YYYY-MM-DD>.md, with the date, the machine and the versions measured.

A benchmark is a function ``(args) -> Result`` in :data:`BENCHMARKS`. Each one measures Image Factory and a
peer in the same run and reports figures and ratios (peer / ours); none of them is a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import Result, Row
from bench.airflow_settings import add_airflow_setting
from bench.report import machine, publish, report, results_file


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    #: None: announced, not written yet (shows as a pending row).
    run: Callable[[argparse.Namespace], Result] | None


def _build_latency(args: argparse.Namespace) -> Result:
    from bench import build

    return build.run(args)


def _concurrency(args: argparse.Namespace) -> Result:
    from bench import concurrency

    return concurrency.run(args)


def _lifecycle(args: argparse.Namespace) -> Result:
    from bench import lifecycle

    return lifecycle.run(args)


def _retention(args: argparse.Namespace) -> Result:
    from bench import retention

    return retention.run(args)


def _revocation(args: argparse.Namespace) -> Result:
    from bench import revocation

    return revocation.run(args)


def _overheads(args: argparse.Namespace) -> Result:
    from bench import overheads

    return overheads.run(args)


def _sbom(args: argparse.Namespace) -> Result:
    from bench import sbom

    return sbom.run(args)


def _parse(args: argparse.Namespace) -> Result:
    from bench import parse

    return parse.run(n=args.n, repeat=args.repeat, profile=args.profile)


# A new benchmark: a function (args) -> Result here, its options in main().
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (
        Benchmark("parse", "DagBag load of N specs vs dag-factory on N equivalent YAML DAGs", _parse),
        Benchmark("build-latency", "builds on the local cloud with AWS-like state-change times vs Packer",
                  _build_latency),
        Benchmark("lifecycle", "the test stage: image available to promoted, vs the test boot and the tests",
                  _lifecycle),
        Benchmark("concurrency", "N builds at once vs one alone, same stack (LocalExecutor on PostgreSQL), "
                  "local cloud with AWS-like state-change times", _concurrency),
        Benchmark("retention", "a retention run's API calls over 1,000 images of 100 specs in two regions vs "
                  "over 100 images", _retention),
        Benchmark("revocation", "a revocation with descendants: its API calls and time, alone and among 300 "
                  "other images per region", _revocation),
        Benchmark("overheads", "a test run's CPU and the local cloud's CPU per API call, vs before", _overheads),
        Benchmark("sbom", "find-package over 1,000 images' SBOMs (goal: within 5 s) vs reading and parsing every "
                  "one in turn", _sbom),
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"all, or some of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--n", type=int, default=1000, help="parse: specs (and dag-factory DAGs) to generate")
    parser.add_argument("--repeat", type=int, default=3, help="parse: runs of each side (median reported)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="parse: profile Image Factory's side (default: only when it misses the 4x goal)")
    parser.add_argument("--latency-builds", type=int, default=3,
                        help="build-latency: builds on each side, one after the other (medians reported)")
    parser.add_argument("--builds", type=int, default=100, help="concurrency: builds triggered at once")
    parser.add_argument("--parallelism", type=int, default=32,
                        help="concurrency: LocalExecutor worker processes (and image_factory pool slots)")
    parser.add_argument("--concurrency-timeout", type=float, default=3600,
                        help="concurrency: seconds the N builds may take at most")
    parser.add_argument("--workers", type=int, default=2,
                        help="concurrency: on the Celery deployment with this many worker hosts (0: LocalExecutor)")
    parser.add_argument("--code", default=None, metavar="GIT_REF",
                        help="concurrency: run dags/, plugins/ and include/ as of this git ref (default: working tree)")
    parser.add_argument("--sbom-images", type=int, default=1000, help="sbom: images with an SBOM to search")
    add_airflow_setting(parser, "concurrency: ")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/results-<date>.md)")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if "all" in args.names else args.names
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from all, {', '.join(BENCHMARKS)}")

    info = machine()
    print("\n".join(f"{key}: {value}" for key, value in info.items()), flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    details: list[str] = []
    for name in names:
        benchmark = BENCHMARKS[name]
        if benchmark.run is None:
            rows.append(Row(name, benchmark.title, "-", "-", "-", "not written yet"))
            continue
        print(f"\n{name}: {benchmark.title}", flush=True)
        result = benchmark.run(args)
        rows += result.rows
        details += result.details
    made_by = ("`make bench` (`python -m bench.run all`)" if "all" in args.names
               else f"`python -m bench.run {' '.join(names)}`")
    publish(report(info, rows, details, time.perf_counter() - started, made_by),
            args.out or results_file())
    return 0


if __name__ == "__main__":
    sys.exit(main())
