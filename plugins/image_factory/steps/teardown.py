"""Step 7: tear down everything the build made, in the order of the table of what builds make (resources.py).

What nothing needs gone first goes at once (half-made images, then their snapshots; the key pair and its
stored private key), and the instances are terminated; once they are gone, what needed them gone goes (the
security group, the subnet, then the VPC).

Found by the build's tags, unless the setup's record is given: then that names what it made (it made all of it
or failed, and a failed setup leaves no record), and the teardown needs no lookups. A failed build that keeps
its instance to be looked at (``keeping``, keep.py) is found by its tags: the kept instance and what it needs
stay.
"""

from __future__ import annotations

from image_factory import resources
from image_factory.faults import checkpoint
from image_factory.keep import Keeping, kept
from image_factory.steps import instance
from image_factory.waits.blocking import blocking
from image_factory.waits.protocol import FollowUp, Wait, Waiter
from image_factory.waits.schedule import Schedule


def tear_down(ec2, ssm, build_id: str, schedule: Schedule | float, wait: Waiter = blocking,
              record: dict | None = None, image_complete: bool = False, timeout: float = 900,
              history: dict | None = None, removed_before: list[str] | None = None,
              keeping: Keeping | None = None) -> list[str]:
    """``record``: what the setup made (infrastructure.BuilderInfrastructure), the ``instance_id`` launched and
    the ``test_instance_id`` (if any);
    ``image_complete``: the build's image was registered (no half-made image can be left); ``schedule``: of
    the wait until the instance is terminated (``history``: for the next build's, see waits/deferring.py);
    ``removed_before``: what the caller removed already (half-made copies in other regions), reported too;
    ``keeping``: the failed build's instance to keep, and until when."""
    checkpoint("before:teardown")
    removed = list(removed_before or [])
    if record is None or keeping is not None:
        found = resources.find(ec2, ssm, build_id)
        now, instances, later = resources.stages(keeping.hold(ec2, ssm, found) if keeping else found)
        removed += resources.delete(ec2, ssm, now)
        removed += instance.terminate(ec2, build_id, schedule, timeout, wait=wait,
                                      found=[r.data for r in instances])
        removed += resources.delete(ec2, ssm, later)
        return removed
    images = [] if image_complete else resources.find(ec2, None, build_id, kinds=resources.COPIED)
    now, instances, later = resources.stages([*resources.recorded(build_id, record), *images])
    removed += resources.delete(ec2, ssm, instances)  # first: their termination takes longest
    removed += resources.delete(ec2, ssm, now)
    removed += [r.id for r in later]
    # The rest waits until the instances are gone: the wait's follow-up calls (made in the triggerer, when
    # deferred, which then ends the task).
    wait(ec2, Wait("instance_terminated", {"InstanceIds": [r.id for r in instances]}, Schedule.of(schedule), timeout,
                   then=after_termination(later), result=removed, history=history or {}))
    return removed


def after_termination(later: list[resources.Resource]) -> tuple[FollowUp, ...]:
    """The deletions that wait until the build's instances are gone (the security group, the subnet, the build's
    own VPC: resources.py's order), as the wait's follow-up calls."""
    return tuple(FollowUp("ec2", operation, params) for operation, params in resources.calls(later))


def release(ec2, ssm, build_id: str, schedule) -> list[str]:
    """Tear a failed build's kept instance and what stays with it down now (``image-factory release``): the
    build's own teardown, refused (keep.NothingKept) for a build that kept nothing (a running build, say)."""
    kept(ec2, ssm, build_id)
    return tear_down(ec2, ssm, build_id, schedule)
