"""Concurrency: N image builds (default 50) triggered at once vs one build alone, on one Airflow stack
(LocalExecutor on a PostgreSQL server started by the benchmark) and one local cloud with AWS-like state-change
times. Reported, not asserted: all succeed, nothing is left behind, the wall time of N against one (goal: within
2x), the worker slots held while images are pending (goal: none), the API calls per build.

``python -m bench.run concurrency [--builds 50] [--parallelism 32]`` (or ``python -m bench.concurrency``, which
writes bench/results/results-concurrency-<date>.md), from the project root with ``PYTHONPATH=plugins:.``.

Method (see bench/README.md):

* The local cloud emulates boot 20 s, stop 5 s, image 30 s and terminate 5 s, as bench/build.py does, and the builds
  poll every 2 s (bench/cloud.py). Its front counts the builds' API calls; the benchmark's own reads go to moto
  directly (``LocalCloud.moto_endpoint``), so they are not counted.
* N copies of include/specs/shopspinner-linux-image.yaml, each with its own ``name`` (so its own DAG: a DAG runs
  one build at a time, ``max_active_runs=1``) and no ``schedule``, in a folder of their own
  (``[image_factory] specs_folder``). All DAGs are unpaused; no run starts until one is triggered.
* First the first DAG alone (the peer: one build on the same stack), then all N DAGs at once, each run
  created through the REST API from a few threads, as fast as the api-server answers.
* A sampler, every 0.5 s: the images of the builds, read from moto (an image is *pending* from its creation
  until the emulated 30 s have passed: the front answers ``pending`` until then), and the task instances that
  are not finished, read from PostgreSQL (``task_instance``). "Worker slots held during the image wait" is the
  number of task instances in state ``running`` (each holds one of the LocalExecutor's worker processes) of
  builds whose image is pending at that moment, by task id; the benchmark also reports all running task
  instances at moments when any image is pending, and the peaks of deferred and queued ones.
* On the Celery deployment, Airflow's floor after the builds (bench/floor.py): the same batches, on a deployment
  of their own, of DAGs of a build's shape whose tasks do nothing.
* Leaks: every resource of the cloud (instances not terminated, VPCs, subnets, security groups, key pairs,
  network interfaces, volumes, images, snapshots, SSM parameters; in every region of the local cloud) after
  all runs, against the same listing before the first build; the builds' complete images and their snapshots
  are what a build is meant to leave.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

from bench import Result, Row
from bench.airflow_settings import add_airflow_setting, tuned
from bench.batches import (
    DEFAULT_PARALLELISM,
    DEFAULT_TIMEOUT,
    STEPS_INTRO,
    TRIGGER_THREADS,
    keep,
    one_then_many,
    steps_table,
)
from bench.cloud import LATENCY, MINIMUM, POLL, inventory, leftovers, products
from bench.deployments import MACHINES, NEEDS_INIT, SPEC, celery_deployment, prepared
from bench.floor import floor_row, run_floor
from bench.report import cpus, ms, ratio, run_and_publish, secs
from bench.sampler import SAMPLE_EVERY
from localcloud.cloud import free_port

DEFAULT_BUILDS = 50


def measure(builds: int = DEFAULT_BUILDS, parallelism: int = DEFAULT_PARALLELISM,
            timeout: float = DEFAULT_TIMEOUT, ref: str | None = None, workers: int = 0,
            settings: dict[str, str] | None = None) -> dict:
    """``workers`` > 0: on the Celery deployment (localcloud/deployment.py) with that many worker hosts,
    ``parallelism`` task slots in all; else on one stack with the LocalExecutor. ``settings``: Airflow settings
    beyond the deployment's own (environment variables), for the builds and the floor."""
    from bench import postgres
    from localcloud.airflow_stack import AirflowStack

    settings = dict(settings or {})
    with prepared("bench-concurrency-", builds, ref, settings) as (work, cloud, source, names, extra_env, code_text):
        cloud.configure(latency=LATENCY)
        if workers:
            deployment = celery_deployment(work / "deployment", cloud, workers, parallelism, extra_env)
            server = contextlib.nullcontext(None)
        else:
            deployment = contextlib.nullcontext(None)
            server = postgres.server()
        with server as pg, deployment as celery:
            if celery is not None:
                pg, stack = celery.pg, celery.stack
                print(f"Celery deployment at {celery.url}: {workers} workers of {celery.concurrency} slots",
                      flush=True)
            else:
                stack = AirflowStack(work / "airflow", cloud, free_port(), database_url=pg.url,
                                     database_async_url=pg.async_url, parallelism=parallelism,
                                     pool_slots=parallelism, extra_env=extra_env)
            print(f"PostgreSQL {pg.url} (data in {pg.root}); local cloud {cloud.endpoint}, latency {LATENCY}",
                  flush=True)
            with contextlib.nullcontext() if celery is not None else stack:
                before = inventory(cloud)
                raw_one, one, raw_many, many = one_then_many(stack, cloud, pg.dsn, names, timeout, "build")
            # Listed once the stack is stopped: nothing changes the cloud any more, even after a time-out.
            after = inventory(cloud)
            kept_images, kept_snapshots, kept_channels = products(cloud, set(one["builds"]) | set(many["builds"]))
            left = leftovers(before, after, kept_images, kept_snapshots, kept_channels)
        try:
            floor = run_floor(work, cloud, names, parallelism, workers, timeout, extra_env, source) if workers else None
        except Exception as error:  # the builds' figures stand without it
            floor = {"error": f"{type(error).__name__}: {error}"}
    measured = {"one": one, "many": many, "builds": builds, "parallelism": parallelism, "work": work,
                "workers": workers, "floor": floor,
                "code": code_text, "settings": settings,
                "home": stack.home, "leaks": left,
                "kept_images": sorted(kept_images), "kept_snapshots": sorted(kept_snapshots),
                "kept_channels": sorted(kept_channels)}
    keep(work / "concurrency.json", measured, raw_one, raw_many)
    return measured


