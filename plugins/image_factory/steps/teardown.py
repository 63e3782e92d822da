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
from image_factory.waits.blocking import blocking
from image_factory.waits.protocol import FollowUp, Wait, Waiter
from image_factory.waits.schedule import Schedule


def tear_down(ec2, ssm, build_id: str, schedule: Schedule | float, wait: Waiter = blocking,
              record: dict | None = None, image_complete: bool = False, timeout: float = 900,
              history: dict | None = None, removed_before: list[str] | None = None) -> list[str]:
    """``record``: what the setup made (infrastructure.BuilderInfrastructure), the ``instance_id`` launched and
    the ``test_instance_id`` (if any);
    ``image_complete``: the build's image was registered (no half-made image can be left); ``schedule``: of
    the wait until the instance is terminated (``history``: for the next build's, see waits/deferring.py);
    ``removed_before``: what the caller removed already (half-made copies in other regions), reported too."""
    checkpoint("before:teardown")
    if record is None:
        removed = [*(removed_before or []), *instance.terminate(ec2, build_id, schedule, timeout, wait=wait)]
        removed += image.remove_incomplete(ec2, build_id)
        removed += infrastructure.destroy(ec2, ssm, build_id)
        return removed
    instance_ids = [record["instance_id"], *([record["test_instance_id"]] if record.get("test_instance_id") else [])]
    ec2.terminate_instances(InstanceIds=instance_ids)
    for instance_id in instance_ids:
        deleted("instance", instance_id)
    removed = [*(removed_before or []), *instance_ids]
    removed += [] if image_complete else image.remove_incomplete(ec2, build_id)
    gone, later = infrastructure.destroy_recorded(ec2, ssm, infrastructure.BuilderInfrastructure.from_dict(record))
    removed += gone + [next(iter(arguments.values())) for _, arguments in later]
    # The rest waits until the instances are gone: the wait's follow-up calls (made in the triggerer, when
    # deferred, which then ends the task).
    wait(ec2, Wait("instance_terminated", {"InstanceIds": instance_ids}, Schedule.of(schedule), timeout,
                   then=after_termination(later), result=removed, history=history or {}))
    return removed


def after_termination(later: list[tuple[str, dict]]) -> tuple[FollowUp, ...]:
    """The deletions that wait until the build's instances are gone (what infrastructure.destroy_recorded left:
    the security group, the subnet, the build's own VPC, in this order), as the wait's follow-up calls."""
    return tuple(FollowUp("ec2", operation, params) for operation, params in later)
