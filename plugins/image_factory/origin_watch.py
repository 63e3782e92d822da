"""Notice when a spec's origin resolves to a new image, so that the spec can rebuild on it.

The state is the images themselves: each complete image carries the origin it was built from
(``image-factory:origin-ami``), so an origin is new when the newest complete image of the spec was built from
another one (or there is none yet).
"""

from __future__ import annotations

import logging

from image_factory.build import TAG_COMPLETE, TAG_ORIGIN, TAG_SPEC, tag_dict
from image_factory.spec import ImageSpec
from image_factory.steps import origin

log = logging.getLogger("image_factory")


def newest_complete_image(ec2, spec_name: str) -> dict | None:
    images = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": f"tag:{TAG_SPEC}", "Values": [spec_name]},
        {"Name": f"tag:{TAG_COMPLETE}", "Values": ["true"]},
    ])["Images"]
    return max(images, key=lambda i: i.get("CreationDate", ""), default=None)


def new_origin(ec2, ssm, spec: ImageSpec) -> str | None:
    """The origin AMI the spec resolves to now, if no complete image was built from it yet; else None."""
    current = origin.resolve_origin(ec2, ssm, spec.origin, spec.region)
    newest = newest_complete_image(ec2, spec.name)
    built_from = tag_dict(newest.get("Tags")).get(TAG_ORIGIN) if newest else None
    if built_from == current:
        log.info("%s: origin %s is the one its newest image %s was built from", spec.name, current,
                 newest["ImageId"])
        return None
    log.info("%s: origin now resolves to %s; newest image was built from %s", spec.name, current,
             built_from or "nothing yet")
    return current
