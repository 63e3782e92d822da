"""Faults injected into real builds (fail points, see plugins/image_factory/faults.py).

Permanent faults just before and just after each step's cloud side effect must end the run failed with
nothing left behind; transient faults at every step must be retried without creating anything twice.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import cycle

import pytest

from image_factory.build import build_id_for
from image_factory.inventory import builder_resources
from image_factory.steps.image import find as find_images
from localcloud.runner import airflow_env, migrate, run_dag

DAG = "shopspinner-linux-image"
#: Each step's fail points, around its cloud side effect (or, for SSH and the role, around the remote action).
PERMANENT_FAULTS = [
    "before:origin", "after:origin",
    "before:infrastructure", "after:subnet", "after:security-group", "after:key-parameter",
    "after:key-pair", "after:infrastructure",
    "before:launch", "after:launch",
    "before:ssh", "after:ssh",
    "before:configure", "after:configure",
    "before:register", "after:register",
]
#: One fault after the side effect of every step (two in step 2, which makes several resources).
TRANSIENT_FAULTS = [
    "after:origin", "after:subnet", "after:key-pair", "after:launch", "after:ssh", "after:configure",
    "after:register", "before:teardown",
]
PARALLEL_RUNS = 3


@pytest.fixture(scope="module")
def airflow_homes(local_cloud, tmp_path_factory):
    homes = [tmp_path_factory.mktemp(f"airflow-{i}") for i in range(PARALLEL_RUNS)]
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        list(pool.map(lambda home: migrate(airflow_env(local_cloud, home)), homes))
    return homes


def test_fault_matrix_every_run_fails_and_leaves_nothing(local_cloud, airflow_homes, ec2, ssm):
    def run(point_and_home):
        point, home = point_and_home
        env = airflow_env(local_cloud, home, retry_delay="1")
        env["IMAGE_FACTORY_FAULTS"] = point
        return point, run_dag(DAG, env)

    # One Airflow home per concurrent run: each `dags test` has its own SQLite database.
    jobs = list(zip(PERMANENT_FAULTS, cycle(airflow_homes), strict=False))
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        results = list(pool.map(run, jobs))

    problems, leaked, images_left = [], 0, 0
    for point, result in results:
        build_id = build_id_for(DAG, result.run_id) if result.run_id else "?"
        left = builder_resources(ec2, ssm, build_id) if result.run_id else []
        images = find_images(ec2, build_id) if result.run_id else []
        leaked += len(left)
        images_left += len(images)
        if result.state != "failed":
            problems.append(f"{point}: run ended {result.state or 'without a state'}")
        if f"fault injected at {point}" not in result.output:
            problems.append(f"{point}: the fault never fired")
        if "transient fault" in result.output or "up_for_retry" in result.output:
            problems.append(f"{point}: a permanent fault was retried")
        if left or images:
            problems.append(f"{point}: left {left} and images {[i['ImageId'] for i in images]}")
    print(f"\nfault matrix: {len(results)} faults injected, {leaked} builder resources leaked, "
          f"{images_left} images left")
    assert problems == []
    assert len(results) == len(PERMANENT_FAULTS)


def test_transient_faults_at_every_step_are_retried_and_create_everything_once(
        local_cloud, airflow_homes, ec2, ssm, tmp_path):
    # The setup meets four of these faults (origin, subnet, key pair, launch), one per try: five tries.
    # (The local cloud gives builds a builder VPC, as a deployment's builder_vpc_id does: no VPC of their own.)
    env = airflow_env(local_cloud, airflow_homes[0], retry_delay="1", retries="4")
    env["IMAGE_FACTORY_FAULTS"] = ",".join(f"{point}*once" for point in TRANSIENT_FAULTS)
    env["IMAGE_FACTORY_FAULTS_STATE"] = str(tmp_path)
    local_cloud.reset_stats()

    result = run_dag(DAG, env)

    assert result.succeeded, result.output[-5000:]
    for point in TRANSIENT_FAULTS:
        assert f"transient fault injected at {point}" in result.output
    calls = local_cloud.stats()["calls"]
    # (S3's PutObject left out: the first step's write check of the SBOMs' bucket on each try, and the SBOM, are
    # objects written again in place, not resources made.)
    creates = {action: count for action, count in calls.items()
               if action.split(":")[1].startswith(("Create", "Import", "Run", "Put"))
               and action != "ec2:CreateTags" and not action.startswith("s3:")}
    # Two instances (the builder, the image's test instance) and two parameters (the key, the channel).
    assert creates == {"ec2:CreateSubnet": 1, "ec2:CreateSecurityGroup": 1,
                       "ec2:ImportKeyPair": 1, "ssm:PutParameter": 2, "ec2:RunInstances": 2,
                       "ec2:CreateImage": 1}
    build_id = build_id_for(DAG, result.run_id)
    assert [i["State"] for i in find_images(ec2, build_id)] == ["available"]
    assert builder_resources(ec2, ssm, build_id) == []


def test_builds_succeed_when_the_api_throttles(local_cloud, airflow_homes, ec2, ssm):
    local_cloud.reset_stats()
    local_cloud.configure(throttle_rate=0.25, throttle_seed=7)
    try:
        result = run_dag(DAG, airflow_env(local_cloud, airflow_homes[1], retry_delay="1"))
    finally:
        local_cloud.configure(throttle_rate=0)
    stats = local_cloud.stats()
    throttled = sum(stats["throttled"].values())
    print(f"\nthrottled build: {throttled} of {throttled + sum(stats['calls'].values())} API calls answered "
          "with a throttling error")
    assert result.succeeded, result.output[-5000:]
    assert throttled >= 5
    build_id = build_id_for(DAG, result.run_id)
    assert [i["State"] for i in find_images(ec2, build_id)] == ["available"]
    assert builder_resources(ec2, ssm, build_id) == []
