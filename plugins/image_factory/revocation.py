"""Revocation: an image found bad after its promotion (a vulnerable package, a leaked key) is taken out of use.

:func:`revoke` tags the image and its copies in every region (``image-factory:revoked`` with the time,
``revoked-reason``, ``revoked-by``), deprecates them now and disables them (DisableImage: no new instance; those
running keep running); with ``descendants``, every image whose lineage leads to it (``image-factory:origin-ami``,
recursively, across specs and regions) too. Every channel naming a revoked image then moves back to the newest
earlier image of its spec that passed its tests and is not revoked, in every region at once (all or none, as a
promotion: steps/channels.py); with none, the channel is deleted. :func:`restore` takes a revocation back and
moves no channel; :func:`rollback` moves a channel to its previous value (its parameter's history) or to a
named tested image of its spec.

One listing per region (DescribeImages of the account's images tagged with a spec, disabled and deprecated
ones included) finds everything; then a few calls per revoked image and per channel. Nothing here imports
Airflow; the CLI (cli.py) and the DAG (dags/image_factory_revoke.py) call these.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from image_factory.aws import all_items, error_code
from image_factory.build import (
    TAG_BUILD,
    TAG_COMPLETE,
    TAG_ORIGIN,
    TAG_REVOKED,
    TAG_REVOKED_BY,
    TAG_REVOKED_REASON,
    TAG_SPEC,
    TAG_TESTS,
    tag_dict,
)
from image_factory.errors import PermanentError
from image_factory.retention import deprecated_at, deprecation_time
from image_factory.spec import CHANNEL_NAME, IMAGE_NAME, channel_parameter
from image_factory.steps import channels as channel_steps
from image_factory.steps.rollout import roll_back_templates

log = logging.getLogger("image_factory")

AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}\Z")
#: A reason is a tag value (AWS: at most 256 characters); one line of printable text, never a ${...} parameter.
MAX_REASON = 200
REASON = re.compile(r"^[^\x00-\x1f\x7f]+\Z")
#: Who revoked, as a tag value (an IAM ARN or an Airflow user name).
MAX_BY = 200


class RevocationError(PermanentError):
    pass


def check_image_id(image_id: str) -> str:
    if not isinstance(image_id, str) or not AMI_ID.match(image_id):
        raise RevocationError(f"{str(image_id)[:40]!r} is not an AMI id (ami- and 8 or 17 hex digits)")
    return image_id


def check_reason(reason: str) -> str:
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise RevocationError("the reason is empty: say why the image is revoked (it is kept in its tags)")
    if len(reason) > MAX_REASON:
        raise RevocationError(f"the reason is {len(reason)} characters long: at most {MAX_REASON}")
    if not REASON.match(reason) or "${" in reason:
        raise RevocationError("the reason must be one line of printable text, without '${'")
    return reason


def check_by(by: str) -> str:
    by = (by or "").strip()[:MAX_BY]
    return by if by and REASON.match(by) else "unknown"


def spec_regions(specs) -> list[str]:
    """Every region the loaded ``specs`` build or distribute in: where their images are."""
    from image_factory.retention import regions_of

    return sorted({region for loaded in specs for region in regions_of(loaded.image)})


def folder_regions(folder) -> list[str]:
    """``spec_regions`` of the valid specs in ``folder``."""
    from image_factory.spec import load_specs

    return spec_regions(load_specs(folder)[0])


def revocation(tags: dict[str, str]) -> str:
    """An image's revocation in words ("" if it is not revoked)."""
    if TAG_REVOKED not in tags:
        return ""
    return (f"revoked at {tags[TAG_REVOKED]} by {tags.get(TAG_REVOKED_BY, '?')}: "
            f"{tags.get(TAG_REVOKED_REASON, '?')}")


