"""Step 1: resolve the spec's origin to an AMI id in the spec's region."""

from __future__ import annotations

import logging

from image_factory.aws import error_code
from image_factory.build import TAG_REVOKED, tag_dict
from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.spec import SSM_PREFIX, OriginFilter

log = logging.getLogger("image_factory")


class OriginError(PermanentError):
    pass


def resolve_origin(ec2, ssm, origin: str | OriginFilter, region: str) -> str:
    return describe_origin(ec2, ssm, origin, region)["ImageId"]


def describe_origin(ec2, ssm, origin: str | OriginFilter, region: str) -> dict:
    """The origin image, as DescribeImages shows it (the launch needs its root device)."""
    checkpoint("before:origin")
    image = _resolve(ec2, ssm, origin, region)
    checkpoint("after:origin")
    return image


def _resolve(ec2, ssm, origin: str | OriginFilter, region: str) -> dict:
    if isinstance(origin, OriginFilter):
        filters = [{"Name": "name", "Values": [origin.name]}, {"Name": "state", "Values": ["available"]}]
        if origin.architecture:
            filters.append({"Name": "architecture", "Values": [origin.architecture]})
        images = ec2.describe_images(Owners=list(origin.owners), Filters=filters)["Images"]
        for image in [image for image in images if TAG_REVOKED in tag_dict(image.get("Tags"))]:
            log.warning("origin %r: %s skipped: %s", origin.name, image["ImageId"], revocation(image))
            images.remove(image)
        if not images:
            raise OriginError(f"no available image named {origin.name!r} owned by {origin.owners} in {region}")
        newest = max(images, key=lambda image: image.get("CreationDate", ""))
        log.info("origin %r owned by %s: %d candidates, newest is %s (%s, created %s)", origin.name,
                 origin.owners, len(images), newest["ImageId"], newest.get("Name"), newest.get("CreationDate"))
        return newest
    if origin.startswith(SSM_PREFIX):
        name = origin[len(SSM_PREFIX):]
        try:
            image_id = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except Exception as exc:
            if error_code(exc) == "ParameterNotFound":
                raise OriginError(f"SSM parameter {name} does not exist in {region}") from None
            raise
        log.info("origin %s resolves to %s", origin, image_id)
        origin = image_id
    try:
        # (Disabled images too: a revoked one is refused below with its revocation, not as missing.)
        images = ec2.describe_images(ImageIds=[origin], IncludeDisabled=True)["Images"]
    except Exception as exc:
        if error_code(exc).startswith("InvalidAMIID"):
            raise OriginError(f"origin image {origin} does not exist in {region}") from None
        raise
    if images and TAG_REVOKED in tag_dict(images[0].get("Tags")):
        raise OriginError(f"origin image {origin} in {region} is {revocation(images[0])}")
    if not images or images[0].get("State") != "available":
        state = images[0].get("State") if images else "missing"
        raise OriginError(f"origin image {origin} in {region} is {state}, not available")
    log.info("origin image %s: %s", origin, images[0].get("Name"))
    return images[0]


def revocation(image: dict) -> str:
    from image_factory.revocation import revocation as in_words

    return in_words(tag_dict(image.get("Tags")))
