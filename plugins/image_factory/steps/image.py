"""Step 6: register the configured instance as an image (an AMI), tagged with its lineage.

An image is marked complete (tag ``image-factory:complete``) once it is available. Any image of a build
that lacks the mark is half-made: registration failures and teardown deregister it and delete its snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from image_factory.build import (
    TAG_BUILD,
    TAG_COMPLETE,
    TAG_ORIGIN,
    TAG_ORIGIN_BUILD,
    TAG_ORIGIN_SPEC,
    TAG_OVERRIDDEN,
    TAG_ROLE,
    TAG_SPEC_HASH,
    TAG_TESTS,
    Build,
    tag_dict,
)
from image_factory.faults import checkpoint
from image_factory.steps import instance as instances
from image_factory.waits.blocking import blocking
from image_factory.waits.protocol import FollowUp, Waiter, WaitOutcome

log = logging.getLogger("image_factory")


def image_name(build: Build, logical_time: str) -> str:
    """Unique per build, sortable by time, and stable across retries of the same run."""
    return f"{build.spec.name}-{logical_time}-{build.build_id}"


def lineage_tags(build: Build, origin_ami: str, origin_lineage: dict | None = None) -> dict[str, str]:
    """``origin_lineage``: the origin's own spec and build, when Image Factory built it."""
    spec = build.spec
    tags = dict(spec.tags)
    tags.update(build.tags(**{
        "Name": spec.name,
        TAG_SPEC_HASH: build.spec_hash,
        TAG_ORIGIN: origin_ami,
        TAG_ROLE: spec.configure.server_role if spec.configure else "none",
        **({TAG_ORIGIN_SPEC: origin_lineage["spec"], TAG_ORIGIN_BUILD: origin_lineage["build_id"]}
           if origin_lineage else {}),
        **({TAG_OVERRIDDEN: ",".join(sorted(build.overridden))} if build.overridden else {}),
    }))
    return tags


def find(ec2, build_id: str) -> list[dict]:
    return ec2.describe_images(Owners=["self"], Filters=[{"Name": f"tag:{TAG_BUILD}", "Values": [build_id]}])[
        "Images"]


def named(name: str) -> dict:
    """DescribeImages arguments that find the build's image by its name (unique per account and region)."""
    return {"Owners": ["self"], "Filters": [{"Name": "name", "Values": [name]}]}


def register(ec2, build: Build, instance_id: str, origin_ami: str, name: str, wait: Waiter = blocking,
             stop_requested_at: float | None = None, outcome: WaitOutcome | None = None,
             origin_lineage: dict | None = None, more_tags: Callable[[str], dict[str, str]] | None = None) -> dict:
    """Stop the instance (``stop_requested_at``: configure asked for the stop then already), create the image
    once it is stopped, wait until it is available, tag its snapshots and mark it complete; returns the image
    as described. ``more_tags``: called with the image's id once it is available; its tags go on with the
    complete mark.

    Stopped, image created, available: one ``wait``, whose follow-up call is CreateImage (:func:`create_image`),
    so that a deferred registration leaves the whole of it to the triggerer (no worker slot while the image is
    pending, not even between CreateImage and a deferral). An earlier run of that wait has made the image
    already if AWS refuses its name as a duplicate.

    A retry resumes: a complete image is returned as it is, a pending or available one is waited for again,
    a failed one is replaced. ``outcome``: of the wait the task was resumed after; when it was the image's, the
    image as the triggerer described it available: no need to look for it or describe it again. An image this
    step leaves incomplete is deregistered by the build's teardown.
    """
    available = outcome.answer["Images"][0] if outcome and outcome.state == "image_available" else None
    image_id = None
    for image in [] if build.fresh or available else find(ec2, build.build_id):
        if tag_dict(image.get("Tags")).get(TAG_COMPLETE) == "true":
            log.info("image %s of this build is registered already", image["ImageId"])
            return image
        if image["State"] in ("pending", "available") and image_id is None:
            image_id = image["ImageId"]
            log.info("image %s of this build exists already (%s); resuming", image_id, image["State"])
        else:
            deregister(ec2, image)
    tags = lineage_tags(build, origin_ami, origin_lineage)
    timeout = build.settings.image_timeout
    if available:
        described = available
    elif image_id is None:
        checkpoint("before:register")
        # A retry asks for the stop again (stopping a stopped instance is a no-op).
        since = (stop_requested_at if build.fresh and stop_requested_at
                 else instances.request_stop(ec2, instance_id))
        stopped = build.wait_for("instance_stopped", {"InstanceIds": [instance_id]}, timeout=timeout, since=since,
                                 then=(create_image(build, instance_id, origin_ami, name, tags),),
                                 next=build.wait_for("image_available", named(name), timeout=timeout))
        described = wait(ec2, stopped).answer["Images"][0]
    else:
        described = wait(ec2, build.wait_for("image_available", {"ImageIds": [image_id]},
                                             timeout=timeout)).answer["Images"][0]
    image_id = described["ImageId"]
    checkpoint("after:register")
    # The snapshots carry the build's tags from CreateImage on (the IAM policy lets the role tag only what
    # carries them already). The complete mark comes last, on the image and its snapshots in one call: only an
    # image whose registration went through to here is an output of the build.
    if more_tags is not None:  # (what needs the image's id: its SBOM's address)
        tags.update(more_tags(image_id))
    tags[TAG_COMPLETE] = "true"
    if build.spec.test is None:
        tags[TAG_TESTS] = "untested"
        log.info("the spec has no test section: image %s is untested (tagged %s=untested), and no channel will "
                 "move to it", image_id, TAG_TESTS)
    ec2.create_tags(Resources=[*snapshot_ids(described), image_id],
                    Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return described


def create_image(build: Build, instance_id: str, origin_ami: str, name: str, tags: dict[str, str]) -> FollowUp:
    """CreateImage, once the instance is stopped: the follow-up call of the stop's wait (made by the trigger
    that waited, when deferred). Its snapshots carry the build's tags from the start."""
    return FollowUp("ec2", "create_image", create_image_request(build, instance_id, origin_ami, name, tags))


def create_image_request(build: Build, instance_id: str, origin_ami: str, name: str, tags: dict[str, str]) -> dict:
    return {"InstanceId": instance_id, "Name": name,
            "Description": f"{build.spec.name} from {origin_ami}, built by Image Factory run {build.run_id}",
            "TagSpecifications": build.tag_specifications("image", "snapshot", tags=tags)}


def snapshot_ids(image: dict) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]


def deregister(ec2, image: dict) -> list[str]:
    """Deregister an image and delete its snapshots; returns what was removed."""
    image_id = image["ImageId"]
    snapshots = snapshot_ids(image)  # as described by the caller
    ec2.deregister_image(ImageId=image_id)
    log.info("deleted image %s", image_id)
    for snapshot_id in snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
        log.info("deleted snapshot %s", snapshot_id)
    return [image_id, *snapshots]
