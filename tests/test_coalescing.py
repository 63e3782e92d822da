"""Polls of many waits sharing describe calls in the triggerer (plugins/image_factory/waits/coalescing.py), against
the local cloud: its front counts the calls."""

from __future__ import annotations

import asyncio
import time

from test_triggers import OFF, REGION, launch, stopping_instance, then, wait

from image_factory import aws
from image_factory.waits.coalescing import Coalescer
from image_factory.waits.triggers import Ec2StateTrigger

UNKNOWN_INSTANCE = "i-0123456789abcdef0"


def instances_in(answer: dict) -> list[str]:
    return [item["InstanceId"] for reservation in answer["Reservations"] for item in reservation["Instances"]]


def test_waits_of_several_builds_share_their_polls_and_each_gets_its_own_answer(local_cloud, ec2, ssm,
                                                                                aws_connection):
    local_cloud.configure(latency={"instance_running": 2})
    instance_ids = [launch(ec2, ssm) for _ in range(6)]
    try:
        local_cloud.reset_stats()
        started = time.time()  # as builds whose instances were launched together

        async def all_waits():
            triggers = [Ec2StateTrigger(wait(aws_connection, "instance_running", {"InstanceIds": [instance_id]},
                                             timeout=30, schedule=0.2, since=started)) for instance_id in instance_ids]
            return await asyncio.gather(*(anext(trigger.run()) for trigger in triggers))

        events = asyncio.run(asyncio.wait_for(all_waits(), 60))
        calls = local_cloud.stats()["calls"].get("ec2:DescribeInstances", 0)
    finally:
        local_cloud.configure(latency=OFF)
        ec2.terminate_instances(InstanceIds=instance_ids)
    polls = sum(event.payload["polls"] for event in events)
    print(f"\n6 waits: {polls} polls in {calls} DescribeInstances calls")
    assert all(event.payload["status"] == "success" for event in events)
    # Each wait's answer is about its own instance only, as if it had asked alone.
    assert [instances_in(event.payload["answer"]) for event in events] == [[i] for i in instance_ids]
    assert polls >= 6 * 5  # 2 s at a 0.2 s step: ten polls each, give or take
    assert calls <= polls / 3


def test_an_image_that_the_trigger_made_is_polled_by_its_id(local_cloud, ec2, ssm, aws_connection):
    """register's trigger: the stop, CreateImage, then the image's wait, which polls by the id CreateImage
    answered (a poll other waits can share), not by the name the task gave (a filter no poll can share)."""
    from image_factory.steps.image import named

    with stopping_instance(local_cloud, ec2, ssm, {"image_available": 30}, "by-id") as (instance_id, name):
        event = asyncio.run(asyncio.wait_for(anext(Ec2StateTrigger(wait(
            aws_connection, "instance_stopped", {"InstanceIds": [instance_id]}, timeout=10, schedule=0.25,
            then=then(("create_image", {"InstanceId": instance_id, "Name": name})),
            next=wait(aws_connection, "image_available", named(name), timeout=10, schedule=0.25))).run()), 60))
        [image] = ec2.describe_images(**named(name))["Images"]
    # The image (pending for 30 s) outlasts the wait: its timeout names what the polls asked for.
    assert event.payload["status"] == "timeout"
    assert f"image_available {{'ImageIds': ['{image['ImageId']}']}}" in event.payload["message"]


def test_a_batch_with_a_resource_ec2_does_not_know_is_asked_again_one_wait_at_a_time(local_cloud, ec2, ssm,
                                                                                      aws_connection):
    instance_id = launch(ec2, ssm)
    client = aws.shared_ec2(aws_connection, REGION)
    coalescer = Coalescer()
    try:
        local_cloud.reset_stats()

        async def both():
            key = (aws_connection, REGION)
            return await asyncio.gather(
                coalescer.ask(key, client, "DescribeInstances", {"InstanceIds": [instance_id]}),
                coalescer.ask(key, client, "DescribeInstances", {"InstanceIds": [UNKNOWN_INSTANCE]}))

        (known, shared_known), (unknown, shared_unknown) = asyncio.run(both())
        calls = local_cloud.stats()["calls"].get("ec2:DescribeInstances", 0)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert instances_in(known) == [instance_id]
    assert unknown["Error"]["Code"] == "InvalidInstanceID.NotFound"
    assert (shared_known, shared_unknown) == (1, 1)
    assert calls == 3 == coalescer.calls  # the shared call, refused; then one each


def test_a_poll_with_no_call_on_its_way_is_made_at_once_and_alone(local_cloud, ec2, ssm, aws_connection):
    instance_id = launch(ec2, ssm)
    client = aws.shared_ec2(aws_connection, REGION)
    coalescer = Coalescer()
    try:
        async def one_after_another():
            key = (aws_connection, REGION)
            answers = []
            for _ in range(3):
                answers.append(await coalescer.ask(key, client, "DescribeInstances", {"InstanceIds": [instance_id]}))
            return answers

        answers = asyncio.run(one_after_another())
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert [shared for _, shared in answers] == [1, 1, 1] and coalescer.calls == 3
    assert all(instances_in(answer) == [instance_id] for answer, _ in answers)


def test_polls_of_other_calls_or_arguments_are_not_merged(local_cloud, ec2, ssm, aws_connection):
    """A describe call with filters asks alone, another operation's polls share only among themselves; images
    are cut as instances are."""
    images = [ami["ImageId"] for ami in ec2.describe_images(Owners=["amazon"])["Images"][:2]]
    instance_id = launch(ec2, ssm)
    client = aws.shared_ec2(aws_connection, REGION)
    coalescer = Coalescer()

    async def mixed():
        key = (aws_connection, REGION)
        return await asyncio.gather(
            coalescer.ask(key, client, "DescribeImages", {"ImageIds": [images[0]]}),
            coalescer.ask(key, client, "DescribeInstances", {"InstanceIds": [instance_id]}),
            coalescer.ask(key, client, "DescribeImages", {"ImageIds": [images[1]]}),
            coalescer.ask(key, client, "DescribeImages", {"Filters": [{"Name": "image-id", "Values": [images[0]]}]}))

    try:
        (first, _), (instance, _), (second, _), (filtered, shared) = asyncio.run(mixed())
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert [image["ImageId"] for image in first["Images"]] == [images[0]]
    assert [image["ImageId"] for image in second["Images"]] == [images[1]]
    assert instances_in(instance) == [instance_id]
    assert [image["ImageId"] for image in filtered["Images"]] == [images[0]] and shared == 1
    assert coalescer.polls == 4
