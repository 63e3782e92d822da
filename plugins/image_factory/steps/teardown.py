"""Step 7: tear down everything the build made, in dependency order.

Instances first (they hold the security group, the subnet and the key), then half-made images, then the
key pair and its stored private key, the security group, the subnet and the VPC.

Found by the build's tags, unless the setup's record is given: then that names what it made (it made all of it
or failed, and a failed setup leaves no record), and the teardown needs no lookups.
"""

from __future__ import annotations

from image_factory.build import deleted
from image_factory.faults import checkpoint
from image_factory.steps import image, infrastructure, instance
from image_factory.waiting import Wait, blocking


def tear_down(ec2, ssm, build_id: str, poll_interval: float, wait: Wait = blocking, record: dict | None = None,
              image_complete: bool = False, timeout: float = 900) -> list[str]:
    """``record``: the setup's result (infrastructure.BuilderInfrastructure and ``instance_id``);
    ``image_complete``: the build's image was registered (no half-made image can be left)."""
    checkpoint("before:teardown")
    if record is None:
        removed = instance.terminate(ec2, build_id, poll_interval, timeout, wait=wait)
        removed += image.remove_incomplete(ec2, build_id)
        removed += infrastructure.destroy(ec2, ssm, build_id)
        return removed
    instance_id = record["instance_id"]
    ec2.terminate_instances(InstanceIds=[instance_id])
    deleted("instance", instance_id)
    removed = [instance_id] + ([] if image_complete else image.remove_incomplete(ec2, build_id))
    gone, later = infrastructure.destroy_recorded(ec2, ssm, infrastructure.BuilderInfrastructure.from_dict(record))
    removed += gone + [next(iter(arguments.values())) for _, arguments in later]
    # The rest waits until the instance is gone; the wait makes those calls (in the triggerer, when deferred).
    wait(ec2, "instance_terminated", timeout=timeout, delay=poll_interval, then=tuple(later), result=removed,
         InstanceIds=[instance_id])
    return removed
