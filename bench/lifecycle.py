"""The test stage's cost: from the image available to the image promoted, against what the stage cannot do
without (the test instance's boot and the tests' own run time), under a real scheduler on the local cloud with
AWS-like state-change times, at the defaults.

``python -m bench.run lifecycle``. The goal (issue 14): the stage adds no more than 1.10x of (the test
instance's boot + the tests' own run time) to the time from trigger to a promoted image. Two builds of the
shipped spec (tests and the `latest` channel included), one after the other: the second polls on what the
first saw.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench import Result, Row
from bench.build import DAG_ID, LATENCY, REGION, _available_after, _client, _warm_up, scheduler_stack
from localcloud.cloud import LocalCloud

BUILDS = 2
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
    image_at = _available_after(cloud, summary["image_id"], started_wall)
    promoted_at = datetime.fromisoformat(tasks["promote"]["end_date"]).timestamp() - started_wall
    ec2 = _client(cloud, "ec2", direct=True)
    assert build_id_for(DAG_ID, run_id) == summary["build_id"]
    assert ec2.describe_images(ImageIds=[summary["image_id"]])["Images"]
    # The test instance's boot: the emulated one (its machine answers SSH within half a second of it). The
    # front keeps only an instance's latest change, by then its termination.
    return {"image": image_at, "promoted": promoted_at, "boot": float(LATENCY["instance_running"]),
            "tests": float(tested["seconds"]), "stage": promoted_at - image_at}


def measure(builds: int = BUILDS) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    cloud = LocalCloud(work / "local-cloud")
    cloud.up(regions=REGION)
    try:
        cloud.configure(latency=LATENCY)
        _warm_up(cloud)
        with scheduler_stack(cloud, work, poll=None, lifecycle=True) as stack:
            measured = [_one(stack, cloud) for _ in range(builds)]
    finally:
        cloud.down()
    for number, build in enumerate(measured, 1):
        print(f"  build {number}: {build}", flush=True)
    return measured


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    builds = measure()
    rows = []
    for number, build in enumerate(builds, 1):
        floor = build["boot"] + build["tests"]
        ratio = build["stage"] / floor
        rows.append(Row("lifecycle at the defaults", f"build {number}: image available to promoted",
                        f"{build['stage']:.1f} s", f"{floor:.1f} s (boot {build['boot']:.1f} + tests "
                        f"{build['tests']:.1f})", f"{ratio:.2f}",
                        f"goal: at most {GOAL:.2f}x the boot and the tests; "
                        f"{'met' if ratio <= GOAL else 'missed'}; trigger to promoted {build['promoted']:.1f} s"))
    median = statistics.median(b["stage"] / (b["boot"] + b["tests"]) for b in builds)
    details = [f"**lifecycle.** {len(builds)} builds of `{DAG_ID}` with its tests (testinfra, include/tests/"
               "appserver) and its `latest` channel, one after the other, under a real scheduler (the "
               f"build-latency stack) on the local cloud's machines with latencies {LATENCY}, at the defaults. "
               "*Image available* is read from the local cloud (CreateImage's answer plus the emulated time), "
               "*promoted* is the end of the promote task; the floor is the test instance's emulated boot "
               "(the latency cloud's boot time) plus the tests' own run time (test_image's summary). "
               f"Median ratio {median:.2f}."]
    return Result(rows, details)
