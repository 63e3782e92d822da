"""Retention: which of a spec's old images are deprecated and deleted, and why; never one that is used.

:func:`survey` reads one region in four listings, whatever the number of images (each paginated):
DescribeImages (the account's images tagged with a spec, deprecated ones included), DescribeInstances (those
pending, running, stopping or stopped), DescribeLaunchTemplateVersions (the default and latest version of
every launch template) and GetParametersByPath (the channels); launch templates naming their image by an SSM
parameter add one GetParameters per ten such names. :func:`judge` gives every image of the specs that have a
``retention`` section a :class:`Verdict`; :func:`carry_out` acts on them, or only logs them in a dry run.

Never touched, whatever the rules say: an image a channel names, in any region (with the other images of its
build: the original and its copies); an image an instance uses (pending, running, stopping or stopped); an
image that the default or the latest version of a launch template names; the newest ``keep`` complete images
of the region besides those; an image not yet complete (its build's teardown or the sweeper decides); a
revoked image before ``keep_revoked_days`` after its revocation (the evidence); and anything without Image
Factory's spec tag, which is never even listed. Nothing here imports Airflow.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from image_factory.aws import all_items, error_code
from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_REVOKED, TAG_SPEC, TAG_TESTS, tag_dict
from image_factory.spec import REGION, SSM_PREFIX, ImageSpec, Retention

log = logging.getLogger("image_factory")

#: Instance states in which an instance holds on to its image (it may start again from it).
USING_STATES = ("pending", "running", "stopping", "stopped")
KEEP, DEPRECATE, DELETE = "keep", "deprecate", "delete"


@dataclass
class RegionSurvey:
    """What retention needs to know of one region."""

    region: str
    #: Every image of the account tagged with a spec (DescribeImages' answer items).
    images: list[dict] = field(default_factory=list)
    #: image id -> the instances using it.
    instances: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: image id -> the launch template versions naming it ("lt-0123 v3 (latest)").
    templates: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: image id -> the channel parameters naming it.
    channels: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: API calls made, by "service:operation".
    calls: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Verdict:
    spec: str
    region: str
    image_id: str
    #: KEEP, DEPRECATE or DELETE.
    action: str
    #: Why, in words: what the log and the Images page say.
    reason: str
    #: Whether the action is still to be done (False: the image is deprecated already).
    pending: bool = True


@contextlib.contextmanager
def _counting(calls: Counter, *clients):
    """Count the API calls the clients make meanwhile (a page is one call), by "service:Operation"."""
    def count(model, **_):
        calls[f"{model.service_model.endpoint_prefix}:{model.name}"] += 1

    for client in clients:
        client.meta.events.register("before-call.*.*", count)
    try:
        yield
    finally:
        for client in clients:
            client.meta.events.unregister("before-call.*.*", count)


def survey(ec2, ssm, region: str, channel_prefix: str) -> RegionSurvey:
    """One region's images, the instances and launch templates using them, and the channels naming them."""
    found = RegionSurvey(region)
    with _counting(found.calls, ec2, ssm):
        found.images = list(all_items(ec2, "describe_images", "Images", Owners=["self"],
                                      IncludeDeprecated=True, IncludeDisabled=True,  # (revoked images are disabled)
                                      Filters=[{"Name": "tag-key", "Values": [TAG_SPEC]}]))
        for reservation in all_items(ec2, "describe_instances", "Reservations",
                                     Filters=[{"Name": "instance-state-name", "Values": list(USING_STATES)}]):
            for item in reservation.get("Instances", []):
                found.instances[item["ImageId"]].append(f"{item['InstanceId']} ({item['State']['Name']})")
        by_parameter = defaultdict(list)
        for version in all_items(ec2, "describe_launch_template_versions", "LaunchTemplateVersions",
                                 Versions=["$Latest", "$Default"], MaxResults=200):
            image_id = version.get("LaunchTemplateData", {}).get("ImageId")
            if not image_id:
                continue
            which = f"{version['LaunchTemplateId']} v{version['VersionNumber']}"
            if image_id.startswith(SSM_PREFIX):  # resolved at launch: the parameter's image is the one used
                by_parameter[image_id[len(SSM_PREFIX):]].append(f"{which} (through {image_id})")
            elif which not in found.templates[image_id]:  # (a version both default and latest: once)
                found.templates[image_id].append(which)
        names = sorted(by_parameter)
        for start in range(0, len(names), 10):  # GetParameters takes ten names at most
            answer = ssm.get_parameters(Names=names[start:start + 10])
            for parameter in answer.get("Parameters", []):
                found.templates[parameter["Value"]].extend(by_parameter[parameter["Name"]])
        for parameter in all_items(ssm, "get_parameters_by_path", "Parameters",
                                   Path=channel_prefix.rstrip("/") + "/", Recursive=True):
            found.channels[parameter["Value"]].append(parameter["Name"])
    log.info("retention: %s: %d images of specs, %d in use by instances, %d named by launch templates, %d by "
             "channels (%d calls)", region, len(found.images), len(found.instances), len(found.templates),
             len(found.channels), sum(found.calls.values()))
    return found


