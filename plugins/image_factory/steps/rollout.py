"""Rollout to the fleet, after a promotion: each launch template of a spec's ``rollout`` entry gets a new version
naming the channel's new image (its other settings those of its default version), made its default version
when ``set_default`` says so; then each Auto Scaling group gets an instance refresh, followed to its end.

Image Factory changes only templates and groups tagged ``image-factory:rollout`` with the spec's name: the IAM
policy lets it change those carrying the tag (docs/security.md), and :func:`check` (in the build's first step,
before anything is built) refuses a template or group that does not exist, is not tagged for the spec, or may
not be read or changed, naming what to tag or grant.

Safe to run again (a retry, a resumed wait): a template whose latest version names the image already gets no
second version; a group refreshed since that version was made gets no second refresh.
"""

from __future__ import annotations

import logging

from image_factory.aws import error_code
from image_factory.errors import PermanentError
from image_factory.spec import Rollout
from image_factory.waits.polls import REFRESH_ENDS
from image_factory.waits.protocol import Waiter, WaitOutcome

log = logging.getLogger("image_factory")

#: The tag a launch template or Auto Scaling group carries, its value the spec's name, to be rolled out to.
TAG_ROLLOUT = "image-factory:rollout"
#: The waiter that follows an instance refresh (waits/polls.py: a waiter boto3 does not define).
REFRESH_FINISHED = "instance_refresh_finished"
#: How an instance refresh ends well; every other end (Failed, Cancelled, rolled back) fails the rollout.
SUCCESSFUL = "Successful"
#: How long a refresh is followed at most (AWS's own limit for one is far longer; a fleet's is hours at most).
REFRESH_TIMEOUT = 6 * 3600.0
DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


class RolloutError(PermanentError):
    pass


def _tags(items: list[dict] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in items or []}


def _grant(action: str, what: str) -> str:
    return (f"{action} on {what} is denied: grant it to Image Factory's role "
            "(include/iam/image-factory-policy.json: statements DescribeTheFleetToRollOutTo and "
            "RollOutOnlyToTaggedTemplatesAndGroups, docs/security.md)")


def check(ec2, autoscaling, spec_name: str, entries: list[Rollout], region: str) -> None:
    """Before anything is built: every template and group of ``entries`` exists in ``region``, is tagged
    ``image-factory:rollout=<spec>``, and may be read and changed; each group launches from one of its entry's
    templates. Raises :class:`RolloutError` naming the first that is not, and what to tag or grant."""
    for entry in entries:
        template_ids = set()
        for name in entry.launch_templates:
            template = _template(ec2, name, region)
            template_ids.add(template["LaunchTemplateId"])
            if _tags(template.get("Tags")).get(TAG_ROLLOUT) != spec_name:
                raise RolloutError(f"rollout: launch template {name} in {region} is not tagged {TAG_ROLLOUT}="
                                   f"{spec_name}: tag it so to let this spec's builds give it new versions (the "
                                   "IAM policy lets Image Factory change only tagged templates)")
            _dry_run(ec2.create_launch_template_version, "ec2:CreateLaunchTemplateVersion", name, region,
                     LaunchTemplateName=name, SourceVersion=str(template["DefaultVersionNumber"]),
                     LaunchTemplateData={})
            if entry.set_default:
                _dry_run(ec2.modify_launch_template, "ec2:ModifyLaunchTemplate", name, region,
                         LaunchTemplateName=name, DefaultVersion=str(template["DefaultVersionNumber"]))
        for group in _groups(autoscaling, entry.auto_scaling_groups, region):
            name = group["AutoScalingGroupName"]
            if _tags(group.get("Tags")).get(TAG_ROLLOUT) != spec_name:
                raise RolloutError(f"rollout: Auto Scaling group {name} in {region} is not tagged {TAG_ROLLOUT}="
                                   f"{spec_name}: tag it so to let this spec's builds refresh it (the IAM policy "
                                   "lets Image Factory refresh only tagged groups)")
            used = _launch_template_of(group)
            if used.get("LaunchTemplateId") not in template_ids and used.get("LaunchTemplateName") not in \
                    entry.launch_templates:
                raise RolloutError(f"rollout: Auto Scaling group {name} in {region} launches from "
                                   f"{used.get('LaunchTemplateName') or 'no launch template'}, not from "
                                   f"{', '.join(entry.launch_templates)}: its refresh would not roll the image out")
            try:
                autoscaling.describe_instance_refreshes(AutoScalingGroupName=name, MaxRecords=1)
            except Exception as exc:
                if error_code(exc) in DENIED:
                    raise RolloutError("rollout: " + _grant("autoscaling:DescribeInstanceRefreshes",
                                                            f"group {name} in {region}")) from None
                raise


