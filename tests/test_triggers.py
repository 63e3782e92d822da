"""The triggers that hold a build's long waits (plugins/image_factory/waits/triggers.py), run as the triggerer runs
them (their async ``run()``), against the local cloud with emulated state-change times and its real sshd."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import boto3
import pytest
from airflow.triggers.base import TaskSuccessEvent

from image_factory.waits.protocol import FollowUp, Wait
from image_factory.waits.schedule import Schedule
from image_factory.waits.triggers import Ec2StateTrigger, RegionsTrigger, SshReadyTrigger
from localcloud.cloud import LOOPBACK, free_port

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
REGION = "eu-west-1"
#: The emulated time an instance takes to show running, in the test of a wait's polls.
CHANGE = 8
OFF = {"instance_running": 0, "instance_stopped": 0, "image_available": 0, "instance_terminated": 0}


def first_event(trigger):
    async def run():
        async for event in trigger.run():
            return event
    return asyncio.run(asyncio.wait_for(run(), 60))


def wait(aws_connection: str, state: str, resources: dict, timeout: float, schedule, region: str = REGION,
         **more) -> Wait:
    """A wait as a build's step asks for it (``schedule``: a Schedule, or seconds between polls)."""
    return Wait(state, resources, Schedule.of(schedule), timeout, region=region, connection=aws_connection, **more)


def then(*calls: tuple[str, dict]) -> tuple[FollowUp, ...]:
    return tuple(FollowUp("ec2", operation, params) for operation, params in calls)


def launch(ec2, ssm) -> str:
    ami = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


def test_an_instance_wait_ends_the_task_soon_after_the_change_with_few_polls(local_cloud, ec2, ssm, aws_connection):
    # The emulated change (8 s) outlasts the machine's real boot (2 to 5 s under the other test worker's load):
    # with 2 s, a 3.5 s boot was the change, and the count of polls measured the boot.
    local_cloud.configure(latency={"instance_running": CHANGE})
    try:
        instance_id = launch(ec2, ssm)
        local_cloud.reset_stats()
        trigger = Ec2StateTrigger(wait(aws_connection, "instance_running", {"InstanceIds": [instance_id]},
                                       timeout=30, schedule=0.5), finish=True, elapsed=0.0)  # a timed step (the launch)
        event = first_event(trigger)
        waited = time.time() - trigger.started
        polls = local_cloud.stats()["calls"].get("ec2:DescribeInstances", 0)
    finally:
        local_cloud.configure(latency=OFF)
        ec2.terminate_instances(InstanceIds=[instance_id])
    # Ends the task itself (no return to a worker), with the step's duration for the build summary.
    assert isinstance(event, TaskSuccessEvent)
    assert CHANGE <= event.xcoms["step_seconds"] <= waited + 0.1
    assert waited < CHANGE + 0.5 + 1.5  # at most one interval (and a slow poll) after the change
    assert polls <= CHANGE / 0.5 + 2  # one poll per interval; none at once, when the state cannot have changed yet


def test_a_wait_that_cannot_succeed_goes_back_to_the_task_with_the_reason(ec2, ssm, aws_connection):
    instance_id = launch(ec2, ssm)
    ec2.terminate_instances(InstanceIds=[instance_id])
    event = first_event(Ec2StateTrigger(wait(aws_connection, "instance_running", {"InstanceIds": [instance_id]},
                                             timeout=30, schedule=0.2), finish=True))
    assert not isinstance(event, TaskSuccessEvent)
    assert event.payload["status"] == "failed" and instance_id in event.payload["message"]


