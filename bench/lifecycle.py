"""The test stage's cost: from the image available to the image promoted, against what the stage cannot do
without (the test instance's boot and the tests' own run time), under a real scheduler on the local cloud with
AWS-like state-change times, at the defaults.

``python -m bench.run lifecycle``. The goal (issue 14): the stage adds no more than 1.10x of (the test
instance's boot + the tests' own run time) to the time from trigger to a promoted image: measured from
test_image's start to promote's start. Three builds of the shipped spec (tests and the `latest` channel
included), one after the other: the later ones poll on what the earlier ones saw.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime

from bench import Result, Row, process_cpu_seconds
from bench.build import DAG_ID, scheduler_stack
from bench.cloud import LATENCY, available_after, client, fresh_cloud, warm_up
from localcloud.airflow_stack import SHARED_SETTINGS
from localcloud.cloud import LocalCloud

BUILDS = 3
#: Seconds the idle scheduler's CPU is measured over, after the builds.
IDLE_SECONDS = 20
GOAL = 1.10
BUILD_TIMEOUT = 900


def _one(stack, cloud: LocalCloud) -> dict:
    from image_factory.build import build_id_for

    cloud.reset_stats()
    started_wall = time.time()
    run_id = stack.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]
    deadline = time.monotonic() + BUILD_TIMEOUT
    while time.monotonic() < deadline:
        state = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    tasks = {t["task_id"]: t for t in stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[
        "task_instances"]}
    if state != "success":
        raise RuntimeError(f"the build did not succeed: {({k: t['state'] for k, t in tasks.items()})}")
    summary = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/register_image/xcomEntries/"
                               "return_value")["value"]
    tested = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/test_image/xcomEntries/"
                              "return_value")["value"]
    image_at = available_after(cloud, summary["image_id"], started_wall)
    promoted_at = _at(tasks["promote"]["end_date"]) - started_wall
    ec2 = client(cloud, "ec2")
    assert build_id_for(DAG_ID, run_id) == summary["build_id"]
    assert ec2.describe_images(ImageIds=[summary["image_id"]])["Images"]
    # The test instance's boot: the emulated one (its machine answers SSH within half a second of it). The
    # front keeps only an instance's latest change, by then its termination.
    steps = {name: (round(_at(t["start_date"]) - started_wall, 1), round(_at(t["end_date"]) - started_wall, 1))
             for name, t in tasks.items() if t["start_date"] and t["end_date"]}
    # What the stage adds: test_image's own span and the hand-off from it to promote. (The hand-off into it
    # stands for the one from register_image to promote that a build without the stage would have.)
    added = _at(tasks["promote"]["start_date"]) - _at(tasks["test_image"]["start_date"])
    return {"image": image_at, "promoted": promoted_at, "boot": float(LATENCY["instance_running"]),
            "tests": float(tested["seconds"]), "stage": promoted_at - image_at, "added": added, "steps": steps}


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def measure(builds: int = BUILDS) -> tuple[list[dict], float]:
    with fresh_cloud("bench-lifecycle-") as (work, cloud):
        cloud.configure(latency=LATENCY)
        warm_up(cloud)
        with scheduler_stack(cloud, work, poll=None, lifecycle=True) as stack:
            measured = [_one(stack, cloud) for _ in range(builds)]
            idle = _idle_cpu(stack.component("scheduler").process.pid)
    for number, build in enumerate(measured, 1):
        print(f"  build {number}: {build}", flush=True)
    print(f"  idle scheduler: {idle:.1%} of a CPU", flush=True)
    return measured, idle


def _idle_cpu(pid: int, seconds: float = IDLE_SECONDS) -> float:
    """The share of one CPU a process used over ``seconds`` (the scheduler once the builds are over: what
    its idle loop costs at the stack's scheduler_idle_sleep_time)."""
    before, started = process_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (process_cpu_seconds(pid) - before) / (time.monotonic() - started)


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    builds, idle = measure()
    rows = []
    for number, build in enumerate(builds, 1):
        floor = build["boot"] + build["tests"]
        shown = f"{floor:.1f} s (boot {build['boot']:.1f} + tests {build['tests']:.1f})"
        ratio = build["added"] / floor
        rows.append(Row("lifecycle at the defaults", f"build {number}: what the test stage adds (test_image's "
                        "start to promote's start)", f"{build['added']:.1f} s", shown, f"{ratio:.2f}",
                        f"goal: at most {GOAL:.2f}x the boot and the tests; {'met' if ratio <= GOAL else 'missed'}"))
        rows.append(Row("lifecycle at the defaults", f"build {number}: image available to promoted",
                        f"{build['stage']:.1f} s", shown, f"{build['stage'] / floor:.2f}",
                        f"trigger to promoted {build['promoted']:.1f} s"))
    median = statistics.median(b["added"] / (b["boot"] + b["tests"]) for b in builds)
    steps = "; ".join(f"build {number}: " + ", ".join(f"{name} {start:.1f}-{end:.1f} s" for name, (start, end) in
                                                       sorted(build["steps"].items(), key=lambda item: item[1]))
                      for number, build in enumerate(builds, 1))
    details = [f"**lifecycle.** {len(builds)} builds of `{DAG_ID}` with its tests (testinfra, include/tests/"
               "appserver) and its `latest` channel, one after the other, under a real scheduler (the "
               f"build-latency stack) on the local cloud's machines with latencies {LATENCY}, at the defaults. "
               "The floor is what the test stage cannot do without: the test instance's emulated boot (the "
               "latency cloud's boot time) plus the tests' own run time (test_image's summary). *What the test "
               "stage adds* to the time from trigger to a promoted image: from test_image's start to promote's "
               "start (test_image's own span, and the hand-off from it to promote; the hand-off into test_image "
               "stands for the one from register_image to promote a build without the stage would have). "
               f"Median ratio {median:.2f} (goal {GOAL:.2f}). *Image available to promoted* adds what is not the "
               "test stage's: register_image's resumption after the image wait (it marks the image complete) "
               "and the promote task. *Image available* is read from the local cloud (CreateImage's answer plus "
               "the emulated time), *promoted* is the end of the promote task. The scheduler, idle after the "
               f"builds ({IDLE_SECONDS} s), used {idle:.1%} of a CPU (its `scheduler_idle_sleep_time` is "
               f"{SHARED_SETTINGS['AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME']} s). Tasks, seconds after the "
               "trigger "
               f"(start-end, from the REST API): {steps}."]
    return Result(rows, details)