def created_at(image: dict) -> datetime:
    return datetime.fromisoformat(image["CreationDate"].replace("Z", "+00:00"))


def deprecated_at(image: dict) -> datetime | None:
    value = image.get("DeprecationTime")
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def deprecation_time(now: datetime) -> datetime:
    """When an image deprecated ``now`` is deprecated: the next minute (AWS keeps minutes, and refuses a time in
    the past)."""
    return (now + timedelta(minutes=1)).replace(second=0, microsecond=0)


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.0f} days"


def judge(surveys: Iterable[RegionSurvey], rules: dict[str, Retention], now: datetime | None = None
          ) -> list[Verdict]:
    """A verdict for every image of the specs in ``rules`` (spec name -> its retention), region by region.
    ``surveys``: every region of one account (a channel in one protects the build's images in all)."""
    now = now or datetime.now(UTC)
    surveys = list(surveys)
    named_builds = {}  # build id -> a channel naming one of its images
    for found in surveys:
        for image in found.images:
            tags = tag_dict(image.get("Tags"))
            if image["ImageId"] in found.channels and TAG_BUILD in tags:
                named_builds[tags[TAG_BUILD]] = f"{found.channels[image['ImageId']][0]} in {found.region}"
    verdicts = []
    for found in surveys:
        by_spec = defaultdict(list)
        for image in found.images:
            spec = tag_dict(image.get("Tags")).get(TAG_SPEC)
            if spec in rules:
                by_spec[spec].append(image)
        for spec, images in sorted(by_spec.items()):
            images.sort(key=created_at, reverse=True)  # newest first
            verdicts += _judge_spec(spec, found, images, rules[spec], named_builds, now)
    return verdicts


def _judge_spec(spec: str, found: RegionSurvey, images: list[dict], rule: Retention, named_builds: dict,
                now: datetime) -> list[Verdict]:
    verdicts, kept = [], 0
    for image in images:
        image_id, tags = image["ImageId"], tag_dict(image.get("Tags"))
        age = now - created_at(image)

        def verdict(action: str, reason: str, pending: bool = True, image_id=image_id) -> Verdict:
            return Verdict(spec, found.region, image_id, action, reason, pending)

        if image_id in found.channels:
            verdicts.append(verdict(KEEP, f"a channel names it: {', '.join(found.channels[image_id])}"))
        elif tags.get(TAG_BUILD) in named_builds:
            verdicts.append(verdict(KEEP, f"a channel names an image of its build: {named_builds[tags[TAG_BUILD]]}"))
        elif image_id in found.instances:
            verdicts.append(verdict(KEEP, f"instances use it: {', '.join(found.instances[image_id])}"))
        elif image_id in found.templates:
            verdicts.append(verdict(KEEP, f"launch templates name it: {', '.join(found.templates[image_id])}"))
        elif tags.get(TAG_COMPLETE) != "true":
            verdicts.append(verdict(KEEP, "not complete: its build's teardown or the sweeper decides"))
        elif TAG_REVOKED in tags and (since := _revoked_for(tags[TAG_REVOKED], now)) < timedelta(
                days=rule.keep_revoked_days):
            verdicts.append(verdict(KEEP, f"revoked {_age(since)} ago: kept {rule.keep_revoked_days} days after its "
                                          f"revocation (the evidence)"))
        elif tags.get(TAG_TESTS) == "failed":
            if age > timedelta(hours=rule.keep_failed_hours):
                verdicts.append(verdict(DELETE, f"failed its tests {_age(age)} ago (failed images are kept "
                                                f"{rule.keep_failed_hours:g} hours)"))
            else:
                verdicts.append(verdict(KEEP, f"failed its tests {_age(age)} ago: kept "
                                              f"{rule.keep_failed_hours:g} hours"))
        elif kept < rule.keep:
            kept += 1
            verdicts.append(verdict(KEEP, f"one of the newest {rule.keep} ({kept} of {rule.keep})"))
        else:
            verdicts.append(verdict(*_by_age(image, age, rule, now)))
    return verdicts