def test_a_wait_past_its_timeout_goes_back_to_the_task(ec2, ssm, aws_connection):
    instance_id = launch(ec2, ssm)
    try:
        # Running first: the stop's waiter takes an instance still booting (pending) for a failure.
        ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id],
                                                WaiterConfig={"Delay": 0.5, "MaxAttempts": 120})
        started = time.monotonic()
        event = first_event(Ec2StateTrigger(wait(aws_connection, "instance_stopped",
                                                 {"InstanceIds": [instance_id]}, timeout=1.5, schedule=0.5)))
        assert event.payload["status"] == "timeout" and "not reached within 2 s" in event.payload["message"]
        assert time.monotonic() - started < 5
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_a_resumed_wait_reports_which_wait_succeeded(local_cloud, ec2, ssm, aws_connection):
    instance_id = launch(ec2, ssm)
    try:
        event = first_event(Ec2StateTrigger(wait(aws_connection, "instance_running",
                                                 {"InstanceIds": [instance_id]}, timeout=30, schedule=0.2)))
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    answer = event.payload.pop("answer")
    low, high = event.payload.pop("windows")["instance_running"]
    polls = event.payload.pop("polls")
    assert event.payload == {"status": "success", "state": "instance_running",
                             "resources": {"InstanceIds": [instance_id]}, "answers": {}, "failed": None,
                             "transient": False}
    # A machine boots systemd in a few seconds: seen by the poll after it runs, its window the last two polls.
    assert 1 <= polls <= high / 0.2 + 2 and 0 <= low < high < 30 and round(high - low, 1) <= 0.3
    # The last describe answer comes along (JSON-safe): the task need not describe the instance again.
    (described,) = [i for r in answer["Reservations"] for i in r["Instances"]]
    assert described["InstanceId"] == instance_id and described["State"]["Name"] == "running"
    assert isinstance(described["LaunchTime"], str)


def test_the_calls_that_waited_for_the_state_are_made_by_the_trigger(local_cloud, ec2, ssm, aws_connection):
    """The teardown's security group and subnet go once the instance is gone, without a task coming back."""
    vpc = ec2.create_vpc(CidrBlock="10.99.0.0/24")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.99.0.0/28")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="then-test", Description="t", VpcId=vpc)["GroupId"]
    instance_id = launch(ec2, ssm)
    ec2.terminate_instances(InstanceIds=[instance_id])
    local_cloud.reset_stats()
    event = first_event(Ec2StateTrigger(wait(
        aws_connection, "instance_terminated", {"InstanceIds": [instance_id]}, timeout=30, schedule=0.2,
        then=then(("delete_security_group", {"GroupId": group}), ("delete_subnet", {"SubnetId": subnet}),
                  ("delete_vpc", {"VpcId": vpc}))), finish=True))
    assert isinstance(event, TaskSuccessEvent)
    assert "step_seconds" not in event.xcoms  # the teardown: a step the build summary does not time
    calls = local_cloud.stats()["calls"]
    assert [calls.get(f"ec2:{a}") for a in ("DeleteSecurityGroup", "DeleteSubnet", "DeleteVpc")] == [1, 1, 1]
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Vpcs"] == []


def test_a_failed_call_after_the_wait_sends_the_task_back_to_run_again(ec2, ssm, aws_connection):
    vpc = ec2.create_vpc(CidrBlock="10.98.0.0/24")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.98.0.0/28")["Subnet"]["SubnetId"]
    instance_id = launch(ec2, ssm)
    ec2.terminate_instances(InstanceIds=[instance_id])
    try:
        event = first_event(Ec2StateTrigger(wait(
            aws_connection, "instance_terminated", {"InstanceIds": [instance_id]}, timeout=30, schedule=0.2,
            then=then(("delete_vpc", {"VpcId": vpc}))), finish=True))  # its subnet is still there: DependencyViolation
    finally:
        ec2.delete_subnet(SubnetId=subnet)
        ec2.delete_vpc(VpcId=vpc)
    assert not isinstance(event, TaskSuccessEvent)
    assert event.payload["status"] == "success"
    assert "delete_vpc" in event.payload["failed"] and "DependencyViolation" in event.payload["failed"]
    assert event.payload["transient"] is True  # the subnet may still go: worth a retry


