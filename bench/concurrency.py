"""Concurrency: N image builds (default 50) triggered at once vs one build alone, on one Airflow stack
(LocalExecutor on a PostgreSQL server started by the benchmark) and one local cloud with AWS-like state-change
times. Reported, not asserted: all succeed, nothing is left behind, the wall time of N against one (goal: within
2x), the worker slots held while images are pending (goal: none), the API calls per build.

``python -m bench.run concurrency [--builds 50] [--parallelism 32]`` (or ``python -m bench.concurrency``, which
writes bench/results-concurrency-<date>.md), from the project root with ``PYTHONPATH=plugins:.``.

Method (see bench/README.md):

* The local cloud emulates boot 20 s, stop 5 s, image 30 s and terminate 5 s, as bench/build.py does, and the
  builds poll every 2 s. Its front counts the builds' API calls; the benchmark's own reads go to moto
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
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import boto3

from bench import Result, Row
from localcloud.cloud import LocalCloud, free_port

PROJECT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SPEC = "shopspinner-linux-image"
REGION = "eu-west-1"
#: The same emulated state-change times and poll interval as bench/build.py.
LATENCY = {"instance_running": 20, "instance_stopped": 5, "image_available": 30, "instance_terminated": 5}
MINIMUM = LATENCY["instance_running"] + LATENCY["instance_stopped"] + LATENCY["image_available"]
POLL = 2
BUILD_TAG = "image-factory:build-id"
COMPLETE_TAG = "image-factory:complete"
#: The channels (SSM parameters) of promoted images live under it: outputs of a build, not leftovers.
CHANNEL_PREFIX = "/image-factory"
DEFAULT_BUILDS = 50
#: Airflow's own default [core] parallelism; the image_factory pool gets as many slots, so that only the
#: worker processes bound the builds, never the pool.
DEFAULT_PARALLELISM = 32
DEFAULT_TIMEOUT = 3600  # seconds the N builds may take at most (the one build: BUILD_TIMEOUT)
BUILD_TIMEOUT = 900
SAMPLE_EVERY = 0.5
TRIGGER_THREADS = 8
#: Task instance states that are not finished (the sampler reads only these).
LIVE_STATES = ("scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule", "restarting")


def _client(cloud: LocalCloud, service: str, region: str = REGION):
    """A client of moto itself (behind the counting front): the benchmark's own reads are not counted."""
    return boto3.client(service, endpoint_url=cloud.moto_endpoint, region_name=region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator


def _connect(dsn: str):
    import psycopg2

    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    return connection


# --- the specs ---------------------------------------------------------------------------------------------


def code(work: Path, ref: str | None) -> tuple[Path, dict[str, str], str]:
    """The code the stack runs: the working tree (``ref`` None), or a snapshot of ``dags/``, ``plugins/`` and
    ``include/`` at a git ref in ``work`` (so that edits made meanwhile do not change a running benchmark).
    Returns its root, the environment that points Airflow at it, and a description."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    if not ref:
        changed = git("status", "--porcelain", "--", "dags", "plugins", "include")
        return PROJECT, {}, (f"the working tree at {git('rev-parse', '--short', 'HEAD')}"
                             + (" with uncommitted changes in dags/, plugins/ or include/" if changed else ""))
    commit = git("rev-parse", "--short", f"{ref}^{{commit}}")
    root = work / "code"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(PROJECT), "archive", "--format=tar", commit, "dags", "plugins",
                              "include"], capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True, timeout=120)
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
           "PYTHONPATH": f"{root / 'plugins'}:{PROJECT}"}
    return root, env, f"commit {commit} ({ref}; dags/, plugins/ and include/ exported to {root})"


def write_specs(folder: Path, builds: int, source: Path = PROJECT) -> list[str]:
    """N copies of the spec, each with a name of its own and no schedule (unpausing starts no run)."""
    folder.mkdir(parents=True)
    text = (source / "include/specs" / f"{SPEC}.yaml").read_text()
    text = "".join(line for line in text.splitlines(keepends=True) if not line.strip().startswith("schedule:"))
    name_line = re.compile(rf"^(\s*name:\s*){re.escape(SPEC)}\s*$", re.MULTILINE)
    if len(name_line.findall(text)) != 1:
        raise RuntimeError(f"include/specs/{SPEC}.yaml: expected one `name: {SPEC}` line")
    width = len(str(builds - 1))
    names = [f"{SPEC}-{i:0{width}d}" for i in range(builds)]
    for name in names:
        (folder / f"{name}.yaml").write_text(name_line.sub(rf"\g<1>{name}", text))
    return names


# --- the sampler ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the batch was triggered
    seconds: float  # since the previous sample (what this sample stands for)
    load1: float
    states: dict[str, int]  # task instances by state (not finished ones)
    running: dict[str, int]  # running task instances by task id
    pending_builds: int  # builds whose image is pending
    held: dict[str, int]  # running task instances of builds whose image is pending, by task id
    held_by_build: dict[str, int]


@dataclass
class Sampler:
    """Images from moto and unfinished task instances from PostgreSQL, every SAMPLE_EVERY s, until stopped."""

    cloud: LocalCloud
    dsn: str
    runs: dict[tuple[str, str], str]  # (dag_id, run_id) -> build id
    started: float  # time.time() of the trigger
    deadline: float  # time.monotonic() after which it stops by itself
    samples: list[Sample] = field(default_factory=list)
    image_created: dict[str, float] = field(default_factory=dict)  # build id -> CreateImage answer, time.time()
    image_available: dict[str, float] = field(default_factory=dict)  # build id -> image shown available
    image_build: dict[str, str] = field(default_factory=dict)  # image id -> build id
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="concurrency-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        ec2 = _client(self.cloud, "ec2")
        previous = time.time()
        connection = None
        try:
            connection = _connect(self.dsn)
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                tick = time.monotonic()
                try:
                    self._sample(ec2, connection, previous)
                    previous = self.samples[-1].at + self.started
                except Exception as exc:  # a failed sample is noted, the next one tries again
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    if len(self.errors) > 100:
                        return
                    with contextlib.suppress(Exception):
                        connection.close()
                    connection = _connect(self.dsn)
                self._stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - tick)))
        except Exception as exc:
            self.errors.append(f"sampler stopped: {type(exc).__name__}: {exc}"[:300])
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()

    def _sample(self, ec2, connection, previous: float) -> None:
        # The front's record of each emulated change (its CreateImage answer, and when the image shows
        # available): no polling of moto, which would take CPU from the builds. Each new image's build is read
        # once, from its tags.
        changes = {i: c for i, c in self.cloud.stats()["changes"].items() if c["kind"] == "image_available"}
        new = [i for i in changes if i not in self.image_build]
        if new:
            for image in ec2.describe_images(ImageIds=new)["Images"]:
                tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
                self.image_build[image["ImageId"]] = tags.get(BUILD_TAG, "")
        now = time.time()
        pending: set[str] = set()
        for image_id, build in self.image_build.items():
            if not build:
                continue
            self.image_created.setdefault(build, changes[image_id]["started"])
            if now >= changes[image_id]["done"]:
                self.image_available.setdefault(build, changes[image_id]["done"])
            else:
                pending.add(build)
        with connection.cursor() as cursor:
            cursor.execute("SELECT dag_id, run_id, task_id, state FROM task_instance WHERE state = ANY(%s)",
                           (list(LIVE_STATES),))
            rows = cursor.fetchall()
        states = Counter(state for _, _, _, state in rows)
        running = Counter(task for _, _, task, state in rows if state == "running")
        held: Counter[str] = Counter()
        held_by_build: Counter[str] = Counter()
        for dag_id, run_id, task, state in rows:
            build = self.runs.get((dag_id, run_id))
            if state == "running" and build in pending:
                held[task] += 1
                held_by_build[build] += 1
        self.samples.append(Sample(now - self.started, now - previous, os.getloadavg()[0], dict(states),
                                   dict(running), len(pending), dict(held), dict(held_by_build)))


# --- the cloud's resources ---------------------------------------------------------------------------------


def inventory(cloud: LocalCloud) -> dict[str, set[str]]:
    """Every resource of the local cloud, by kind, in every region it serves (read from moto, not counted)."""
    found: dict[str, set[str]] = {}

    def add(kind: str, ids) -> None:
        found.setdefault(kind, set()).update(ids)

    for region in cloud.state().regions.split(","):
        ec2, ssm = _client(cloud, "ec2", region), _client(cloud, "ssm", region)
        reservations = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": [
            "pending", "running", "stopping", "stopped", "shutting-down"]}])["Reservations"]
        add("instance", (f"{region}/{i['InstanceId']}" for r in reservations for i in r["Instances"]))
        add("vpc", (f"{region}/{v['VpcId']}" for v in ec2.describe_vpcs()["Vpcs"]))
        add("subnet", (f"{region}/{s['SubnetId']}" for s in ec2.describe_subnets()["Subnets"]))
        add("security-group", (f"{region}/{g['GroupId']}" for g in ec2.describe_security_groups()["SecurityGroups"]))
        add("key-pair", (f"{region}/{k['KeyName']}" for k in ec2.describe_key_pairs()["KeyPairs"]))
        # (An instance's interface goes with it: the builds launch it with DeleteOnTermination.)
        add("network-interface", (f"{region}/{n['NetworkInterfaceId']}"
                                  for n in ec2.describe_network_interfaces()["NetworkInterfaces"]))
        add("volume", (f"{region}/{v['VolumeId']}" for v in ec2.describe_volumes()["Volumes"]))
        add("image", (f"{region}/{i['ImageId']}" for i in ec2.describe_images(Owners=["self"])["Images"]))
        add("snapshot", (f"{region}/{s['SnapshotId']}"
                         for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]))
        names: list[str] = []
        for page in ssm.get_paginator("describe_parameters").paginate():
            names += [p["Name"] for p in page["Parameters"]]
        # /aws/... are AWS's public parameters, which moto materializes in a region on their first read.
        add("ssm-parameter", (f"{region}/{n}" for n in names if not n.startswith("/aws/")))
    return found


def products(cloud: LocalCloud, builds: set[str]) -> tuple[set[str], set[str], set[str]]:
    """The complete images of these builds, the snapshots behind them and the channels that name them (what
    builds are meant to leave)."""
    images, snapshots, channels = set(), set(), set()
    for region in cloud.state().regions.split(","):
        ec2, ssm = _client(cloud, "ec2", region), _client(cloud, "ssm", region)
        made = set()
        for image in ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag-key", "Values": [BUILD_TAG]}])[
                "Images"]:
            tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
            if tags.get(BUILD_TAG) in builds and tags.get(COMPLETE_TAG) == "true":
                made.add(image["ImageId"])
                images.add(f"{region}/{image['ImageId']}")
                snapshots |= {f"{region}/{m['Ebs']['SnapshotId']}" for m in image.get("BlockDeviceMappings", [])
                              if m.get("Ebs", {}).get("SnapshotId")}
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=CHANNEL_PREFIX, Recursive=True):
            channels |= {f"{region}/{p['Name']}" for p in page["Parameters"] if p["Value"] in made}
    return images, snapshots, channels


def leftovers(before: dict[str, set[str]], after: dict[str, set[str]], images: set[str],
              snapshots: set[str], channels: set[str] = frozenset()) -> dict[str, list[str]]:
    """What is new in the cloud and is not a build's product, by kind."""
    kept = {"image": images, "snapshot": snapshots, "ssm-parameter": channels}
    left = {kind: sorted(ids - before.get(kind, set()) - kept.get(kind, set())) for kind, ids in after.items()}
    return {kind: ids for kind, ids in left.items() if ids}


# --- one batch of builds -----------------------------------------------------------------------------------


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
        connection = _connect(dsn)
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


# --- the whole measurement -----------------------------------------------------------------------------------


def _wait_for_dags(stack, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing = list(names)
    while time.monotonic() < deadline:
        missing = [name for name in missing if not _dag_loaded(stack, name)]
        if not missing:
            return
        time.sleep(2)
    raise RuntimeError(f"{len(missing)} DAGs not loaded after {timeout} s (e.g. {missing[:3]}); "
                       f"see {stack.home / 'dag-processor.log'}")


def _dag_loaded(stack, dag_id: str) -> bool:
    from localcloud.airflow_stack import AirflowStackError

    try:
        stack.api("GET", f"/dags/{dag_id}")
        return True
    except AirflowStackError as exc:
        if "404" in str(exc):
            return False
        raise


#: An Airflow setting as an environment variable (``--airflow-setting``).
AIRFLOW_SETTING = re.compile(r"AIRFLOW__[A-Z0-9_]+__[A-Z0-9_]+")


def airflow_setting(text: str) -> tuple[str, str]:
    """``AIRFLOW__SECTION__KEY=VALUE`` (an argparse type): a setting the benchmark's deployments get beyond
    their own, to measure what it does."""
    key, sep, value = text.partition("=")
    if not sep or not AIRFLOW_SETTING.fullmatch(key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected AIRFLOW__SECTION__KEY=VALUE")
    return key, value


def add_airflow_setting(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """The ``--airflow-setting`` option (``benchmark``: the help's prefix where a command runs several)."""
    parser.add_argument("--airflow-setting", type=airflow_setting, action="append", metavar="AIRFLOW__S__K=V",
                        help=f"{benchmark}an Airflow setting the benchmark's deployments get beyond their own "
                             "(repeat; the results then say the run was tuned and list it)")


def environment(work: Path, source: Path, code_env: dict[str, str], settings: dict[str, str]) -> dict[str, str]:
    """What the benchmark adds to the environment of every Airflow process it starts; ``settings`` last."""
    return {"AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL": str(POLL),
            "AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(work / "specs"),
            "AIRFLOW__IMAGE_FACTORY__ROLES_FOLDER": str(source / "include/roles"),
            # One DAG file makes all N DAGs: give its parse room on a loaded machine.
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300", **code_env, **settings}


@contextlib.contextmanager
def prepared(prefix: str, builds: int, ref: str | None, settings: dict[str, str]):
    """A work folder, the code measured, the local cloud up (the region built in only: the local sshd's key lookup
    asks every region at each login) and ``builds`` specs: yields (work, cloud, source, names, the environment of
    the Airflow processes, the code's description); the cloud goes down after."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    # The light machines (sshd alone as PID 1, localcloud/machines.py): 50 to 100 builders and test instances at
    # once, each booting systemd and cloud-init, are more than this 2-core machine has.
    cloud = LocalCloud(work / "local-cloud", init="sshd")
    source, code_env, code_text = code(work, ref)
    print(f"work in {work}; code: {code_text}", flush=True)
    cloud.up(regions=REGION)
    try:
        names = write_specs(work / "specs", builds, source)
        yield work, cloud, source, names, environment(work, source, code_env, settings), code_text
    finally:
        cloud.down()


def measure(builds: int = DEFAULT_BUILDS, parallelism: int = DEFAULT_PARALLELISM,
            timeout: float = DEFAULT_TIMEOUT, ref: str | None = None, workers: int = 0,
            settings: dict[str, str] | None = None) -> dict:
    """``workers`` > 0: on the Celery deployment (localcloud/deployment.py) with that many worker hosts,
    ``parallelism`` task slots in all; else on one stack with the LocalExecutor. ``settings``: Airflow settings
    beyond the deployment's own (environment variables), for the builds and the floor."""
    from bench import postgres
    from localcloud.airflow_stack import AirflowStack
    from localcloud.deployment import Deployment

    settings = dict(settings or {})
    with prepared("bench-concurrency-", builds, ref, settings) as (work, cloud, source, names, extra_env, code_text):
        cloud.configure(latency=LATENCY)
        if workers:
            deployment = Deployment(work / "deployment", cloud, port=free_port(), workers=workers,
                                    concurrency=max(1, parallelism // workers), pool_slots=parallelism,
                                    extra_env=extra_env)
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
                raw_one, one, raw_many, many = _batches(stack, cloud, pg.dsn, names, timeout, "build")
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
    _keep(work / "concurrency.json", measured, raw_one, raw_many)
    return measured


def _batches(stack, cloud: LocalCloud, dsn: str, names: list[str], timeout: float, what: str):
    """Once every DAG is loaded and unpaused: the first DAG's run alone, then a run of each at once."""
    stack.wait_until_healthy(timeout=300)
    _wait_for_dags(stack, names, timeout=600)
    with ThreadPoolExecutor(TRIGGER_THREADS) as pool:
        list(pool.map(lambda name: stack.api("PATCH", f"/dags/{name}", {"is_paused": False}), names))
    print(f"one {what} alone ({names[0]}) ...", flush=True)
    raw_one = batch(stack, cloud, dsn, names[:1], BUILD_TIMEOUT)
    one = summarize(raw_one, stack.task_logs)
    print(f"  {_brief(one)}", flush=True)
    print(f"{len(names)} {what}s at once ...", flush=True)
    raw_many = batch(stack, cloud, dsn, names, timeout)
    many = summarize(raw_many, stack.task_logs)
    print(f"  {_brief(many)}", flush=True)
    return raw_one, one, raw_many, many


def run_floor(work: Path, cloud: LocalCloud, names: list[str], parallelism: int, workers: int, timeout: float,
              extra_env: dict[str, str], source: Path) -> dict:
    """The same batches of DAGs of a build's shape whose tasks do nothing (bench/floor.py), on a deployment of
    their own (the same settings, a new database): Airflow's own time for them on this machine."""
    from bench.floor import DAG_FILE
    from localcloud.deployment import Deployment

    dags = work / "floor" / "dags"
    dags.mkdir(parents=True)
    (dags / "floor_builds.py").write_text(DAG_FILE)
    env = {**extra_env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "PYTHONPATH": f"{source / 'plugins'}:{PROJECT}"}  # (bench.floor from the project)
    with Deployment(work / "floor" / "deployment", cloud, port=free_port(), workers=workers,
                    concurrency=max(1, parallelism // workers), pool_slots=parallelism, extra_env=env) as celery:
        print(f"the floor: Celery deployment at {celery.url}", flush=True)
        raw_one, one, raw_many, many = _batches(celery.stack, cloud, celery.pg.dsn, names, timeout, "floor run")
    _keep(work / "floor.json", {"one": one, "many": many}, raw_one, raw_many)
    return {"one": one, "many": many}


def _keep(path: Path, measured: dict, *raws: dict) -> None:
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
    return (f"{s['succeeded']}/{s['n']} succeeded; all images in {_s(s['to_image_all'])}, all runs done in "
            f"{_s(s['wall_to_end'])}; max slots held in image waits {s['held_max']}; peak running "
            f"{s['running_any_max']}, deferred {s['deferred_max']}, queued {s['queued_max']}; "
            f"{s['calls_per_build']:.0f} API calls per build; load max {s['load_max']:.1f}; {s['task_starts']} "
            f"task starts, DAG file parse {_ms(s['parse_ms_median'])} median")


# --- the table ---------------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f} s"


def _ratio(peer: float | None, ours: float | None) -> str:
    return "-" if not peer or not ours else f"{peer / ours:.2f}"


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
        Row(name, f"wall time, trigger to all {n} images available", _s(many["to_image_all"]),
            _s(one["to_image_all"]), _ratio(one["to_image_all"], many["to_image_all"]),
            "-" if image_times is None else f"{n} builds took {image_times:.2f}x one (goal <= 2x)"),
        Row(name, f"wall time, trigger to all {n} runs success (teardown done)", _s(many["wall_to_end"]),
            _s(one["wall_to_end"]), _ratio(one["wall_to_end"], many["wall_to_end"]),
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
            f"{_s(many['build_queued_median'])} / {_s(many['build_queued_max'])}", _s(one["build_queued_median"]),
            "-", "from each task's queued time to its start, summed over a build's tasks (last tries)"),
        Row(name, "peak deferred / queued task instances", f"{many['deferred_max']} / {many['queued_max']}",
            f"{one['deferred_max']} / {one['queued_max']}", "-",
            "deferred: waits in the triggerer, no worker slot; queued: scheduled or queued, waiting for one"),
        Row(name, "builder resources left after all runs", str(leaked), "-", "-",
            "zero leaks" if not leaked else "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in left.items())[:300]),
        Row(name, "EC2+SSM API calls per build", f"{many['calls_per_build']:.1f}", str(one["calls_total"]),
            _ratio(one["calls_total"], many["calls_per_build"]),
            f"{many['calls_total']} calls for {n} builds (throttled: none configured)"),
        Row(name, "load average (1 min), max during the builds", f"{many['load_max']:.1f}", f"{one['load_max']:.1f}",
            "-", f"{_cpus()} CPUs"),
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
        "end: the latest `dag_run.end_date`. Code measured: "
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
        f"The {n} builds: images available from {_s(to_image[0] if to_image else None)} to "
        f"{_s(to_image[-1] if to_image else None)} (median {_s(statistics.median(to_image) if to_image else None)});"
        f" first task of a run started {_s(first[0] if first else None)} to {_s(first[-1] if first else None)} "
        f"after the trigger (median {_s(statistics.median(first) if first else None)}); at most "
        f"{many['pending_max']} images pending at once; peak running task instances {many['running_any_max']} "
        f"(parallelism {m['parallelism']}). Load average {' '.join(f'{x:.2f}' for x in many['load_before'])} "
        f"before the {n}, {' '.join(f'{x:.2f}' for x in many['load_after'])} after. One build alone: image in "
        f"{_s(one['to_image_all'])}, run done in {_s(one['wall_to_end'])}.",
        f"Task process starts (the first run of a task and each resumption after a deferral; counted in the task "
        f"logs): {many['task_starts']} for the {n} builds ({many['task_starts'] / n:.1f} per build), "
        f"{one['task_starts']} for the one build. Each start parses the DAG file (the specs folder holds {n} "
        f"specs): {_ms(many['parse_ms_median'])} median, {_ms(many['parse_ms_max'])} at most during the {n} "
        f"builds (wall time in the task process, CPU contention included), against {_ms(one['parse_ms_median'])} "
        "median for the one build.",
        *([] if not m.get("floor") or "error" in m["floor"] else [
            f"**The floor.** After the builds, the same two batches (one alone, then {n} at once) on a second "
            "Celery deployment of the same settings and a new database: a DAG per spec copy of exactly a "
            "build's tasks, dependencies, pool, setup and teardown and XCom hand-offs (`build_dag` with other "
            "task bodies: bench/floor.py), whose bodies return at once; launching and the teardown end in the "
            "triggerer and registering and testing resume after it, as in a build on this cloud, with a trigger "
            "that fires at once. No cloud call, no SSH, no emulated wait: all of its time is Airflow's "
            "(scheduler, Celery, task processes, api-server, triggerer, database). One alone: "
            f"{_s(m['floor']['one']['wall_to_end'])}; {n} at once: {_s(m['floor']['many']['wall_to_end'])}; "
            f"first task of a run started up to {_s(max(m['floor']['many']['first_start'], default=None))} "
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
               _s(many["wall_to_end"]), _s(one["wall_to_end"]), _ratio(one["wall_to_end"], many["wall_to_end"]), note)


STEPS_INTRO = ("Where the time goes: each task's median start and end over the runs, in seconds from the batch's "
               "first request, and its median time queued (from queued to the start of its last try). The time "
               "between one task's end and the next one's start is the hand-off: the scheduler's loop reaching the "
               "run, the Celery queue, a free worker slot.\n\n")


def tuned(settings: dict[str, str] | None) -> str:
    """The sentence that says which settings a run had beyond the deployment's own."""
    if not settings:
        return "Airflow settings: the deployment's own, nothing added."
    return ("**Tuned**: Airflow settings added to the deployment's own (compare with a run without them): "
            + ", ".join(f"`{key}={value}`" for key, value in settings.items()) + ".")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    m = measure(getattr(args, "builds", DEFAULT_BUILDS), getattr(args, "parallelism", DEFAULT_PARALLELISM),
                getattr(args, "concurrency_timeout", DEFAULT_TIMEOUT), getattr(args, "code", None),
                getattr(args, "workers", 0), dict(getattr(args, "airflow_setting", None) or []))
    return result(m)


def main(argv: list[str] | None = None) -> int:
    from bench.run import machine, publish, report

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
    info = machine()
    started = time.perf_counter()
    outcome = run(args)
    publish(report(info, outcome.rows, outcome.details, time.perf_counter() - started,
                   "`python -m bench.concurrency`"),
            args.out or HERE / f"results-concurrency-{datetime.now(UTC):%Y-%m-%d}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
