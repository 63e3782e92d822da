"""Step 7: tear down everything the build made, found by its tags, in dependency order.

Instances first (they hold the security group, the subnet and the key), then half-made images, then the
key pair and its stored private key, the security group, the subnet and the VPC.
"""

from __future__ import annotations

from image_factory.faults import checkpoint
from image_factory.steps import image, infrastructure, instance
from image_factory.waiting import Wait, blocking


def tear_down(ec2, ssm, build_id: str, poll_interval: float, wait: Wait = blocking) -> list[str]:
    checkpoint("before:teardown")
    removed = instance.terminate(ec2, build_id, poll_interval, wait=wait)
    removed += image.remove_incomplete(ec2, build_id)
    removed += infrastructure.destroy(ec2, ssm, build_id)
    return removed