@dataclass
class Account:
    """The account's images tagged with a spec, in the regions looked at: one DescribeImages listing each."""

    regions: list[str]
    #: image id -> (region, the image as DescribeImages shows it)
    images: dict[str, tuple[str, dict]] = field(default_factory=dict)

    @classmethod
    def read(cls, ec2_in: Callable, regions: list[str]) -> Account:
        account = cls(list(regions))
        for region in regions:
            for image in all_items(ec2_in(region), "describe_images", "Images", Owners=["self"],
                                   IncludeDeprecated=True, IncludeDisabled=True,
                                   Filters=[{"Name": "tag-key", "Values": [TAG_SPEC]}]):
                account.images[image["ImageId"]] = (region, image)
        return account

    def tags(self, image_id: str) -> dict[str, str]:
        return tag_dict(self.images[image_id][1].get("Tags"))

    def build_of(self, image_id: str) -> dict[str, str]:
        """The image and its copies (the images of its build), by region: {region: image id}."""
        build = self.tags(image_id).get(TAG_BUILD)
        if not build:
            return {self.images[image_id][0]: image_id}
        return {region: other for other, (region, image) in sorted(self.images.items())
                if tag_dict(image.get("Tags")).get(TAG_BUILD) == build}

    def created(self, image_ids) -> str:
        """When a build was made: its first image's CreationDate (a copy is made later)."""
        return min(self.images[i][1].get("CreationDate", "") for i in image_ids)

    def find(self, ec2_in: Callable, image_id: str) -> str:
        """``image_id``'s region; an image without Image Factory's spec tag, or none at all: a clear error."""
        if image_id in self.images:
            return self.images[image_id][0]
        for region in self.regions:
            try:
                found = ec2_in(region).describe_images(ImageIds=[image_id], IncludeDisabled=True)["Images"]
            except Exception as exc:
                if not error_code(exc).startswith("InvalidAMIID"):
                    raise
                found = []
            if found:
                raise RevocationError(f"{image_id} in {region} is not an Image Factory image (it has no "
                                      f"{TAG_SPEC} tag): only the factory's images are revoked here")
        raise RevocationError(f"no image {image_id} in {', '.join(self.regions)}")


@dataclass
class Report:
    """What a revocation, a restore or a rollback did."""

    #: [{"image", "region", "spec", "reason"}]
    revoked: list[dict] = field(default_factory=list)
    #: [{"spec", "channel", "from": {region: image}, "to": {region: image} or None (deleted)}]
    channels: list[dict] = field(default_factory=list)
    restored: list[dict] = field(default_factory=list)
    #: What became of the launch templates of the channels moved back (steps/rollout.roll_back_templates).
    templates: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        shown = [f"revoked {r['image']} ({r['spec']}) in {r['region']}: {r['reason']}" for r in self.revoked]
        shown += [f"restored {r['image']} ({r['spec']}) in {r['region']}" for r in self.restored]
        for moved in self.channels:
            before = ", ".join(f"{region} {image}" for region, image in moved["from"].items())
            if moved["to"] is None:
                shown.append(f"channel {moved['spec']}/{moved['channel']} deleted (it named {before}): no earlier "
                             "image of the spec passed its tests and is not revoked")
            else:
                after = ", ".join(f"{region} {image}" for region, image in moved["to"].items())
                shown.append(f"channel {moved['spec']}/{moved['channel']}: {before} -> {after}")
        return shown + self.templates