def _revoked_for(revoked_at: str, now: datetime) -> timedelta:
    """How long ago the image was revoked (an unreadable time: just now, so that it is kept)."""
    try:
        return now - datetime.fromisoformat(revoked_at.replace("Z", "+00:00"))
    except ValueError:
        return timedelta(0)


def _by_age(image: dict, age: timedelta, rule: Retention, now: datetime) -> tuple[str, str, bool]:
    """An image beyond the newest ``keep``: deleted, deprecated or kept as its age says."""
    beyond = f"beyond the newest {rule.keep}, {_age(age)} old"
    if rule.delete_after_days is None and rule.deprecate_after_days is None:
        return DELETE, f"{beyond} (no days given: the images beyond keep are deleted)", True
    if rule.delete_after_days is not None and age >= timedelta(days=rule.delete_after_days):
        return DELETE, f"{beyond} (deleted after {rule.delete_after_days} days)", True
    if rule.deprecate_after_days is not None and age >= timedelta(days=rule.deprecate_after_days):
        since = deprecated_at(image)
        if since is not None and since <= deprecation_time(now):  # (or about to be: set by a run just before)
            return DEPRECATE, f"{beyond}: deprecated since {since:%Y-%m-%d %H:%M}", False
        return DEPRECATE, f"{beyond} (deprecated after {rule.deprecate_after_days} days)", True
    return KEEP, f"{beyond}: not old enough to deprecate or delete yet", True


@dataclass
class Outcome:
    """What one run did (or, in a dry run, would do), per spec."""

    dry_run: bool
    #: spec -> action -> ["region image_id", ...]
    done: dict[str, dict[str, list[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"dry_run": self.dry_run, "specs": {spec: {action: len(ids) for action, ids in actions.items()}
                                                   for spec, actions in self.done.items()},
                "failed": dict(self.failed)}


def carry_out(ec2_of, verdicts: Iterable[Verdict], dry_run: bool, now: datetime | None = None) -> Outcome:
    """Deprecate and delete as ``verdicts`` say (``ec2_of(region)``: that region's EC2 client); every verdict
    is logged with its reason. A failed action is recorded and the others go on."""
    now = now or datetime.now(UTC)
    outcome = Outcome(dry_run)
    for v in verdicts:
        where = f"{v.region} {v.image_id}"
        if v.action == KEEP or not v.pending:
            log.info("retention: %s: keep %s: %s", v.spec, where, v.reason)
            outcome.done[v.spec]["kept" if v.action == KEEP else "deprecated already"].append(where)
            continue
        if dry_run:
            log.info("retention: %s: would %s %s: %s", v.spec, v.action, where, v.reason)
            outcome.done[v.spec][f"would {v.action}"].append(where)
            continue
        ec2 = ec2_of(v.region)
        try:
            if v.action == DEPRECATE:
                ec2.enable_image_deprecation(ImageId=v.image_id, DeprecateAt=deprecation_time(now))
                log.info("retention: %s: deprecated %s: %s", v.spec, where, v.reason)
                outcome.done[v.spec]["deprecated"].append(where)
            else:
                _delete(ec2, v.image_id)
                log.info("retention: %s: deleted %s and its snapshots: %s", v.spec, where, v.reason)
                outcome.done[v.spec]["deleted"].append(where)
        except Exception as exc:
            if error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                log.info("retention: %s: %s is gone already", v.spec, where)
                continue
            log.warning("retention: %s: could not %s %s: %s", v.spec, v.action, where, exc)
            outcome.failed[where] = f"{v.action}: {exc}"
    for spec, actions in sorted(outcome.done.items()):
        shown = ", ".join(f"{len(ids)} {action}" for action, ids in sorted(actions.items()))
        log.info("retention: %s: %s", spec, shown)
    return outcome


def _delete(ec2, image_id: str) -> None:
    """Deregister the image and delete its snapshots in the same call (DeleteAssociatedSnapshots)."""
    answer = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    failed = [r["SnapshotId"] for r in answer.get("DeleteSnapshotResults", []) if r.get("ReturnCode") != "success"]
    if failed:
        raise RuntimeError(f"image {image_id} deregistered, but its snapshots {', '.join(failed)} were not deleted")


def regions_of(spec: ImageSpec) -> list[str]:
    """The regions a spec's images are in: where it is built and where it is distributed to."""
    distribute = getattr(spec, "distribute", None)
    # (A region given as a ${PARAMETER} is known only to a build: its images are not looked at.)
    return [region for region in [spec.region, *(distribute.regions if distribute else [])] if REGION.match(region)]