# --- the table ---------------------------------------------------------------------------------------------


def _breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{task} {n}" for task, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def result(m: dict) -> Result:
    name = "concurrency"
    one, many, n = m["one"], m["many"], m["builds"]
    left = m["leaks"]
    leaked = sum(len(ids) for ids in left.values())
    times = many["wall_to_end"] / one["wall_to_end"] if many["wall_to_end"] and one["wall_to_end"] else None
    image_times = (many["to_image_all"] / one["to_image_all"]
                   if many["to_image_all"] and one["to_image_all"] else None)
    held_s = list(many["held_seconds"].values())
    rows = [
        Row(name, f"runs succeeded ({n} at once / one alone)", f"{many['succeeded']}/{many['n']}",
            f"{one['succeeded']}/{one['n']}", "-",
            "all succeed" if many["succeeded"] == many["n"] and one["succeeded"] == one["n"]
            else f"FAILED or unfinished: {len(many['problems']) + len(one['problems'])} task problems, "
                 f"{len(many['not_finished'])} runs unfinished"),
        Row(name, f"wall time, trigger to all {n} images available", secs(many["to_image_all"]),
            secs(one["to_image_all"]), ratio(one["to_image_all"], many["to_image_all"]),
            "-" if image_times is None else f"{n} builds took {image_times:.2f}x one (goal <= 2x)"),
        Row(name, f"wall time, trigger to all {n} runs success (teardown done)", secs(many["wall_to_end"]),
            secs(one["wall_to_end"]), ratio(one["wall_to_end"], many["wall_to_end"]),
            "-" if times is None else f"{n} builds took {times:.2f}x one (goal <= 2x); emulated minimum to the "
                                      f"image {MINIMUM} s"),
        *_floor_rows(name, m),
        Row(name, "max worker slots held by builds whose image is pending", str(many["held_max"]),
            str(one["held_max"]), "-",
            f"goal 0; {many['builds_holding']} of {n} builds held one at some sample, "
            f"{max(held_s, default=0):.1f} slot-s at most per build (of {LATENCY['image_available']} s pending), "
            f"{many['held_longest']:.1f} s the longest in a row"
            + (f"; at the peak: {_breakdown(many['held_peak'].held)}" if many["held_max"] else "")),
        Row(name, "max task instances running while any image is pending", str(many["running_max"]),
            str(one["running_max"]), "-",
            f"parallelism {m['parallelism']}; at the peak: "
            + (_breakdown(many["running_peak"].running) if many["running_peak"] else "no sample")),
        Row(name, "time a build's tasks spent queued (median / max of builds)",
            f"{secs(many['build_queued_median'])} / {secs(many['build_queued_max'])}", secs(one["build_queued_median"]),
            "-", "from each task's queued time to its start, summed over a build's tasks (last tries)"),
        Row(name, "peak deferred / queued task instances", f"{many['deferred_max']} / {many['queued_max']}",
            f"{one['deferred_max']} / {one['queued_max']}", "-",
            "deferred: waits in the triggerer, no worker slot; queued: scheduled or queued, waiting for one"),
        Row(name, "builder resources left after all runs", str(leaked), "-", "-",
            "zero leaks" if not leaked else "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in left.items())[:300]),
        Row(name, "EC2+SSM API calls per build", f"{many['calls_per_build']:.1f}", str(one["calls_total"]),
            ratio(one["calls_total"], many["calls_per_build"]),
            f"{many['calls_total']} calls for {n} builds (throttled: none configured)"),
        Row(name, "load average (1 min), max during the builds", f"{many['load_max']:.1f}", f"{one['load_max']:.1f}",
            "-", f"{cpus()} CPUs"),
    ]
    actions = sorted(set(one["calls"]) | set(many["calls"]))
    lines = [f"| API call | one build | {n} builds | per build of {n} |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {one['calls'].get(a, 0)} | {many['calls'].get(a, 0)} | {many['calls'].get(a, 0) / n:.1f} |"
              for a in actions]
    to_image = many["to_image"]
    first = many["first_start"]
    workers = m.get("workers") or 0
    stack = (f"the Celery deployment (localcloud/deployment.py: scheduler, dag-processor, triggerer and "
             f"api-server on this host, {workers} Celery workers each in a network namespace of its own, "
             f"{m['parallelism'] // workers} task slots each; Redis and PostgreSQL from Debian's packages; pool "
             f"`image_factory` {m['parallelism']} slots, so only the workers bound the builds)" if workers else
             f"AirflowStack (scheduler, dag-processor, triggerer, api-server) with the LocalExecutor (`[core] "
             f"parallelism` {m['parallelism']}: that many worker processes; pool `image_factory` "
             f"{m['parallelism']} slots, so only the workers bound the builds) on a PostgreSQL server the "
             "benchmark starts (bench/postgres.py: Debian's binaries, a temporary data directory, 127.0.0.1 "
             "only, Airflow's default pools of connections)")
    details = [
        f"**concurrency.** {n} `{SPEC}` builds triggered at once against one build alone, on the same stack "
        f"and the same local cloud in the same run: {stack}. The local cloud emulates "
        f"boot {LATENCY['instance_running']} s, stop {LATENCY['instance_stopped']} s, image "
        f"{LATENCY['image_available']} s and terminate {LATENCY['instance_terminated']} s ({MINIMUM} s to an "
        f"image at the least), builds poll every {POLL} s. Each build is a DAG of its own (a copy of the spec "
        "with another `name` and no schedule; a DAG runs one build at a time), all unpaused beforehand; the "
        f"one build alone is the first DAG's, run before the {n}. The {n} runs are created through the REST API "
        f"from {TRIGGER_THREADS} threads (took {many['triggered']:.1f} s); times run from the first request. "
        "Time to the images: when the local cloud's front shows each build's image available (its CreateImage "
        "answer plus the emulated image time, as in build-latency: whatever the build's polling); time to the "
        f"end: the latest `dag_run.end_date`. Machines: {MACHINES}; the image tests are the spec's but those of "
        f"a running service ({', '.join(NEEDS_INIT)}). Code measured: "
        f"{m['code']}. {tuned(m.get('settings'))}",
        f"Worker slots during the image wait: every {SAMPLE_EVERY} s ({many['samples']} samples for the {n} "
        "builds) the benchmark reads the front's record of the images (`/_localcloud/stats`, no call to moto but one "
        "DescribeImages per new image for its build tag, not counted) and the unfinished task instances from "
        "PostgreSQL. An image is counted as pending from its CreateImage answer until the emulated "
        f"{LATENCY['image_available']} s are over, which is when the front stops answering `pending`; a task "
        "instance `running` holds one worker slot (a LocalExecutor process, or a Celery worker's). The row "
        "counts the running task instances of the builds whose image is pending at that sample (a build whose "
        "triggerer makes the image and waits for it holds none; a task that called `CreateImage` itself would "
        "show until its deferral took effect). The next row counts all running task "
        "instances (of any build) at moments when at least one image is pending: other builds' steps that "
        "do work (SSH, the role, API calls), not waits.",
        f"The {n} builds: images available from {secs(to_image[0] if to_image else None)} to "
        f"{secs(to_image[-1] if to_image else None)} "
        f"(median {secs(statistics.median(to_image) if to_image else None)});"
        f" first task of a run started {secs(first[0] if first else None)} to {secs(first[-1] if first else None)} "
        f"after the trigger (median {secs(statistics.median(first) if first else None)}); at most "
        f"{many['pending_max']} images pending at once; peak running task instances {many['running_any_max']} "
        f"(parallelism {m['parallelism']}). Load average {' '.join(f'{x:.2f}' for x in many['load_before'])} "
        f"before the {n}, {' '.join(f'{x:.2f}' for x in many['load_after'])} after. One build alone: image in "
        f"{secs(one['to_image_all'])}, run done in {secs(one['wall_to_end'])}.",
        f"Task process starts (the first run of a task and each resumption after a deferral; counted in the task "
        f"logs): {many['task_starts']} for the {n} builds ({many['task_starts'] / n:.1f} per build), "
        f"{one['task_starts']} for the one build. Each start parses the DAG file (the specs folder holds {n} "
        f"specs): {ms(many['parse_ms_median'])} median, {ms(many['parse_ms_max'])} at most during the {n} "
        f"builds (wall time in the task process, CPU contention included), against {ms(one['parse_ms_median'])} "
        "median for the one build.",
        *([] if not m.get("floor") or "error" in m["floor"] else [
            f"**The floor.** After the builds, the same two batches (one alone, then {n} at once) on a second "
            "Celery deployment of the same settings and a new database: a DAG per spec copy of exactly a "
            "build's tasks, dependencies, pool, setup and teardown and XCom hand-offs (`build_dag` with other "
            "task bodies: bench/floor_dags.py), whose bodies return at once; launching and the teardown end in the "
            "triggerer and registering and testing resume after it, as in a build on this cloud, with a trigger "
            "that fires at once. No cloud call, no SSH, no emulated wait: all of its time is Airflow's "
            "(scheduler, Celery, task processes, api-server, triggerer, database). One alone: "
            f"{secs(m['floor']['one']['wall_to_end'])}; {n} at once: {secs(m['floor']['many']['wall_to_end'])}; "
            f"first task of a run started up to {secs(max(m['floor']['many']['first_start'], default=None))} "
            "after the trigger."]),
        STEPS_INTRO + steps_table({f"{n} builds": many, **({f"{n} floor runs": m["floor"]["many"]}
                                                          if m.get("floor") and "error" not in m["floor"] else {}),
                                   "one build": one}),
        "Leaks: every resource of the local cloud (instances not terminated, VPCs, subnets, security groups, key "
        "pairs, network interfaces, volumes, images, snapshots, SSM parameters; all its regions), read from moto "
        "after all runs, against the same listing before the first build; the builds' complete images "
        f"({len(m['kept_images'])}), their snapshots ({len(m['kept_snapshots'])}) and the channels naming them "
        f"({len(m.get('kept_channels', []))}) are what a build leaves on purpose. "
        + ("Nothing else was left." if not leaked
           else "Left: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in left.items()))
        + " Not counted: AWS's public SSM parameters (`/aws/...`), which moto materializes on their first read.",
        "API calls by action (counted by the local cloud's front, reset before each batch; the triggerer's "
        "polls of deferred waits included):\n\n" + "\n".join(lines),
    ]
    problems = one["problems"] + many["problems"]
    if problems or many["not_finished"] or one["not_finished"]:
        details.append("Problems (logs under the stack home " + str(m["home"]) + "):\n\n"
                       + "\n".join(f"- {p}" for p in (problems + many["not_finished"] + one["not_finished"])[:60]))
    retried = one["retried"] + many["retried"]
    details.append(f"Task tries beyond the first (transient errors retried by Airflow): {len(retried)}"
                   + (": " + ", ".join(retried[:40]) if retried else "."))
    errors = one["sampler_errors"] + many["sampler_errors"]
    if errors:
        details.append(f"The sampler missed {len(errors)} samples, e.g.: {errors[0]}")
    return Result(rows, details)


def _floor_rows(name: str, m: dict) -> list[Row]:
    """Airflow's own time for the same DAG shape, beside the builds' (bench/floor.py)."""
    if not m.get("floor"):
        return []
    if "error" in m["floor"]:
        return [Row(name, "the floor (DAGs of a build's shape whose tasks do nothing)", "-", "-", "-",
                    f"not measured: {m['floor']['error'][:200]}")]
    return [floor_row(name, m["floor"], m["builds"], builds=m)]


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    m = measure(getattr(args, "builds", DEFAULT_BUILDS), getattr(args, "parallelism", DEFAULT_PARALLELISM),
                getattr(args, "concurrency_timeout", DEFAULT_TIMEOUT), getattr(args, "code", None),
                getattr(args, "workers", 0), dict(getattr(args, "airflow_setting", None) or []))
    return result(m)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=DEFAULT_BUILDS)
    parser.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM)
    parser.add_argument("--concurrency-timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--code", default=None, metavar="GIT_REF",
                        help="run dags/, plugins/ and include/ as of this git ref (default: the working tree)")
    parser.add_argument("--workers", type=int, default=0,
                        help="on the Celery deployment with this many worker hosts (100 builds: --builds 100 "
                             "--workers 2); 0, the default: one stack with the LocalExecutor")
    add_airflow_setting(parser, "")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    run_and_publish(lambda: run(args), "`python -m bench.concurrency`", args.out, "concurrency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
