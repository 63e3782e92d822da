"""The test stage: a fresh instance of the new image, in the build's own subnet, security group and key, the
spec's tests run on it over SSH, their result put on the image as tags.

The test instance is tagged with the build (``image-factory:instance=test``): the build's teardown terminates
it with the builder, and a retry finds it instead of launching a second one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from image_factory.build import TAG_TESTED_AT, TAG_TESTS, TAG_TESTS_FAILED, TAG_TESTS_PASSED, Build
from image_factory.faults import checkpoint
from image_factory.steps import instance
from image_factory.waits.protocol import Waiter, WaitOutcome

log = logging.getLogger("image_factory")

PURPOSE = "test"


def launch(ec2, build: Build, image: dict, security_group_id: str, key_name: str, wait: Waiter,
           outcome: WaitOutcome | None = None) -> dict:
    """The test instance of ``image`` (instance.launch_view), running: waited for with ``wait``. ``outcome``: of
    the wait the task was resumed after (when it was the boot's, the instance as the wait saw it running)."""
    size = build.spec.test.instance_size if build.spec.test else None
    launched = instance.launch(ec2, build, image, security_group_id, key_name, wait=None, purpose=PURPOSE,
                               size=size, outcome=outcome)
    if launched["state"] != "running":  # (a task resumed after the wait finds it running)
        instance.wait_running(ec2, build, launched["instance_id"], wait)
    return launched


def record(ec2, image_id: str, outcome: dict) -> dict[str, str]:
    """Tag the image with its tests' result (``outcome``: tools.tests.TestOutcome.summary())."""
    checkpoint("before:test-record")
    tags = {TAG_TESTS: outcome["status"], TAG_TESTS_PASSED: str(outcome["passed"]),
            TAG_TESTS_FAILED: str(outcome["failed"]), TAG_TESTED_AT: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    log.info("image %s tagged: %s", image_id, ", ".join(f"{k}={v}" for k, v in tags.items()))
    return tags


def finish(ec2, launched: dict) -> None:
    """Ask for the test instance's termination: the teardown waits for it with the builder's."""
    ec2.terminate_instances(InstanceIds=[launched["instance_id"]])
    log.info("terminating test instance %s", launched["instance_id"])
