"""Extra links on the launch and register tasks: the builder instance and the image in the AWS console.

They reuse the Amazon provider's console links. When the AWS connection points at an emulator there is no
console: the link opens the emulator's own dashboard instead, and the task log says so.
"""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink
from airflow.providers.amazon.aws.links.ec2 import EC2InstanceLink

log = logging.getLogger("image_factory")


class _EmulatorAware(BaseAwsLink):
    def format_link(self, **kwargs) -> str:
        if kwargs.get("emulator_endpoint"):
            return f"{kwargs['emulator_endpoint'].rstrip('/')}/moto-api/"
        return super().format_link(**kwargs)


class BuilderInstanceLink(_EmulatorAware, EC2InstanceLink):
    name = "Builder instance"


class ImageLink(_EmulatorAware):
    name = "Image"
    key = "_image_id"
    format_str = BASE_AWS_CONSOLE_LINK + "/ec2/home?region={region_name}#ImageDetails:imageId={image_id}"


def persist(link: type[BaseAwsLink], context, region: str, endpoint_url: str | None, **ids: str) -> None:
    operator = context["task"]
    if endpoint_url:
        log.info("the %s link opens the emulator's dashboard (%s/moto-api/): this build ran on an emulated "
                 "cloud, not on AWS", link.name.lower(), endpoint_url.rstrip("/"))
    link.persist(context=context, operator=operator, region_name=region, aws_partition="aws",
                 emulator_endpoint=endpoint_url or "", **ids)


def image_console_url(region: str, image_id: str, endpoint_url: str | None) -> str:
    """The Image link's address for any image (the Images page's console column): the AWS console's page of the
    image, or on an emulator its dashboard."""
    return ImageLink().format_link(region_name=region, aws_domain=ImageLink.get_aws_domain("aws"),
                                   image_id=image_id, emulator_endpoint=endpoint_url or "")
