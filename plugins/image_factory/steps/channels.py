"""Channels: SSM parameters ``<prefix>/<spec>/<channel>`` (DataType ``aws:ec2:image``) naming a spec's current
image in a region. A consumer, or another spec, uses ``resolve:ssm:<prefix>/<spec>/<channel>``; a channel's
history is its parameter's versions. Only a tested image moves a channel.
"""

from __future__ import annotations

import logging

from image_factory.aws import error_code
from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.spec import channel_parameter

log = logging.getLogger("image_factory")


class ChannelError(PermanentError):
    pass


def move_everywhere(ssm_in, spec_name: str, channels: list[str], images: dict[str, str], tests: dict,
                    prefix: str) -> dict[str, dict[str, int]]:
    """Point each channel at the image of each region in ``images`` ({region: image id}, in order; ``ssm_in``
    gives a region's SSM client); returns each region's :func:`move`. All or none: when a move fails (AWS
    refuses it in one region, say), the channels this call moved are put back to the images they named
    before, in every region, and the error is raised: consumers never see a promotion in some regions only."""
    moved, before = {}, {}
    try:
        for region, image_id in images.items():
            before[region] = {}
            moved[region] = move(ssm_in(region), spec_name, channels, image_id, tests, prefix, before[region])
    except Exception:
        put_back(ssm_in, spec_name, before, prefix)
        raise
    return moved


def put_back(ssm_in, spec_name: str, before: dict[str, dict[str, str | None]], prefix: str) -> None:
    """Each channel in ``before`` ({region: {channel: the image it named, None: it did not exist}}) as it was.
    A channel that cannot be put back is logged and left (the others still are)."""
    for region, channels in before.items():
        for channel, image_id in channels.items():
            name = channel_parameter(spec_name, channel, prefix)
            try:
                if image_id is None:
                    ssm_in(region).delete_parameter(Name=name)
                else:
                    _put(ssm_in(region), name, image_id, channel, spec_name)
            except Exception as exc:
                log.error("channel %s in %s could not be put back to %s: %s", name, region, image_id or "(none)", exc)
                continue
            log.warning("channel %s in %s put back to %s: the promotion failed elsewhere", name, region,
                        image_id or "(none: deleted)")


def move(ssm, spec_name: str, channels: list[str], image_id: str, tests: dict, prefix: str,
         before: dict | None = None) -> dict[str, int]:
    """Point each channel at ``image_id``, whose ``tests`` (tools.tests.TestOutcome.summary()) must have
    passed; returns each channel's new parameter version. Moving a channel to the image it names already
    makes no new version (a retry). ``before`` gets each channel moved: the image it named before (None: the
    channel is new)."""
    if (tests or {}).get("status") != "passed":
        raise ChannelError(f"image {image_id} did not pass its tests ({(tests or {}).get('status', 'untested')}): "
                           "no channel moves to it")
    versions = {}
    for channel in channels:
        name = channel_parameter(spec_name, channel, prefix)
        current = _current(ssm, name)
        if current and current[0] == image_id:
            log.info("channel %s names %s already (version %d)", name, image_id, current[1])
            versions[channel] = current[1]
            continue
        checkpoint("before:channel")
        answer = _put(ssm, name, image_id, channel, spec_name)
        versions[channel] = answer["Version"]
        if before is not None:
            before[channel] = current[0] if current else None
        log.info("channel %s: %s -> %s (version %d)", name, current[0] if current else "(new)", image_id,
                 answer["Version"])
        checkpoint("after:channel")
    return versions


def _put(ssm, name: str, image_id: str, channel: str, spec_name: str) -> dict:
    return ssm.put_parameter(Name=name, Value=image_id, Type="String", DataType="aws:ec2:image", Overwrite=True,
                             Description=f"Image Factory channel {channel} of {spec_name}")


def _current(ssm, name: str) -> tuple[str, int] | None:
    try:
        parameter = ssm.get_parameter(Name=name)["Parameter"]
    except Exception as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise
    return parameter["Value"], parameter["Version"]


def current(ssm, spec_name: str, channels: list[str], prefix: str) -> dict[str, str]:
    """The image each channel names (channels not set yet are left out)."""
    found = {}
    for channel in channels:
        value = _current(ssm, channel_parameter(spec_name, channel, prefix))
        if value:
            found[channel] = value[0]
    return found