@pytest.mark.parametrize(("transient", "raised"), [(False, "WaitFailed"), (True, "CallFailed")])
def test_a_step_whose_trigger_could_not_start_the_next_change_fails_instead_of_waiting_again(transient, raised):
    """CreateImage refused in the triggerer: the resumed register step must not defer the same wait again."""
    from image_factory.steps.image import named
    from image_factory.waits.deferring import Deferring
    from image_factory.waits.protocol import CallFailed, WaitFailed, WaitOutcome

    event = {"status": "success", "polls": 3, "state": "instance_stopped", "resources": {"InstanceIds": ["i-1"]},
             "failed": "create_image i-1: InvalidParameterValue", "transient": transient}
    waiter = Deferring("aws_default", REGION, WaitOutcome.from_event(event))
    with pytest.raises((WaitFailed, CallFailed), match="InvalidParameterValue") as failed:
        waiter(None, wait("aws_default", "instance_stopped", {"InstanceIds": ["i-1"]}, timeout=60, schedule=2,
                          then=then(("create_image", {"InstanceId": "i-1"})),
                          next=wait("aws_default", "image_available", named("x"), timeout=60, schedule=2)))
    assert type(failed.value).__name__ == raised
    assert isinstance(failed.value, WaitFailed) == (not transient)  # permanent: no retry


@contextlib.contextmanager
def stopping_instance(local_cloud, ec2, ssm, latency: dict, prefix: str):
    """An instance asked to stop on the local cloud emulating ``latency`` (call counts reset), and the name of
    an image to make from it: (instance id, name). The instance and the image are removed afterwards."""
    from image_factory.steps.image import named

    instance_id = launch(ec2, ssm)
    name = f"{prefix}-{instance_id}"
    local_cloud.configure(latency=latency)
    try:
        ec2.stop_instances(InstanceIds=[instance_id])
        local_cloud.reset_stats()
        yield instance_id, name
    finally:
        local_cloud.configure(latency=OFF)
        ec2.terminate_instances(InstanceIds=[instance_id])
        for image in ec2.describe_images(**named(name))["Images"]:
            ec2.deregister_image(ImageId=image["ImageId"])


def test_register_waits_for_the_stop_makes_the_image_and_waits_for_it_once_even_when_run_again(
        local_cloud, ec2, ssm, aws_connection):
    """The whole registration in the triggerer: no task runs while the image is pending. A triggerer that
    restarts runs the trigger again: AWS refuses the image's name as a duplicate, and it goes on with the image."""
    from image_factory.steps.image import named

    latency = {"instance_stopped": 1, "image_available": 1}
    with stopping_instance(local_cloud, ec2, ssm, latency, "register-trigger") as (instance_id, name):
        def trigger():
            return Ec2StateTrigger(wait(aws_connection, "instance_stopped", {"InstanceIds": [instance_id]},
                                        timeout=30, schedule=0.3,
                                        then=then(("create_image", {"InstanceId": instance_id, "Name": name})),
                                        next=wait(aws_connection, "image_available", named(name), timeout=30,
                                                  schedule=0.3)))

        first, again = first_event(trigger()), first_event(trigger())
        calls = local_cloud.stats()["calls"]
        images = ec2.describe_images(**named(name))["Images"]
    assert [i["State"] for i in images] == ["available"]  # one image, however often the trigger ran
    for event in (first, again):
        assert event.payload["status"] == "success" and event.payload["failed"] is None
        assert event.payload["state"] == "image_available" and event.payload["resources"] == named(name)
        assert event.payload["answer"]["Images"][0]["ImageId"] == images[0]["ImageId"]
    assert calls["ec2:CreateImage"] == 2  # the second answered InvalidAMIName.Duplicate


def test_the_next_wait_polls_on_its_own_interval(local_cloud, ec2, ssm, aws_connection):
    """register's trigger polls the short stop often and the image's long wait at the deployment's interval."""
    from image_factory.steps.image import named

    latency = {"instance_stopped": 1, "image_available": 2}
    with stopping_instance(local_cloud, ec2, ssm, latency, "intervals") as (instance_id, name):
        event = first_event(Ec2StateTrigger(wait(
            aws_connection, "instance_stopped", {"InstanceIds": [instance_id]}, timeout=30, schedule=0.25,
            then=then(("create_image", {"InstanceId": instance_id, "Name": name})),
            next=wait(aws_connection, "image_available", named(name), timeout=30, schedule=1))))
        calls = local_cloud.stats()["calls"]
    assert event.payload["status"] == "success" and event.payload["state"] == "image_available"
    # The stop: every 0.25 s, for as long as the machine took to power off (at least the emulated second).
    stopped_by = max(1.0, event.payload["windows"]["instance_stopped"][1])
    assert 3 <= calls["ec2:DescribeInstances"] <= stopped_by / 0.25 + 2
    assert 2 <= calls["ec2:DescribeImages"] <= 2 / 1 + 1  # the image: every second, not every 0.25 s


