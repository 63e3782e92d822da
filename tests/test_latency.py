"""The local cloud's emulated state-change times (localcloud/proxy.py), and a real build that waits them out.

moto changes states at once; the front shows an instance ``pending`` / ``stopping`` / ``shutting-down`` and an
image ``pending`` until the configured seconds have passed since RunInstances / StopInstances /
TerminateInstances / CreateImage was answered.
"""

from __future__ import annotations

import re
import time

import pytest

from image_factory.build import build_id_for
from image_factory.inventory import builder_resources
from localcloud.cloud import LocalCloudError, parse_latency
from localcloud.runner import airflow_env, migrate, run_dag

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
DELAY = 3.0
OFF = {"instance_running": 0, "instance_stopped": 0, "image_available": 0, "instance_terminated": 0}


def instance_state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def image_state(ec2, image_id: str) -> str:
    return ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"]


def wait_for(read, expected: str, timeout: float) -> float:
    """Seconds until ``read()`` returns ``expected``, polled every 0.25 s for at most ``timeout`` s."""
    started = time.monotonic()
    for _ in range(int(timeout / 0.25) + 1):
        if read() == expected:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not {expected} after {timeout} s: {read()}")


def test_latency_names_parse():
    assert parse_latency("boot=20,stop=5,image=30,terminate=5") == {
        "instance_running": 20, "instance_stopped": 5, "image_available": 30, "instance_terminated": 5}
    assert parse_latency("instance_running=1.5") == {"instance_running": 1.5}
    with pytest.raises(LocalCloudError):
        parse_latency("reboot=3")


def test_bad_latency_settings_are_refused(local_cloud):
    with pytest.raises(LocalCloudError):
        local_cloud.configure(latency={"instance_exploded": 1})
    with pytest.raises(LocalCloudError):
        local_cloud.configure(latency={"instance_running": -1})


def test_states_change_after_the_configured_delays(local_cloud, ec2, ssm):
    ami = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    config = local_cloud.configure(latency={key: DELAY for key in OFF})
    assert config["latency"] == {key: DELAY for key in OFF}
    try:
        instance_id = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        assert instance_state(ec2, instance_id) == "pending"
        status = ec2.describe_instance_status(InstanceIds=[instance_id], IncludeAllInstances=True)
        assert status["InstanceStatuses"][0]["InstanceState"] == {"Code": 0, "Name": "pending"}
        assert 1.5 < wait_for(lambda: instance_state(ec2, instance_id), "running", DELAY + 5) <= DELAY + 1

        stopped_at = time.monotonic()
        ec2.stop_instances(InstanceIds=[instance_id])
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]
        assert state == {"Code": 64, "Name": "stopping"}
        image_id = ec2.create_image(InstanceId=instance_id, Name="latency-test")["ImageId"]
        assert image_state(ec2, image_id) == "pending"
        change = local_cloud.stats()["changes"][image_id]  # when it shows done, for benchmarks
        assert change["kind"] == "image_available" and change["done"] - change["started"] == DELAY
        assert abs(change["started"] - time.time()) < 2
        time.sleep(DELAY * 0.6)
        ec2.stop_instances(InstanceIds=[instance_id])  # as on AWS, stopping it again does not start over
        wait_for(lambda: instance_state(ec2, instance_id), "stopped", DELAY + 5)
        assert time.monotonic() - stopped_at <= DELAY + 1
        assert wait_for(lambda: image_state(ec2, image_id), "available", DELAY + 5) <= DELAY + 1

        ec2.terminate_instances(InstanceIds=[instance_id])
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]
        assert state == {"Code": 32, "Name": "shutting-down"}
        assert wait_for(lambda: instance_state(ec2, instance_id), "terminated", DELAY + 5) <= DELAY + 1
        ec2.deregister_image(ImageId=image_id)
    finally:
        local_cloud.configure(latency=OFF)
    assert "latency" not in local_cloud.configure()


def test_a_build_defers_its_waits_and_leaves_nothing(local_cloud, ec2, ssm, tmp_path):
    env = airflow_env(local_cloud, tmp_path / "airflow")
    migrate(env)
    local_cloud.configure(latency={"instance_running": 4, "image_available": 4})
    try:
        result = run_dag("shopspinner-linux-image", env)
    finally:
        local_cloud.configure(latency=OFF)
    assert result.succeeded, result.output[-5000:]
    logs = "".join(result.task_logs.values())
    assert "waiting for instance running i-" in logs, logs[-5000:]
    # The stop, the image's creation and its wait: one deferral.
    assert re.search(r"waiting for instance stopped i-\w+, then image available without holding a worker slot "
                     r"\(deferred to the triggerer; polls ", logs), logs[-5000:]
    build_id = build_id_for("shopspinner-linux-image", result.run_id)
    assert builder_resources(ec2, ssm, build_id) == []
