"""A benchmark's batches on a running Airflow (a stack or a Celery deployment): once every DAG is loaded and
unpaused, the first DAG's run alone, then a run of each DAG at once, followed to the end with the sampler; what
each batch did (:func:`summarize`), where a run's time goes (:func:`steps`), and the record kept beside the logs."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.report import ms, secs
from bench.sampler import SAMPLE_EVERY, Sample, Sampler, connect
from localcloud.cloud import LocalCloud

#: Airflow's own default [core] parallelism; the image_factory pool gets as many slots, so that only the
#: worker processes bound the builds, never the pool.
DEFAULT_PARALLELISM = 32
DEFAULT_TIMEOUT = 3600  # seconds the N runs at once may take at most (the one alone: ONE_TIMEOUT)
ONE_TIMEOUT = 900
TRIGGER_THREADS = 8


def _trigger(stack, dag_id: str) -> tuple[str, str]:
    run = stack.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {}})
    return dag_id, run["dag_run_id"]


def batch(stack, cloud: LocalCloud, dsn: str, names: list[str], timeout: float) -> dict:
    """Trigger a run of each DAG at once; follow them to the end (bounded); what happened."""
    from image_factory.build import build_id_for

    cloud.reset_stats()
    load_before = os.getloadavg()
    started_wall, started = time.time(), time.monotonic()
    deadline = started + timeout
    runs: dict[tuple[str, str], str] = {}
    sampler = Sampler(cloud, dsn, runs, started_wall, deadline + 60)
    sampler.start()
    try:
        with ThreadPoolExecutor(min(TRIGGER_THREADS, len(names))) as pool:
            for dag_id, run_id in pool.map(lambda name: _trigger(stack, name), names):
                runs[(dag_id, run_id)] = build_id_for(dag_id, run_id)  # the sampler reads it as it grows
        triggered = time.monotonic() - started
        print(f"  {len(names)} runs triggered in {triggered:.1f} s", flush=True)
        connection = connect(dsn)
        try:
            states: dict[tuple[str, str], tuple] = {}
            done: list[tuple[str, str]] = []
            last_report = 0.0
            while time.monotonic() < deadline:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT dag_id, run_id, state, start_date, end_date FROM dag_run "
                                   "WHERE run_id = ANY(%s)", ([run_id for _, run_id in runs],))
                    states = {(d, r): (s, start, end) for d, r, s, start, end in cursor.fetchall()
                              if (d, r) in runs}
                done = [k for k, (s, _, _) in states.items() if s in ("success", "failed")]
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    images = len(set(runs.values()) & set(sampler.image_available))
                    print(f"  {time.monotonic() - started:5.0f} s: {len(done)}/{len(runs)} runs finished, "
                          f"{images} images available, load {os.getloadavg()[0]:.1f}", flush=True)
                if len(done) == len(runs):
                    break
                time.sleep(1)
            wall = time.monotonic() - started
            with connection.cursor() as cursor:
                cursor.execute("SELECT dag_id, run_id, task_id, state, try_number, start_date, end_date, "
                               "queued_dttm FROM task_instance WHERE run_id = ANY(%s)",
                               ([run_id for _, run_id in runs],))
                tasks = [row for row in cursor.fetchall() if (row[0], row[1]) in runs]
        finally:
            connection.close()
        # A last look at the images: one that became available after the last sample is not missed.
        time.sleep(SAMPLE_EVERY * 2)
    finally:
        sampler.stop()
    calls = dict(cloud.stats()["calls"])
    return {"runs": runs, "states": states, "tasks": tasks, "wall": wall, "triggered": triggered,
            "started_wall": started_wall, "calls": calls, "samples": sampler.samples,
            "image_created": dict(sampler.image_created), "image_available": dict(sampler.image_available),
            "sampler_errors": sampler.errors, "load_before": load_before, "load_after": os.getloadavg(),
            "timed_out": len(done) < len(runs)}


def task_starts(logs: Path, runs) -> list[int]:
    """How long each task process of these runs took to parse the DAG file at its start (ms): one entry per
    start, a resumption after a deferral included (the task logs' "Worker startup parse complete" lines)."""
    parse_ms = []
    for dag_id, run_id in runs:
        for log in (logs / f"dag_id={dag_id}" / f"run_id={run_id}").glob("task_id=*/attempt=*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if "Worker startup parse complete" in line:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        parse_ms.append(int(json.loads(line)["dag_file_parse_ms"]))
    return parse_ms


def steps(tasks: list[tuple], started: float) -> dict[str, tuple[float, float, float | None]]:
    """Each task's median start, end and time queued, in seconds from the batch's first request, in the order
    they start: where a run's time goes, the hand-offs between one task's end and the next one's start included.
    A task that met the triggerer keeps the start of its first run and the queued time of its last: its time
    queued is not known (None)."""
    times: dict[str, list[tuple[float, float, float | None]]] = {}
    for _dag, _run, task, _state, _try, start, end, queued_at in tasks:
        if start is not None and end is not None:
            queued = (start - queued_at).total_seconds() if queued_at and queued_at <= start else None
            times.setdefault(task, []).append((start.timestamp() - started, end.timestamp() - started, queued))

    def median(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    medians = {task: tuple(median([t[i] for t in values]) for i in range(3)) for task, values in times.items()}
    return dict(sorted(medians.items(), key=lambda item: item[1][0]))


STEPS_INTRO = ("Where the time goes: each task's median start and end over the runs, in seconds from the batch's "
               "first request, and its median time queued (from queued to the start of its last try). The time "
               "between one task's end and the next one's start is the hand-off: the scheduler's loop reaching the "
               "run, the Celery queue, a free worker slot.\n\n")


def steps_table(batches: dict[str, dict]) -> str:
    """The median start and end of each task (``steps``) of the named batches, side by side."""
    names = list(batches)
    tasks = list(dict.fromkeys(task for b in batches.values() for task in b.get("steps", {})))
    lines = ["| task | " + " | ".join(f"{name}: start / end (queued)" for name in names) + " |",
             "|---|" + "---:|" * len(names)]
    for task in tasks:
        cells = []
        for b in batches.values():
            start, end, queued = b.get("steps", {}).get(task, (None, None, None))
            cells.append("-" if start is None else
                         f"{start:.1f} / {end:.1f} ({'-' if queued is None else f'{queued:.1f}'})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(outcome: dict, logs: Path) -> dict:
    """The figures of one batch."""
    runs, states, started = outcome["runs"], outcome["states"], outcome["started_wall"]
    builds = set(runs.values())
    succeeded = [k for k in runs if states.get(k, ("?",))[0] == "success"]
    ends = [end.timestamp() - started for (_, _, end) in states.values() if end is not None]
    to_image = sorted(outcome["image_available"][b] - started for b in builds if b in outcome["image_available"])
    first_start: dict[tuple[str, str], float] = {}
    queued: Counter[tuple[str, str]] = Counter()  # run -> seconds its tasks' last tries spent queued
    for dag_id, run_id, _task, _state, _try, start, _end, queued_at in outcome["tasks"]:
        if start is not None and queued_at is not None:
            queued[(dag_id, run_id)] += max(0.0, (start - queued_at).total_seconds())
        if start is not None:
            key = (dag_id, run_id)
            first_start[key] = min(first_start.get(key, float("inf")), start.timestamp() - started)
    problems = []
    for dag_id, run_id, task, state, tries, _start, _end, _queued in sorted(outcome["tasks"], key=lambda t: t[:5]):
        if state not in ("success", "skipped") and states.get((dag_id, run_id), ("?",))[0] != "success":
            problems.append(f"{dag_id} {task}: {state} (try {tries}); log "
                            f"{logs}/dag_id={dag_id}/run_id={run_id}/task_id={task}/attempt={tries}.log")
    retried = sorted(f"{dag_id} {task} (try {tries}, {state})" for dag_id, _r, task, state, tries, *_ in
                     outcome["tasks"] if tries and tries > 1)
    not_finished = [f"{d}: {states.get((d, r), ('not created',))[0]}" for d, r in runs
                    if states.get((d, r), ("?",))[0] not in ("success", "failed")]
    samples: list[Sample] = outcome["samples"]
    waiting = [s for s in samples if s.pending_builds]
    held_peak = max(waiting, key=lambda s: sum(s.held.values()), default=None)
    running_peak = max(waiting, key=lambda s: sum(s.running.values()), default=None)
    held_seconds: Counter[str] = Counter()  # build -> slot-seconds held while its image was pending
    streak: Counter[str] = Counter()  # build -> seconds of the current run of samples in which it holds one
    longest = 0.0
    for s in samples:
        for build, count in s.held_by_build.items():
            held_seconds[build] += count * s.seconds
        for build in list(streak):
            if build not in s.held_by_build:
                del streak[build]
        for build in s.held_by_build:
            streak[build] += s.seconds
            longest = max(longest, streak[build])
    calls_total = sum(outcome["calls"].values())
    parse_ms = task_starts(logs, runs)
    return {
        "steps": steps(outcome["tasks"], started),
        "build_queued_median": statistics.median(queued.values()) if queued else None,
        "build_queued_max": max(queued.values(), default=None),
        "task_starts": len(parse_ms),
        "parse_ms_median": statistics.median(parse_ms) if parse_ms else None,
        "parse_ms_max": max(parse_ms, default=None),
        "n": len(runs),
        "builds": sorted(builds),
        "succeeded": len(succeeded),
        "wall_to_end": max(ends) if len(ends) == len(runs) and ends else None,
        "wall": outcome["wall"],
        "to_image_all": to_image[-1] if len(to_image) == len(runs) else None,
        "to_image": to_image,
        "first_start": sorted(first_start.values()),
        "triggered": outcome["triggered"],
        "problems": problems,
        "retried": retried,
        "not_finished": not_finished,
        "timed_out": outcome["timed_out"],
        "held_peak": held_peak,
        "held_max": sum(held_peak.held.values()) if held_peak else 0,
        "held_seconds": held_seconds,
        "held_longest": longest,
        "builds_holding": sum(1 for b in builds if held_seconds.get(b, 0) > 0),
        "running_peak": running_peak,
        "running_max": sum(running_peak.running.values()) if running_peak else 0,
        "running_any_max": max((sum(s.running.values()) for s in samples), default=0),
        "deferred_max": max((s.states.get("deferred", 0) for s in samples), default=0),
        "queued_max": max((s.states.get("queued", 0) + s.states.get("scheduled", 0) for s in samples), default=0),
        "pending_max": max((s.pending_builds for s in samples), default=0),
        "load_max": max((s.load1 for s in samples), default=0.0),
        "load_before": outcome["load_before"],
        "load_after": outcome["load_after"],
        "calls": outcome["calls"],
        "calls_total": calls_total,
        "calls_per_build": calls_total / max(1, len(runs)),
        "samples": len(samples),
        "sampler_errors": outcome["sampler_errors"],
    }


def wait_for_dags(stack, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing = list(names)
    while time.monotonic() < deadline:
        missing = [name for name in missing if not dag_loaded(stack, name)]
        if not missing:
            return
        time.sleep(2)
    raise RuntimeError(f"{len(missing)} DAGs not loaded after {timeout} s (e.g. {missing[:3]}); "
                       f"see {stack.home / 'dag-processor.log'}")


def dag_loaded(stack, dag_id: str) -> bool:
    from localcloud.airflow_stack import AirflowStackError

    try:
        stack.api("GET", f"/dags/{dag_id}")
        return True
    except AirflowStackError as exc:
        if "404" in str(exc):
            return False
        raise


def one_then_many(stack, cloud: LocalCloud, dsn: str, names: list[str], timeout: float, what: str):
    """Once every DAG is loaded and unpaused: the first DAG's run alone, then a run of each at once."""
    stack.wait_until_healthy(timeout=300)
    wait_for_dags(stack, names, timeout=600)
    with ThreadPoolExecutor(TRIGGER_THREADS) as pool:
        list(pool.map(lambda name: stack.api("PATCH", f"/dags/{name}", {"is_paused": False}), names))
    print(f"one {what} alone ({names[0]}) ...", flush=True)
    raw_one = batch(stack, cloud, dsn, names[:1], ONE_TIMEOUT)
    one = summarize(raw_one, stack.task_logs)
    print(f"  {_brief(one)}", flush=True)
    print(f"{len(names)} {what}s at once ...", flush=True)
    raw_many = batch(stack, cloud, dsn, names, timeout)
    many = summarize(raw_many, stack.task_logs)
    print(f"  {_brief(many)}", flush=True)
    return raw_one, one, raw_many, many


def keep(path: Path, measured: dict, *raws: dict) -> None:
    """The figures and every sample, beside the logs, for a second look."""
    def plain(value):
        if isinstance(value, Sample):
            return value.__dict__
        if isinstance(value, (set, tuple)):
            return list(value)
        return str(value)

    document = {"summary": {k: v for k, v in measured.items() if k not in ("one", "many")},
                "batches": [{**{k: v for k, v in raw.items() if k not in ("runs", "states", "tasks")},
                             "runs": [{"dag_id": d, "run_id": r, "build_id": b} for (d, r), b in raw["runs"].items()],
                             "tasks": [list(row) for row in raw["tasks"]]} for raw in raws]}
    path.write_text(json.dumps(document, default=plain, indent=1))
    print(f"samples and figures in {path}", flush=True)


def _brief(s: dict) -> str:
    return (f"{s['succeeded']}/{s['n']} succeeded; all images in {secs(s['to_image_all'])}, all runs done in "
            f"{secs(s['wall_to_end'])}; max slots held in image waits {s['held_max']}; peak running "
            f"{s['running_any_max']}, deferred {s['deferred_max']}, queued {s['queued_max']}; "
            f"{s['calls_per_build']:.0f} API calls per build; load max {s['load_max']:.1f}; {s['task_starts']} "
            f"task starts, DAG file parse {ms(s['parse_ms_median'])} median")