@contextlib.contextmanager
def ssh_server(local_cloud, ec2):
    """(address, port) of a real sshd: a machine's on its private address (single-sshd model: the one sshd)."""
    state = local_cloud.state()
    if not state.machines:
        yield LOOPBACK, state.ssh_port
        return
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=f"ssh-ready-{time.time_ns()}", Description="ssh", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": local_cloud.env()["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"]}]}])
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SecurityGroupIds=[group])["Instances"][0]
    try:
        yield instance["PrivateIpAddress"], 22  # its sshd may not answer yet: the trigger waits
    finally:
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
        ec2.delete_security_group(GroupId=group)


def test_ssh_ready_reads_the_servers_banner(local_cloud, ec2):
    with ssh_server(local_cloud, ec2) as (host, port):
        trigger = SshReadyTrigger(host, port, timeout=30, delay=0.5)
        # Stored in the database as it is: an address, never a key.
        assert set(trigger.serialize()[1]) == {"host", "port", "timeout", "delay", "started", "instance", "console"}
        event = first_event(trigger)
    assert event.payload["status"] == "success"
    assert event.payload["resources"] == {"address": [f"{host}:{port}"]}


def test_ssh_ready_times_out_when_nothing_answers():
    port = free_port()  # nothing listens there
    event = first_event(SshReadyTrigger(LOOPBACK, port, timeout=1, delay=0.3))
    assert event.payload["status"] == "timeout" and f"{LOOPBACK}:{port}" in event.payload["message"]


@pytest.mark.parametrize("gone_by", ["stop_instances", "terminate_instances"])
def test_ssh_wait_ends_at_once_when_its_instance_stops_or_goes_away(gone_by, ec2, ssm, aws_connection, monkeypatch):
    """Not after the SSH timeout (10 minutes by default): the instance will never answer."""
    monkeypatch.setattr(SshReadyTrigger, "STATE_EVERY", 0.6)
    instance_id = launch(ec2, ssm)
    getattr(ec2, gone_by)(InstanceIds=[instance_id])
    started = time.monotonic()
    try:
        event = first_event(SshReadyTrigger(LOOPBACK, free_port(), timeout=60, delay=0.2, instance={
            "aws_conn_id": aws_connection, "region": REGION, "instance_id": instance_id}))
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    print(f"\n{gone_by}: the SSH wait ended after {time.monotonic() - started:.1f} s: {event.payload}")
    assert event.payload["status"] == "failed"
    # (A real machine's stop is systemd's poweroff: the wait ends while the instance is still stopping.)
    gone = ("stopping", "stopped") if gone_by == "stop_instances" else ("terminated",)
    assert any(f"instance {instance_id} is {state}" in event.payload["message"] for state in gone)
    assert "(Client.UserInitiatedShutdown: User initiated shutdown)" in event.payload["message"]  # EC2's reason
    assert time.monotonic() - started < 10


def test_ssh_wait_for_a_running_instance_goes_on_until_its_timeout(ec2, ssm, aws_connection, monkeypatch):
    monkeypatch.setattr(SshReadyTrigger, "STATE_EVERY", 0.3)
    instance_id = launch(ec2, ssm)
    try:
        event = first_event(SshReadyTrigger(LOOPBACK, free_port(), timeout=1.5, delay=0.2, instance={
            "aws_conn_id": aws_connection, "region": REGION, "instance_id": instance_id}))
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert event.payload["status"] == "timeout"


def test_triggers_come_back_from_their_serialized_form(aws_connection):
    for trigger in (Ec2StateTrigger(wait(aws_connection, "image_available", {"ImageIds": ["ami-1"]}, 60, 2,
                                         since=1.0, then=then(("delete_subnet", {"SubnetId": "subnet-1"})),
                                         next=wait(aws_connection, "image_available", {"ImageIds": ["ami-2"]}, 60, 4),
                                         history={"image_available": [[1.0, 2.0]]}),
                                    finish=True, elapsed=1.5),
                    RegionsTrigger([wait(aws_connection, "image_available", {"ImageIds": ["ami-1"]}, 60, 2,
                                         region=region, since=1.0) for region in ("us-east-1", "us-west-2")]),
                    SshReadyTrigger(LOOPBACK, 22, 60, 2, started=1.0, console=True,
                                    instance={"aws_conn_id": aws_connection, "region": REGION, "instance_id": "i-1"})):
        classpath, kwargs = trigger.serialize()
        module, _, name = classpath.rpartition(".")
        again = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
        assert again.serialize() == (classpath, kwargs)


