"""Airflow's own floor for a build: DAGs of exactly a build's shape (the same tasks, dependencies, pool,
setup and teardown, XCom hand-offs, and the same meetings with the triggerer) whose task bodies do nothing.

The concurrency benchmark runs them on a deployment of their own, one alone and N at once, as it runs the
builds: what N runs cost on this machine when every second of it is Airflow's (its scheduler, executor,
workers, task processes, api-server, triggerer and database) and none is the cloud's or the build's. The
builds cannot finish faster than these.

A build on the latency cloud meets the triggerer four times (9 task starts for 7 tasks): launching and the
teardown end in the triggerer (the task does not go back to a worker), registering and testing the image
resume on a worker after their wait. The floor's tasks do the same with a trigger that fires at once.

Alone (``python -m bench.floor [--builds 100] [--airflow-setting AIRFLOW__S__K=V ...]`` from the project root
with ``PYTHONPATH=plugins:.``, about 4 minutes for 100): only the floor's two batches, no build, written to
bench/results/results-floor-<date>.md; a quick way to see what an Airflow setting does to the deployment's own time.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from image_factory import tasks
from image_factory.dag import STEPS, build_dags
from image_factory.settings import specs_folder
from image_factory.waiting import WaitDeferred

ENDS_IN_TRIGGER = (tasks.LAUNCH, tasks.TEARDOWN)
RESUMES = (tasks.REGISTER, tasks.TEST)
#: What every floor task returns (its XCom, which the next ones are handed).
NOTHING = {"floor": True}

#: The DAG file the benchmark writes into the floor deployment's DAG folder (Airflow's safe mode reads only a
#: file that names "airflow" and "dag").
DAG_FILE = '''"""Airflow DAGs of the benchmark's floor (bench/floor.py)."""

from bench.floor import dags

globals().update(dags())
'''


class AtOnce(BaseTrigger):
    """Fires at once: ends the task (``end``), or resumes it on a worker, as a build's waits do."""

    def __init__(self, end: bool = False):
        super().__init__()
        self.end = end

    def serialize(self):
        return f"{type(self).__module__}.{type(self).__qualname__}", {"end": self.end}

    async def run(self):
        yield TaskSuccessEvent() if self.end else TriggerEvent({"status": "success", "polls": 0})


def _nothing(task_id: str):
    def body(build: tasks.BuildTask, *results):
        if task_id in ENDS_IN_TRIGGER:
            raise WaitDeferred(AtOnce(end=True), timeout=60, result=NOTHING)
        if task_id in RESUMES and build.resumed is None:
            raise WaitDeferred(AtOnce(), timeout=60)
        return NOTHING

    body.__name__ = task_id
    return body


#: The build's steps with bodies that do nothing (the approval, Airflow's own operator, as it is).
TABLE = tuple(dataclasses.replace(step, body=_nothing(step.task_id)) if step.body else step for step in STEPS)


def dags() -> dict:
    """A floor DAG for each spec in ``[image_factory] specs_folder``, named as the spec (a task process: its own)."""
    built, errors = build_dags(specs_folder(Path(__file__).resolve().parents[1] / "include" / "specs"), TABLE)
    if errors:
        raise RuntimeError(f"floor specs not loaded: {errors}")
    return built


# --- the floor alone (python -m bench.floor) -----------------------------------------------------------------


def measure(runs: int, parallelism: int, workers: int, settings: dict[str, str], ref: str | None = None) -> dict:
    """The floor's batches (one alone, then ``runs`` at once) on a Celery deployment of ``workers`` hosts, with
    ``settings`` beyond the deployment's own; no build."""
    from bench import concurrency

    with concurrency.prepared("bench-floor-", runs, ref, settings) as (work, cloud, source, names, env, code_text):
        floor = concurrency.run_floor(work, cloud, names, parallelism, workers, concurrency.DEFAULT_TIMEOUT, env,
                                      source)  # the deployment's hosts live on the local cloud's bridge
    return {**floor, "runs": runs, "workers": workers, "parallelism": parallelism, "code": code_text,
            "settings": settings, "work": work}


def result(m: dict):
    from bench import Result
    from bench.concurrency import STEPS_INTRO, floor_row, steps_table, tuned

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
    from bench.concurrency import DEFAULT_PARALLELISM, add_airflow_setting
    from bench.run import machine, publish, report

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
    info = machine()
    started = time.perf_counter()
    outcome = result(measure(args.builds, args.parallelism, args.workers, dict(args.airflow_setting or []),
                             args.code))
    publish(report(info, outcome.rows, outcome.details, time.perf_counter() - started, "`python -m bench.floor`"),
            args.out or Path(__file__).resolve().parent / "results" / f"results-floor-{datetime.now(UTC):%Y-%m-%d}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
