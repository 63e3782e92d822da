"""Distribution (the spec's ``distribute``): the tested image copied into other regions, and shared.

CopyImage into every region first (each call returns at once), then one wait for all the copies, in every
region at the same time (in the triggerer when deferred: one trigger, see waits/deferring.py). A copy carries the
original's tags, lineage and tests included, plus its source (``image-factory:source-image``,
``source-region``), given in the CopyImage call; once available, its snapshots are tagged and it is marked
complete (one CreateTags, as a registered image is). Then ``share_with``: launch permissions on the image and
every copy, create-volume permissions on their snapshots for the accounts, in every region.

A retry copies nothing twice: it finds the copies of the build by its tag (a complete one is kept, a pending or
available one waited for, a failed one replaced), and CopyImage's ClientToken makes a call repeated after a
lost answer return the same copy. A copy that never became complete is deregistered by the build's teardown
(:func:`remove_incomplete`), in every region.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from image_factory import resources
from image_factory.build import (
    TAG_COMPLETE,
    TAG_SOURCE_IMAGE,
    TAG_SOURCE_REGION,
    Build,
    created,
    tag_dict,
)
from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.steps import image as images
from image_factory.waits.blocking import blocking
from image_factory.waits.protocol import Waiter, WaitOutcome

log = logging.getLogger("image_factory")

#: A region's EC2 client.
ClientIn = Callable[[str], object]


class DistributionError(PermanentError):
    pass


def copy_tags(source: dict, source_region: str) -> dict[str, str]:
    """The original's tags, without the complete mark (a copy earns its own), plus where it was copied from."""
    tags = {key: value for key, value in tag_dict(source.get("Tags")).items()
            if key != TAG_COMPLETE and not key.startswith("aws:")}
    tags.update({TAG_SOURCE_IMAGE: source["ImageId"], TAG_SOURCE_REGION: source_region})
    return tags


def client_token(build: Build, region: str, replacing: str | None = None) -> str:
    """The same for every try of the build's copy into ``region`` (at most 64 ASCII characters); another for
    the copy that replaces a failed one (``replacing``), which AWS would otherwise answer with again."""
    return f"{build.build_id}-{region}" + (f"-after-{replacing}" if replacing else "")


def copy_image_request(build: Build, source: dict, region: str, replacing: str | None = None) -> dict:
    """CopyImage of ``source`` (the build's image, as described) into ``region``, sent to that region."""
    return {"SourceImageId": source["ImageId"], "SourceRegion": build.region, "Name": source["Name"],
            "Description": f"{source.get('Description') or source['Name']} (copy from {build.region})"[:255],
            "ClientToken": client_token(build, region, replacing),
            "TagSpecifications": build.tag_specifications("image", "snapshot", tags=copy_tags(source, build.region))}


