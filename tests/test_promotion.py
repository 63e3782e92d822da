"""Promotion under a real scheduler (localcloud/airflow_stack.py: api-server, scheduler, dag-processor,
triggerer, LocalExecutor) on the local cloud's machines: images built on images, and a person's approval.

The base spec (shopspinner-linux-image) promotes `latest`; the layered example (shopspinner-webapp-image) is
built on that channel and moves its own `production` only once a person approves. Promoting the base starts
the layered spec's run from the asset event, and that run builds on the new base image. Its approval waits
in `awaiting_input` with no task running; approving through the REST API (PATCH .../hitlDetails) moves
`production`, rejecting does not.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from image_factory.build import TAG_ORIGIN, TAG_ORIGIN_BUILD, TAG_ORIGIN_SPEC, build_id_for, tag_dict
from image_factory.inventory import builder_resources
from image_factory.steps.image import find as find_images
from localcloud.airflow_stack import AirflowStack
from localcloud.cloud import free_port

PROJECT = Path(__file__).resolve().parents[1]
BASE, LAYERED = "shopspinner-linux-image", "shopspinner-webapp-image"
RUN_TIMEOUT = 300
#: Seconds between a question and a person's answer.
PERSON_READS = 3


def without_schedule(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.strip().startswith("schedule:"))


@pytest.fixture(scope="module")
def stack(local_cloud, tmp_path_factory, ssm):
    specs = tmp_path_factory.mktemp("promotion-specs")
    (specs / f"{BASE}.yaml").write_text(without_schedule((PROJECT / "include/specs" / f"{BASE}.yaml").read_text()))
    (specs / f"{LAYERED}.yaml").write_text((PROJECT / "include/examples" / f"{LAYERED}.yaml").read_text())
    stack = AirflowStack(tmp_path_factory.mktemp("promotion") / "home", local_cloud, free_port(),
                         extra_env={"AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(specs)})
    stack.start()
    try:
        stack.wait_until_healthy(timeout=300)
        for dag_id in (BASE, LAYERED):
            stack.wait_for_dag(dag_id, timeout=180)
            stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        yield stack
    finally:
        stack.stop()
        for name in (f"/image-factory/{BASE}/latest", f"/image-factory/{LAYERED}/latest",
                     f"/image-factory/{LAYERED}/production"):
            with contextlib.suppress(ssm.exceptions.ParameterNotFound):
                ssm.delete_parameter(Name=name)


def task_states(stack: AirflowStack, dag_id: str, run_id: str) -> dict[str, str]:
    tasks = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {t["task_id"]: t["state"] for t in tasks}


def wait_until(condition, timeout: float = RUN_TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s")


def run_state(stack, dag_id, run_id) -> str | None:
    state = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
    return state if state in ("success", "failed") else None


def awaiting_approval(stack, run_id) -> bool:
    return task_states(stack, LAYERED, run_id).get("approve_promotion") == "awaiting_input"


def answer(stack, run_id: str, option: str) -> dict:
    return stack.api("PATCH", f"/dags/{LAYERED}/dagRuns/{run_id}/taskInstances/approve_promotion/-1/hitlDetails",
                     {"chosen_options": [option], "params_input": {}})


def channel(ssm, spec: str, name: str) -> str | None:
    try:
        return ssm.get_parameter(Name=f"/image-factory/{spec}/{name}")["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None


def test_promoting_the_base_rebuilds_the_layered_image_which_waits_for_an_approval(stack, ec2, ssm):
    base_run = stack.api("POST", f"/dags/{BASE}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]
    assert wait_until(lambda: run_state(stack, BASE, base_run), what="the base build") == "success", \
        task_states(stack, BASE, base_run)
    base_image = channel(ssm, BASE, "latest")
    assert base_image == find_images(ec2, build_id_for(BASE, base_run))[0]["ImageId"]

    # The promotion's asset event starts the layered spec's run: no trigger, no polling.
    runs = wait_until(lambda: stack.api("GET", f"/dags/{LAYERED}/dagRuns")["dag_runs"], timeout=120,
                      what="the layered run, started by the base's promotion")
    [layered] = runs
    assert layered["run_type"] == "asset_triggered"
    run_id = layered["dag_run_id"]
    wait_until(lambda: awaiting_approval(stack, run_id) or run_state(stack, LAYERED, run_id),
               what="the approval")
    states = task_states(stack, LAYERED, run_id)
    assert states["approve_promotion"] == "awaiting_input", states
    # Waiting for a person holds no worker slot: no task of the run is running or queued meanwhile.
    wait_until(lambda: task_states(stack, LAYERED, run_id)["tear_down"] == "success", what="the teardown")
    assert not {s for t, s in task_states(stack, LAYERED, run_id).items() if s in ("running", "queued")}
    build_id = build_id_for(LAYERED, run_id)
    [image] = find_images(ec2, build_id)
    tags = tag_dict(image["Tags"])
    # Built on the new base image, and its lineage names the base's own spec and build.
    assert tags[TAG_ORIGIN] == base_image
    assert (tags[TAG_ORIGIN_SPEC], tags[TAG_ORIGIN_BUILD]) == (BASE, build_id_for(BASE, base_run))
    assert channel(ssm, LAYERED, "latest") == image["ImageId"]
    assert channel(ssm, LAYERED, "production") is None  # not before a person approves
    assert builder_resources(ec2, ssm, build_id) == []
    details = stack.api("GET", f"/dags/{LAYERED}/dagRuns/{run_id}/taskInstances/approve_promotion/-1/hitlDetails")
    assert image["ImageId"] in details["body"] and "tests" in details["body"] and base_image in details["body"]

    answer(stack, run_id, "Approve")
    assert wait_until(lambda: run_state(stack, LAYERED, run_id), what="the approved run") == "success"
    assert task_states(stack, LAYERED, run_id)["promote_approved"] == "success"
    assert channel(ssm, LAYERED, "production") == image["ImageId"]


def test_a_rejected_promotion_moves_nothing(stack, ec2, ssm):
    production = channel(ssm, LAYERED, "production")
    run_id = stack.api("POST", f"/dags/{LAYERED}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]
    wait_until(lambda: awaiting_approval(stack, run_id) or run_state(stack, LAYERED, run_id), what="the approval")
    # A person answers after reading the question. (An answer within a fraction of a second of the task's
    # pause can land before the scheduler has seen the pausing process end: Airflow 3.3.2 then retries the
    # task, which asks again; README, *Approvals*.)
    time.sleep(PERSON_READS)
    answer(stack, run_id, "Reject")
    wait_until(lambda: run_state(stack, LAYERED, run_id), what="the rejected run")
    states = task_states(stack, LAYERED, run_id)
    assert states["approve_promotion"] == "success" and states["promote_approved"] == "skipped", states
    new_image = find_images(ec2, build_id_for(LAYERED, run_id))[0]["ImageId"]
    assert channel(ssm, LAYERED, "latest") == new_image  # tested: latest moved
    assert channel(ssm, LAYERED, "production") == production  # not approved: production did not
