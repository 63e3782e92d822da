"""Airflow's own floor for a build, measured: the DAGs of bench/floor_dags.py (exactly a build's shape, task bodies
that do nothing) on a Celery deployment of their own, one run alone and N at once, as the concurrency benchmark
runs the builds (after them, on the Celery deployment): what N runs cost on this machine when every second of it
is Airflow's (its scheduler, executor, workers, task processes, api-server, triggerer and database) and none is
the cloud's or the build's. The builds cannot finish faster than these.

Alone (``python -m bench.floor [--builds 100] [--airflow-setting AIRFLOW__S__K=V ...]`` from the project root
with ``PYTHONPATH=plugins:.``, about 4 minutes for 100): only the floor's two batches, no build, written to
bench/results/results-floor-<date>.md; a quick way to see what an Airflow setting does to the deployment's own time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import Result, Row
from bench.airflow_settings import add_airflow_setting, tuned
from bench.batches import DEFAULT_PARALLELISM, DEFAULT_TIMEOUT, STEPS_INTRO, keep, one_then_many, steps_table
from bench.deployments import PROJECT, celery_deployment, prepared
from bench.report import ratio, run_and_publish, secs
from localcloud.cloud import LocalCloud

#: The DAG file the benchmark writes into the floor deployment's DAG folder (Airflow's safe mode reads only a
#: file that names "airflow" and "dag").
DAG_FILE = '''"""Airflow DAGs of the benchmark's floor (bench/floor_dags.py)."""

from bench.floor_dags import dags

globals().update(dags())
'''


def run_floor(work: Path, cloud: LocalCloud, names: list[str], parallelism: int, workers: int, timeout: float,
              extra_env: dict[str, str], source: Path) -> dict:
    """The same batches of DAGs of a build's shape whose tasks do nothing (bench/floor_dags.py), on a deployment
    of their own (the same settings, a new database): Airflow's own time for them on this machine."""
    dags = work / "floor" / "dags"
    dags.mkdir(parents=True)
    (dags / "floor_builds.py").write_text(DAG_FILE)
    env = {**extra_env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "PYTHONPATH": f"{source / 'plugins'}:{PROJECT}"}  # (bench.floor_dags from the project)
    with celery_deployment(work / "floor" / "deployment", cloud, workers, parallelism, env) as celery:
        print(f"the floor: Celery deployment at {celery.url}", flush=True)
        raw_one, one, raw_many, many = one_then_many(celery.stack, cloud, celery.pg.dsn, names, timeout, "floor run")
    keep(work / "floor.json", {"one": one, "many": many}, raw_one, raw_many)
    return {"one": one, "many": many}


def floor_row(name: str, floor: dict, n: int, builds: dict | None = None) -> Row:
    """The floor's row: its ``n`` runs at once against one alone; with ``builds`` (a concurrency measurement
    of the same ``n``), beside the builds' own."""
    one, many = floor["one"], floor["many"]
    times = many["wall_to_end"] / one["wall_to_end"] if many["wall_to_end"] and one["wall_to_end"] else None
    note = (f"{many['succeeded']}/{many['n']} succeeded (one alone: {one['succeeded']}/{one['n']}), "
            f"{many['task_starts'] / n:.1f} task starts a run")
    if builds:
        note += f" (the builds: {builds['many']['task_starts'] / n:.1f})"
    if times:
        note += f"; {n} took {times:.2f}x one"
    builds_one, builds_many = (builds["one"]["wall_to_end"], builds["many"]["wall_to_end"]) if builds else (0, 0)
    if many["wall_to_end"] and builds_one and builds_many:
        note += (f"; Airflow alone needs {many['wall_to_end'] / builds_one:.2f}x one build's wall time for them "
                 f"(the builds: {builds_many / builds_one:.2f}x)")
    return Row(name, f"the floor: {n} runs at once of DAGs of a build's shape whose tasks do nothing, to all done",
               secs(many["wall_to_end"]), secs(one["wall_to_end"]), ratio(one["wall_to_end"], many["wall_to_end"]),
               note)


# --- the floor alone (python -m bench.floor) -----------------------------------------------------------------


def measure(runs: int, parallelism: int, workers: int, settings: dict[str, str], ref: str | None = None) -> dict:
    """The floor's batches (one alone, then ``runs`` at once) on a Celery deployment of ``workers`` hosts, with
    ``settings`` beyond the deployment's own; no build."""
    with prepared("bench-floor-", runs, ref, settings) as (work, cloud, source, names, env, code_text):
        floor = run_floor(work, cloud, names, parallelism, workers, DEFAULT_TIMEOUT, env,
                          source)  # the deployment's hosts live on the local cloud's bridge
    return {**floor, "runs": runs, "workers": workers, "parallelism": parallelism, "code": code_text,
            "settings": settings, "work": work}


def result(m: dict) -> Result:
    one, many, n = m["one"], m["many"], m["runs"]
    rows = [floor_row("floor", m, n)]
    details = [
        f"**floor.** Airflow's floor alone (bench/floor.py): {n} DAGs of exactly a build's shape whose tasks do "
        "nothing, one run alone and then a run of each at once, on the Celery deployment (localcloud/"
        f"deployment.py, {m['workers']} worker hosts, {m['parallelism']} task slots in all). No cloud call, no "
        "SSH, no emulated wait: all of the time is Airflow's. Code measured: "
        f"{m['code']}. {tuned(m['settings'])} Work folder: {m['work']}.",
        STEPS_INTRO + steps_table({f"{n} runs": many, "one run": one}),
    ]
    return Result(rows, details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description="Airflow's floor alone: N runs "
                                     "of DAGs of a build's shape whose tasks do nothing, against one")
    parser.add_argument("--builds", type=int, default=100, help="runs at once (default 100)")
    parser.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM, help="task slots in all")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker hosts")
    parser.add_argument("--code", default=None, metavar="GIT_REF",
                        help="run dags/, plugins/ and include/ as of this git ref (default: the working tree)")
    add_airflow_setting(parser, "")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.builds < 1 or args.workers < 1:
        parser.error("--builds and --workers must be at least 1")
    run_and_publish(lambda: result(measure(args.builds, args.parallelism, args.workers,
                                           dict(args.airflow_setting or []), args.code)),
                    "`python -m bench.floor`", args.out, "floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