def test_configure_hands_an_unanswered_ssh_wait_to_the_triggerer_after_one_attempt():
    from image_factory import remote
    from image_factory.steps.infrastructure import _new_key
    from image_factory.waits.protocol import Deferred

    key, _ = _new_key()
    port = free_port()  # nothing listens there: the first login attempt fails at once
    handed = []

    def defer():
        handed.append(SshReadyTrigger(LOOPBACK, port, timeout=60, delay=2))
        raise Deferred(handed[-1], 60)

    started = time.monotonic()
    with pytest.raises(Deferred):
        remote.wait_until_ready(LOOPBACK, port, "nobody", key, timeout=60, interval=2, defer=defer)
    assert len(handed) == 1 and time.monotonic() - started < 15  # no polling in the worker
    # Without a way to defer (a resumed task: the banner answered), it keeps trying until its timeout.
    with pytest.raises(TimeoutError, match="did not answer within 1 s"):
        remote.wait_until_ready(LOOPBACK, port, "nobody", key, timeout=1, interval=0.5)


def copies_of_al2023(cloud, ssm, regions: list[str]) -> dict[str, str]:
    ami = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    name = f"regions-trigger-{uuid.uuid4().hex[:8]}"
    return {region: regional_ec2(cloud, region).copy_image(SourceImageId=ami, SourceRegion=REGION, Name=name)[
        "ImageId"] for region in regions}


def regional_ec2(cloud, region: str):
    return boto3.client("ec2", endpoint_url=cloud.endpoint, region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # noqa: S106 emulator


def wait_for_copies(local_cloud, ssm, aws_connection, regions: list[str], **config) -> tuple[dict, object, float]:
    """Copies of the AL2023 image in ``regions``, waited for by one RegionsTrigger with the local cloud
    configured as ``config`` says; the copies are deregistered afterwards. Returns (copies, event, seconds)."""
    local_cloud.configure(**config)
    copies = {}
    try:
        copies = copies_of_al2023(local_cloud, ssm, regions)
        started = time.time()
        event = first_event(RegionsTrigger([wait(aws_connection, "image_available", {"ImageIds": [image_id]},
                                                 timeout=30, schedule=0.5, region=region, since=time.time())
                                            for region, image_id in copies.items()]))
        return copies, event, time.time() - started
    finally:
        local_cloud.configure(latency=OFF, fail_copies_to=[])
        for region, image_id in copies.items():
            regional_ec2(local_cloud, region).deregister_image(ImageId=image_id)


def test_a_wait_in_several_regions_polls_them_together_and_ends_when_all_are_there(local_cloud, ssm,
                                                                                   aws_connection):
    copies, event, waited = wait_for_copies(local_cloud, ssm, aws_connection, ["us-east-1", "eu-central-1"],
                                            latency={"image_available": 2})
    assert event.payload["status"] == "success"
    assert {region: answer["Images"][0]["ImageId"] for region, answer in event.payload["answers"].items()} == copies
    assert all(answer["Images"][0]["State"] == "available" for answer in event.payload["answers"].values())
    assert 2 <= waited < 8  # ended once both were there (a loaded CI machine may add seconds)


def test_a_copy_that_fails_in_one_region_ends_the_wait_in_all_at_once(local_cloud, ssm, aws_connection):
    copies, event, waited = wait_for_copies(local_cloud, ssm, aws_connection, ["us-east-1", "us-west-2"],
                                            latency={"image_available": 20}, fail_copies_to=["us-west-2"])
    assert event.payload["status"] == "failed"
    assert event.payload["message"].startswith("us-west-2: image_available") and copies["us-west-2"] in \
        event.payload["message"]
    assert waited < 12  # not held up by the copy still pending in us-east-1 (20 s)