def distribute(ec2_in: ClientIn, build: Build, source: dict, wait: Waiter = blocking,
               outcome: WaitOutcome | None = None) -> dict:
    """Copy ``source`` (the build's image, as described) into the spec's distribute regions, wait until every
    copy is available (in all regions at once: ``wait.all``), mark the copies complete and share the image and
    the copies. ``outcome``: of the wait the task was resumed after; when it was the copies', the copies as the
    triggerer described them available, by region. Returns ``{"copies": {region: image id}, "shared_with":
    {...}}``."""
    distribute_spec = build.spec.distribute
    regions = list(distribute_spec.regions)
    if build.region in regions:  # (a parameterised region, resolved only now)
        raise DistributionError(f"image.distribute.regions names {build.region}, the build's own region")
    copies: dict[str, dict] = ({region: answer["Images"][0] for region, answer in outcome.answers.items()}
                               if outcome and outcome.state == "image_available" and outcome.answers else {})
    waiting: dict[str, str] = {}
    for region in regions:
        if region in copies:
            continue
        ec2 = ec2_in(region)
        found, replacing = (None, None) if build.fresh else _existing_copy(ec2, build)
        if found is not None and tag_dict(found.get("Tags")).get(TAG_COMPLETE) == "true":
            copies[region] = found
            continue
        if found is not None:
            waiting[region] = found["ImageId"]
            continue
        checkpoint(f"before:copy-to-{region}")
        copy_id = ec2.copy_image(**copy_image_request(build, source, region, replacing))["ImageId"]
        created("image copy", copy_id, region=region, source=source["ImageId"])
        waiting[region] = copy_id
    if waiting:
        checkpoint("after:copy")
        since = time.time()
        answers = wait.all(ec2_in, [build.wait_for("image_available", {"ImageIds": [copy_id]}, region=region,
                                                   timeout=build.settings.image_timeout, since=since)
                                    for region, copy_id in waiting.items()]).answers
        copies.update({region: answer["Images"][0] for region, answer in answers.items()})
    for region in regions:
        described = copies[region]
        if tag_dict(described.get("Tags")).get(TAG_COMPLETE) != "true":
            # Its snapshots once it names them (as register does); the complete mark last, in the same call.
            ec2_in(region).create_tags(
                Resources=[*images.snapshot_ids(described), described["ImageId"]],
                Tags=[{"Key": k, "Value": v} for k, v in {**copy_tags(source, build.region),
                                                          TAG_COMPLETE: "true"}.items()])
            log.info("copy %s in %s is available and complete", described["ImageId"], region)
    shared = share(ec2_in, build, {build.region: source, **copies})
    return {"copies": {region: copies[region]["ImageId"] for region in regions}, "shared_with": shared}


def _existing_copy(ec2, build: Build) -> tuple[dict | None, str | None]:
    """The build's copy in this region (found by the build's tag), unless it failed: then it is deregistered,
    to be replaced (its id is the second value)."""
    usable = replaced = None
    for found in images.find(ec2, build.build_id):
        if found["State"] in ("pending", "available") and usable is None:
            usable = found
            log.info("copy %s of this build exists already (%s); resuming", found["ImageId"], found["State"])
        else:
            log.warning("copy %s of this build is %s: replaced", found["ImageId"], found["State"])
            images.deregister(ec2, found)
            replaced = found["ImageId"]
    return usable, replaced


def share(ec2_in: ClientIn, build: Build, images_by_region: dict[str, dict]) -> dict:
    """Launch permissions for the spec's ``share_with`` on each image, create-volume permissions on its
    snapshots for the accounts (an organization or unit may launch an image shared with it without them);
    adding a permission that is there already changes nothing (a retry)."""
    share_with = build.spec.distribute.share_with
    if share_with is None:
        return {}
    permissions = ([{"UserId": account} for account in share_with.accounts]
                   + [{"OrganizationArn": arn} for arn in share_with.organizations]
                   + [{"OrganizationalUnitArn": arn} for arn in share_with.organizational_units])
    for region, described in images_by_region.items():
        ec2 = ec2_in(region)
        checkpoint("before:share")
        ec2.modify_image_attribute(ImageId=described["ImageId"], LaunchPermission={"Add": permissions})
        if share_with.accounts:
            for snapshot_id in images.snapshot_ids(described):
                ec2.modify_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission",
                                              OperationType="add", UserIds=list(share_with.accounts))
        log.info("shared %s in %s with %s", described["ImageId"], region,
                 ", ".join(next(iter(p.values())) for p in permissions))
    return {"accounts": list(share_with.accounts), "organizations": list(share_with.organizations),
            "organizational_units": list(share_with.organizational_units)}


def remove_incomplete(ec2_in: ClientIn, regions: list[str], build_id: str) -> list[str]:
    """The teardown's part: every copy of the build that never became complete, in each region, deregistered
    and its snapshots deleted (the image kinds of resources.py, found in each region)."""
    removed = []
    for region in regions:
        ec2 = ec2_in(region)
        gone = resources.delete(ec2, None, resources.find(ec2, None, build_id, kinds=resources.COPIED))
        if gone:
            log.info("removed half-made copies in %s: %s", region, ", ".join(gone))
        removed += gone
    return removed