def revoke(ec2_in: Callable, ssm_in: Callable, regions: list[str], image_id: str, reason: str, by: str,
           descendants: bool, prefix: str, now: datetime | None = None, specs: dict | None = None) -> Report:
    """Revoke ``image_id`` and its copies (and, with ``descendants``, every image built on them), then move
    back every channel naming one of them, and the launch templates those channels roll out to (``specs``: the
    specs by name). ``ec2_in``/``ssm_in``: a region's clients."""
    check_image_id(image_id)
    reason, by = check_reason(reason), check_by(by)
    now = now or datetime.now(UTC)
    account = Account.read(ec2_in, regions)
    account.find(ec2_in, image_id)
    doomed = {i: reason for i in account.build_of(image_id).values()}
    if descendants:
        while True:
            children = {child for child, (_, image) in account.images.items() if child not in doomed
                        and tag_dict(image.get("Tags")).get(TAG_ORIGIN) in doomed}
            if not children:
                break
            for child in sorted(children):
                doomed.update({i: f"descendant of {image_id}" for i in account.build_of(child).values()
                               if i not in doomed})
    report = Report()
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for doomed_id, why in doomed.items():
        region, image = account.images[doomed_id]
        tags = tag_dict(image.get("Tags"))
        entry = {"image": doomed_id, "region": region, "spec": tags[TAG_SPEC], "reason": why}
        ec2 = ec2_in(region)
        if TAG_REVOKED in tags:  # a revocation again (a retry): its first tags stay, the rest is finished
            log.info("revoke: %s in %s is %s already", doomed_id, region, revocation(tags))
            entry["reason"] = tags.get(TAG_REVOKED_REASON, why)
        else:
            ec2.create_tags(Resources=[doomed_id], Tags=[{"Key": TAG_REVOKED, "Value": at},
                                                         {"Key": TAG_REVOKED_REASON, "Value": why},
                                                         {"Key": TAG_REVOKED_BY, "Value": by}])
        since = deprecated_at(image)
        if since is None or since > deprecation_time(now):  # (deprecated now, even if planned for later)
            ec2.enable_image_deprecation(ImageId=doomed_id, DeprecateAt=deprecation_time(now))
        if image.get("State") != "disabled":
            ec2.disable_image(ImageId=doomed_id)
        log.info("revoke: %s (%s) in %s revoked, deprecated and disabled: %s", doomed_id, tags[TAG_SPEC], region,
                 entry["reason"])
        report.revoked.append(entry)
    report.channels = _roll_back_channels(ssm_in, account, set(doomed), prefix)
    report.templates = roll_back_templates(ec2_in, specs or {}, report.channels)
    return report


def _roll_back_channels(ssm_in: Callable, account: Account, revoked: set[str], prefix: str) -> list[dict]:
    """Every channel of the revoked images' specs that names one of them, moved back (or deleted)."""
    specs = sorted({account.tags(i)[TAG_SPEC] for i in revoked})
    moved = []
    for spec in specs:
        stale: dict[str, dict[str, str]] = {}  # channel -> {region: the revoked image it names}
        for region in account.regions:
            for parameter in all_items(ssm_in(region), "get_parameters_by_path", "Parameters",
                                       Path=f"{prefix}/{spec}/", Recursive=False):
                if parameter["Value"] in revoked:
                    stale.setdefault(parameter["Name"].rsplit("/", 1)[1], {})[region] = parameter["Value"]
        for channel, named in sorted(stale.items()):
            target = _earlier_tested(account, spec, named, revoked)
            if target is None:
                _delete_everywhere(ssm_in, spec, channel, named, prefix)
            else:
                channel_steps.move_everywhere(ssm_in, spec, [channel], target, {"status": "passed"}, prefix)
            log.info("revoke: channel %s/%s: %s -> %s", spec, channel, named, target or "(deleted)")
            moved.append({"spec": spec, "channel": channel, "from": named, "to": target})
    return moved


def _earlier_tested(account: Account, spec: str, named: dict[str, str], revoked: set[str]) -> dict | None:
    """The newest build of ``spec`` made before the images ``named`` ({region: image}), that passed its tests,
    is complete and not revoked, with an image in each of those regions: {region: its image}; None if none."""
    before = account.created(named.values())
    builds: dict[str, dict[str, str]] = {}
    for image_id, (region, _) in account.images.items():
        tags = account.tags(image_id)
        if (tags.get(TAG_SPEC) == spec and image_id not in revoked and TAG_REVOKED not in tags
                and tags.get(TAG_TESTS) == "passed" and tags.get(TAG_COMPLETE) == "true"):
            builds.setdefault(tags.get(TAG_BUILD, image_id), {})[region] = image_id
    fitting = [images for images in builds.values()
               if set(named) <= set(images) and account.created(images.values()) < before]
    if not fitting:
        return None
    newest = max(fitting, key=lambda images: account.created(images.values()))
    return {region: newest[region] for region in named}


def _delete_everywhere(ssm_in: Callable, spec: str, channel: str, named: dict[str, str], prefix: str) -> None:
    """Delete the channel in each region of ``named``; all or none (a failure puts back those deleted)."""
    before: dict[str, dict[str, str | None]] = {}
    try:
        for region, image_id in named.items():
            ssm_in(region).delete_parameter(Name=channel_parameter(spec, channel, prefix))
            before[region] = {channel: image_id}
    except Exception:
        channel_steps.put_back(ssm_in, spec, before, prefix)
        raise