def _template(ec2, name: str, region: str) -> dict:
    try:
        return ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]
    except Exception as exc:
        code = error_code(exc)
        if code in DENIED:
            raise RolloutError("rollout: " + _grant("ec2:DescribeLaunchTemplates",
                                                    f"launch template {name} in {region}")) from None
        if "NotFound" in code or code == "InvalidLaunchTemplateName.MalformedException":
            raise RolloutError(f"rollout: launch template {name} does not exist in {region} (the spec's rollout "
                               "names it; a channel's image is rolled out in every region the channel moves in)"
                               ) from None
        raise


def _dry_run(call, action: str, name: str, region: str, **params) -> None:
    """Whether the call would be allowed (EC2's DryRun: DryRunOperation means it would)."""
    try:
        call(DryRun=True, **params)
    except Exception as exc:
        code = error_code(exc)
        if code == "DryRunOperation":
            return
        if code in DENIED:
            raise RolloutError("rollout: " + _grant(action, f"launch template {name} in {region}")) from None
        raise


def _groups(autoscaling, names: list[str], region: str) -> list[dict]:
    if not names:
        return []
    try:
        found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]
    except Exception as exc:
        if error_code(exc) in DENIED:
            raise RolloutError("rollout: " + _grant("autoscaling:DescribeAutoScalingGroups",
                                                    f"the groups in {region}")) from None
        raise
    missing = sorted(set(names) - {group["AutoScalingGroupName"] for group in found})
    if missing:
        raise RolloutError(f"rollout: Auto Scaling group {', '.join(missing)} does not exist in {region} (the "
                           "spec's rollout names it; a channel's image is rolled out in every region the channel "
                           "moves in)")
    return found


def _launch_template_of(group: dict) -> dict:
    return group.get("LaunchTemplate") or group.get("MixedInstancesPolicy", {}).get(
        "LaunchTemplate", {}).get("LaunchTemplateSpecification", {})


def point_templates(ec2, entry: Rollout, image_id: str, description: str) -> dict[str, dict]:
    """Each template of ``entry`` with a version naming ``image_id`` (its latest, when it names it already: an
    earlier try made it), the default one when ``set_default`` says so: {template: its version}."""
    versions = {}
    for name in entry.launch_templates:
        found = ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=["$Latest", "$Default"])[
            "LaunchTemplateVersions"]
        latest = max(found, key=lambda version: version["VersionNumber"])
        default = next(version for version in found if version.get("DefaultVersion"))
        if latest["LaunchTemplateData"].get("ImageId") == image_id:
            version = latest
            log.info("launch template %s: version %d names %s already", name, version["VersionNumber"], image_id)
        else:
            version = ec2.create_launch_template_version(
                LaunchTemplateName=name, SourceVersion=str(default["VersionNumber"]),
                LaunchTemplateData={"ImageId": image_id}, VersionDescription=description[:255])["LaunchTemplateVersion"]
            log.info("launch template %s: version %d made, naming %s (its other settings those of the default "
                     "version)", name, version["VersionNumber"], image_id)
        if entry.set_default and not version.get("DefaultVersion"):
            ec2.modify_launch_template(LaunchTemplateName=name, DefaultVersion=str(version["VersionNumber"]))
            log.info("launch template %s: default version now %d", name, version["VersionNumber"])
        versions[name] = version
    return versions