def restore(ec2_in: Callable, regions: list[str], image_id: str) -> Report:
    """Take back the revocation of ``image_id`` and its copies: enabled, no longer deprecated, the tags gone.
    No channel moves (``rollback`` does, when wanted)."""
    check_image_id(image_id)
    account = Account.read(ec2_in, regions)
    account.find(ec2_in, image_id)
    if TAG_REVOKED not in account.tags(image_id):
        raise RevocationError(f"{image_id} is not revoked: nothing to restore")
    report = Report()
    for region, copy in account.build_of(image_id).items():
        tags = account.tags(copy)
        if TAG_REVOKED not in tags:
            continue
        ec2 = ec2_in(region)
        ec2.enable_image(ImageId=copy)
        ec2.disable_image_deprecation(ImageId=copy)
        ec2.delete_tags(Resources=[copy], Tags=[{"Key": k} for k in (TAG_REVOKED, TAG_REVOKED_REASON,
                                                                      TAG_REVOKED_BY)])
        log.info("restore: %s (%s) in %s enabled, no longer deprecated; it was %s", copy, tags[TAG_SPEC], region,
                 revocation(tags))
        report.restored.append({"image": copy, "region": region, "spec": tags[TAG_SPEC]})
    return report


def rollback(ec2_in: Callable, ssm_in: Callable, regions: list[str], spec: str, channel: str, to: str | None,
             prefix: str, specs: dict | None = None) -> Report:
    """Move ``spec``'s ``channel`` in every region where it exists, at once: to its previous value in each (its
    parameter's history), or to the images of the build of ``to`` (a tested, not revoked image of the spec); then
    the launch templates the channel rolls out to (the spec's ``rollout``, ``specs``: by name)."""
    if not IMAGE_NAME.match(spec) or not CHANNEL_NAME.match(channel):
        raise RevocationError(f"{spec[:70]!r}/{channel[:70]!r} is not a spec name and a channel name")
    name = channel_parameter(spec, channel, prefix)
    current = {}
    for region in regions:
        value = channel_steps.current(ssm_in(region), spec, [channel], prefix).get(channel)
        if value:
            current[region] = value
    if not current:
        raise RevocationError(f"channel {name} does not exist in {', '.join(regions)}")
    account = Account.read(ec2_in, regions)
    if to is not None:
        check_image_id(to)
        account.find(ec2_in, to)
        builds = account.build_of(to)
        if set(current) - set(builds):
            raise RevocationError(f"{to}'s build has no image in {', '.join(sorted(set(current) - set(builds)))}, "
                                  f"where {name} exists")
        target = {region: builds[region] for region in current}
    else:
        target = {region: _previous(ssm_in(region), name, value, region) for region, value in current.items()}
    for region, image_id in target.items():
        if image_id not in account.images or account.tags(image_id).get(TAG_SPEC) != spec:
            raise RevocationError(f"{image_id} in {region} is not an image of {spec}")
        tags = account.tags(image_id)
        if TAG_REVOKED in tags:
            raise RevocationError(f"{image_id} in {region} is {revocation(tags)}: no channel moves to it")
        if tags.get(TAG_TESTS) != "passed":
            raise RevocationError(f"{image_id} in {region} did not pass its tests: no channel moves to it")
    channel_steps.move_everywhere(ssm_in, spec, [channel], target, {"status": "passed"}, prefix)
    moved = [{"spec": spec, "channel": channel, "from": current, "to": target}]
    return Report(channels=moved, templates=roll_back_templates(ec2_in, specs or {}, moved))


def _previous(ssm, name: str, current: str, region: str) -> str:
    """The value the parameter had before ``current`` (the newest other value in its history)."""
    history = list(all_items(ssm, "get_parameter_history", "Parameters", Name=name))
    for version in sorted(history, key=lambda v: v["Version"], reverse=True):
        if version["Value"] != current:
            return version["Value"]
    raise RevocationError(f"channel {name} in {region} has named only {current}: no previous value")