def roll_back_templates(ec2_in, specs, moves: list[dict]) -> list[str]:
    """After channels moved back (``rollback``, a revocation): each launch template a spec's ``rollout`` entry
    of that channel names gets a version naming the channel's image again, in each region it moved in (the
    default one when ``set_default``), as a rollout gives it; no instance refresh is started (the team replaces
    running instances when it chooses). ``specs``: the specs by name; ``moves``: revocation.Report.channels.
    What was done, in words."""
    done = []
    for moved in moves:
        spec = specs.get(moved["spec"])
        for entry in (spec.rollout or []) if spec is not None else []:
            if entry.channel != moved["channel"]:
                continue
            if moved["to"] is None:
                done.append(f"launch templates {', '.join(entry.launch_templates)} of {spec.name}/{entry.channel} "
                            "left as they are: the channel was deleted, no image to roll back to")
                continue
            for region, image_id in sorted(moved["to"].items()):
                ec2 = ec2_in(region)
                for name in entry.launch_templates:  # (only templates tagged for the spec, as a rollout)
                    if _tags(_template(ec2, name, region).get("Tags")).get(TAG_ROLLOUT) != spec.name:
                        raise RolloutError(f"launch template {name} in {region} is not tagged {TAG_ROLLOUT}="
                                           f"{spec.name}: not rolled back")
                versions = point_templates(ec2, entry, image_id, f"{spec.name} {entry.channel} rolled back to "
                                                                 f"{image_id}")
                done += [f"launch template {name} in {region}: version {version['VersionNumber']} names "
                         f"{image_id}" + (" (its default)" if entry.set_default else "")
                         for name, version in versions.items()]
    return done


def start_refreshes(autoscaling, entry: Rollout, since) -> dict[str, str]:
    """An instance refresh of each group of ``entry`` (the one started at or after ``since``, when the templates
    named the image, if there is one: an earlier try started it): {group: refresh id}."""
    started = {}
    since = since.replace(microsecond=0)  # (AWS gives a refresh's start to the second)
    for group in entry.auto_scaling_groups:
        ours = [refresh for refresh in autoscaling.describe_instance_refreshes(
            AutoScalingGroupName=group)["InstanceRefreshes"] if refresh["StartTime"] >= since]
        if ours:
            started[group] = ours[0]["InstanceRefreshId"]
            log.info("Auto Scaling group %s: instance refresh %s started already (%s)", group,
                     started[group], ours[0]["Status"])
            continue
        started[group] = autoscaling.start_instance_refresh(
            AutoScalingGroupName=group, Strategy="Rolling",
            Preferences={"MinHealthyPercentage": entry.min_healthy_percentage})["InstanceRefreshId"]
        log.info("Auto Scaling group %s: instance refresh %s started (minimum healthy %d%%)", group,
                 started[group], entry.min_healthy_percentage)
    return started


def follow(autoscaling, group: str, refresh_id: str, wait: Waiter, wait_for) -> dict:
    """The refresh, once over (``wait``: in the triggerer, so that no worker slot is held meanwhile;
    ``wait_for(state, resources)`` makes the build's wait). Raises :class:`RolloutError` unless it succeeded."""
    resources = {"AutoScalingGroupName": group, "InstanceRefreshIds": [refresh_id]}
    [refresh] = autoscaling.describe_instance_refreshes(**resources)["InstanceRefreshes"]
    if refresh["Status"] not in REFRESH_ENDS:  # (the waiter's success states: this step judges how it ended)
        outcome: WaitOutcome = wait(autoscaling, wait_for(REFRESH_FINISHED, resources))
        [refresh] = outcome.answer["InstanceRefreshes"]
    shown = (f"Auto Scaling group {group}: instance refresh {refresh_id} {refresh['Status']}"
             + (f" ({refresh['StatusReason']})" if refresh.get("StatusReason") else "")
             + (f", {refresh['PercentageComplete']}% complete" if "PercentageComplete" in refresh else ""))
    if refresh["Status"] != SUCCESSFUL:
        raise RolloutError(f"rollout failed: {shown}; the channel stays (the image passed its tests)")
    log.info("%s", shown)
    return refresh
