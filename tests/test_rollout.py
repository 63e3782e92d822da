"""Rollout to the fleet, piece by piece on the local cloud: the spec's ``rollout`` checked at validate time, the
local cloud's instance refreshes (which moto lacks), the build's first-step check of the templates and groups,
a template's new version, and a refresh followed to its end, by a blocking wait and by the triggerer.
(A whole build that rolls out: tests/test_lifecycle.py.)"""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid

import boto3
import pytest

from image_factory.spec import SpecError, parse_spec
from image_factory.steps import rollout
from image_factory.steps.rollout import TAG_ROLLOUT, RolloutError
from image_factory.waits.blocking import Blocking
from image_factory.waits.protocol import Wait
from image_factory.waits.schedule import Schedule
from image_factory.waits.triggers import Ec2StateTrigger

REGION = "eu-west-1"
SPEC = "rollout-spec"


def client(cloud, service: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # noqa: S106 emulator


@pytest.fixture(scope="module")
def autoscaling(local_cloud):
    return client(local_cloud, "autoscaling")


def make_fleet(ec2, autoscaling, spec: str = SPEC, tagged: bool = True) -> tuple[str, str, str]:
    """A launch template (its default version with settings besides the image) and an empty Auto Scaling group
    launching from it, both tagged for ``spec``: (template, group, the image the template names)."""
    suffix = uuid.uuid4().hex[:8]
    template, group = f"web-lt-{suffix}", f"web-asg-{suffix}"
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": TAG_ROLLOUT, "Value": spec}] if tagged else [{"Key": "team", "Value": "web"}]
    ec2.create_launch_template(LaunchTemplateName=template, LaunchTemplateData={
        "ImageId": image, "InstanceType": "t3.micro", "UserData": "IyEvYmluL3NoCg=="},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}])
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group, LaunchTemplate={"LaunchTemplateName": template, "Version": "$Default"},
        MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{REGION}a"],
        Tags=[{**tag, "PropagateAtLaunch": False} for tag in tags])
    return template, group, image


def remove_fleet(ec2, autoscaling, template: str, group: str) -> None:
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName=group, ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateName=template)


@pytest.fixture
def fleet(ec2, autoscaling):
    template, group, image = make_fleet(ec2, autoscaling)
    yield template, group, image
    remove_fleet(ec2, autoscaling, template, group)


def entry(template: str, group: str | None = None, **more):
    body = {"channel": "latest", "launch_templates": [template],
            "auto_scaling_groups": [group] if group else [], **more}
    return parse_spec(spec_text(rollout=[body])).rollout[0]


def spec_text(rollout: list[dict], promote: str = "{channels: [latest], approval: [production]}") -> str:
    entries = "".join(f"\n    - {item}" for item in rollout)
    return textwrap.dedent(f"""\
        image:
          name: {SPEC}
          origin: ami-0123456789abcdef0
          region: {REGION}
          test: {{tool: testinfra, tests: appserver}}
          promote: {promote}
          rollout:""") + entries.replace("'", "") + "\n"


# --- the spec -------------------------------------------------------------------------------------------------

def test_a_rollout_channel_must_be_one_the_spec_promotes():
    with pytest.raises(SpecError) as error:
        parse_spec(spec_text([{"channel": "staging", "launch_templates": ["web-lt"]}]))
    assert [field for field, _ in error.value.problems] == ["image.rollout[0].channel"]
    assert "'staging' is not a channel of promote" in str(error.value)
    # An approval channel may be rolled out too; a template is required, a percentage is one.
    spec = parse_spec(spec_text([{"channel": "production", "launch_templates": ["web-lt"]}]))
    assert spec.rollout[0].set_default and spec.rollout[0].min_healthy_percentage == 90
    for bad in ({"channel": "latest", "launch_templates": []},
                {"channel": "latest", "launch_templates": ["web-lt"], "min_healthy_percentage": 101},
                {"channel": "latest", "launch_templates": ["a;b"]}):
        with pytest.raises(SpecError, match=r"image\.rollout\[0\]"):
            parse_spec(spec_text([bad]))


# --- the local cloud's instance refreshes ---------------------------------------------------------------------

def refreshes(autoscaling, group: str) -> list[dict]:
    return autoscaling.describe_instance_refreshes(AutoScalingGroupName=group)["InstanceRefreshes"]


def test_the_local_cloud_runs_instance_refreshes_and_fails_those_it_is_told_to(local_cloud, autoscaling, fleet):
    _, group, _ = fleet
    first = autoscaling.start_instance_refresh(AutoScalingGroupName=group,
                                               Preferences={"MinHealthyPercentage": 75})["InstanceRefreshId"]
    [shown] = refreshes(autoscaling, group)
    assert (shown["InstanceRefreshId"], shown["Status"]) == (first, "Pending")
    assert shown["Preferences"]["MinHealthyPercentage"] == 75
    with pytest.raises(autoscaling.exceptions.InstanceRefreshInProgressFault):  # one at a time, as on AWS
        autoscaling.start_instance_refresh(AutoScalingGroupName=group)
    deadline = time.monotonic() + 30
    while (status := refreshes(autoscaling, group)[0]["Status"]) != "Successful":
        assert status in ("Pending", "InProgress") and time.monotonic() < deadline, status
        time.sleep(0.2)
    local_cloud.configure(fail_instance_refreshes=[group])
    try:
        second = autoscaling.start_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"]
        third_group_refresh = refreshes(autoscaling, group)
        assert [r["InstanceRefreshId"] for r in third_group_refresh] == [second, first]  # newest first
        while (failed := refreshes(autoscaling, group)[0])["Status"] != "Failed":
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        assert "fail_instance_refreshes" in failed["StatusReason"]
    finally:
        local_cloud.configure(fail_instance_refreshes=[])
    autoscaling.start_instance_refresh(AutoScalingGroupName=group)
    autoscaling.cancel_instance_refresh(AutoScalingGroupName=group)
    assert refreshes(autoscaling, group)[0]["Status"] == "Cancelled"
    with pytest.raises(autoscaling.exceptions.ClientError, match="not found"):
        autoscaling.start_instance_refresh(AutoScalingGroupName=f"{group}-missing")


# --- the first step's check ------------------------------------------------------------------------------------

def test_the_check_names_a_missing_or_untagged_template_or_group_and_what_to_do(ec2, autoscaling, fleet):
    template, group, _ = fleet
    rollout.check(ec2, autoscaling, SPEC, [entry(template, group)], REGION)  # all there, all tagged

    with pytest.raises(RolloutError, match=f"launch template {template}-x does not exist in {REGION}"):
        rollout.check(ec2, autoscaling, SPEC, [entry(f"{template}-x", group)], REGION)
    with pytest.raises(RolloutError, match=f"Auto Scaling group {group}-x does not exist in {REGION}"):
        rollout.check(ec2, autoscaling, SPEC, [entry(template, f"{group}-x")], REGION)
    # Tagged for another spec: not this one's to change.
    with pytest.raises(RolloutError, match=f"launch template {template} in {REGION} is not tagged "
                                           f"{TAG_ROLLOUT}=other-spec: tag it so"):
        rollout.check(ec2, autoscaling, "other-spec", [entry(template, group)], REGION)
    untagged_template, untagged_group, _ = make_fleet(ec2, autoscaling, tagged=False)
    try:
        with pytest.raises(RolloutError, match=f"Auto Scaling group {untagged_group} in {REGION} is not tagged"):
            rollout.check(ec2, autoscaling, SPEC, [entry(template, untagged_group)], REGION)
    finally:
        remove_fleet(ec2, autoscaling, untagged_template, untagged_group)


def test_the_check_names_the_action_to_grant_when_a_call_is_denied(local_cloud, ec2, autoscaling, fleet):
    template, group, _ = fleet
    for action, denied in (("ec2:ModifyLaunchTemplate", "ec2:ModifyLaunchTemplate"),
                           ("autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingGroups")):
        local_cloud.configure(deny=[f"{denied}@{REGION}"])
        try:
            with pytest.raises(RolloutError, match=f"{action} on .* is denied: grant it"):
                rollout.check(ec2, autoscaling, SPEC, [entry(template, group)], REGION)
        finally:
            local_cloud.configure(deny=[])


# --- the template's new version, the refresh ----------------------------------------------------------------------

def test_a_template_gets_a_default_version_naming_the_image_once_and_keeps_its_other_settings(ec2, fleet):
    template, _, image = fleet
    new_image = next(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"] if i["ImageId"] != image)
    made = rollout.point_templates(ec2, entry(template), new_image, "rolled out")[template]
    again = rollout.point_templates(ec2, entry(template), new_image, "rolled out")[template]  # a retry
    assert made["VersionNumber"] == again["VersionNumber"] == 2
    [default] = ec2.describe_launch_template_versions(LaunchTemplateName=template,
                                                      Versions=["$Default"])["LaunchTemplateVersions"]
    assert default["VersionNumber"] == 2 and default["VersionDescription"] == "rolled out"
    assert default["LaunchTemplateData"]["ImageId"] == new_image
    assert default["LaunchTemplateData"]["InstanceType"] == "t3.micro"  # from the version it was made from
    assert default["LaunchTemplateData"]["UserData"] == "IyEvYmluL3NoCg=="
    # Without set_default, the new version is the latest only.
    rollout.point_templates(ec2, entry(template, set_default=False), image, "back")
    described = ec2.describe_launch_templates(LaunchTemplateNames=[template])["LaunchTemplates"][0]
    assert (described["DefaultVersionNumber"], described["LatestVersionNumber"]) == (2, 3)


def refresh_wait(aws_connection: str, state: str, resources: dict) -> Wait:
    return Wait(state, resources, Schedule.every(0.3), 60, region=REGION, connection=aws_connection)


def test_a_refresh_is_started_once_and_followed_to_its_end(ec2, autoscaling, fleet, aws_connection):
    template, group, image = fleet
    versions = rollout.point_templates(ec2, entry(template, group), image, "same image")
    since = versions[template]["CreateTime"]
    started = rollout.start_refreshes(autoscaling, entry(template, group), since)
    assert rollout.start_refreshes(autoscaling, entry(template, group), since) == started  # a retry: no second
    ended = rollout.follow(autoscaling, group, started[group], Blocking(),
                           lambda state, resources: refresh_wait(aws_connection, state, resources))
    assert ended["Status"] == "Successful" and ended["PercentageComplete"] == 100


def test_a_failed_refresh_fails_the_rollout_saying_which_and_why(local_cloud, ec2, autoscaling, fleet,
                                                                 aws_connection):
    template, group, image = fleet
    local_cloud.configure(fail_instance_refreshes=[group])
    try:
        [refresh_id] = rollout.start_refreshes(autoscaling, entry(template, group),
                                               rollout.point_templates(ec2, entry(template), image, "x")[
                                                   template]["CreateTime"]).values()
        with pytest.raises(RolloutError, match=f"rollout failed: Auto Scaling group {group}: instance refresh "
                                               f"{refresh_id} Failed .*fail_instance_refreshes.*the channel stays"):
            rollout.follow(autoscaling, group, refresh_id, Blocking(),
                           lambda state, resources: refresh_wait(aws_connection, state, resources))
    finally:
        local_cloud.configure(fail_instance_refreshes=[])


def test_the_triggerer_follows_a_refresh_and_hands_its_end_back(autoscaling, fleet, aws_connection):
    _, group, _ = fleet
    refresh_id = autoscaling.start_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"]
    resources = {"AutoScalingGroupName": group, "InstanceRefreshIds": [refresh_id]}
    trigger = Ec2StateTrigger(refresh_wait(aws_connection, rollout.REFRESH_FINISHED, resources))

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), 60))
    assert event.payload["status"] == "success" and event.payload["polls"] >= 2  # it polled until the end
    assert event.payload["answer"]["InstanceRefreshes"][0]["Status"] == "Successful"


# --- the DAG, the plan -----------------------------------------------------------------------------------------

def test_roll_out_follows_either_promotion_and_render_shows_it(tmp_path):
    from airflow.task.trigger_rule import TriggerRule

    from image_factory.dag import build_dag
    from image_factory.plan import plan
    from image_factory.settings import Settings
    from image_factory.spec import load_spec

    path = tmp_path / f"{SPEC}.yaml"
    path.write_text(spec_text([{"channel": "production", "launch_templates": ["web-lt"],
                                "auto_scaling_groups": ["web-asg"]}]))
    loaded = load_spec(path)
    dag = build_dag(loaded, Settings())
    dag.validate()  # (a task after the setup must have ALL_SUCCESS: roll_out is not one)
    task = dag.get_task("roll_out")
    # After whichever promotion moved the channel: promote may be skipped (an overridden image) while a person
    # approves, or the approval rejected while promote moved its channels.
    assert task.upstream_task_ids == {"promote", "promote_approved"}
    assert task.trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    shown = next(t for t in plan(loaded, {}, {}, Settings(), None)["tasks"] if t["task_id"] == "roll_out")
    assert shown["after"] == ["promote", "promote_approved"]
    assert shown["channels"]["production"]["auto_scaling_groups"] == ["web-asg"]
    assert "rolls the channels that moved out to the fleet" in shown["does"]
    without = tmp_path / "plain" / f"{SPEC}.yaml"
    without.parent.mkdir()
    without.write_text(spec_text([]).replace("  rollout:\n", ""))
    assert "roll_out" not in build_dag(load_spec(without), Settings()).task_ids


def test_a_build_whose_template_is_not_tagged_for_it_fails_in_its_first_step_before_anything_is_made(
        local_cloud, airflow_home, ec2, ssm, autoscaling, tmp_path):
    from image_factory.build import build_id_for
    from image_factory.inventory import builder_resources
    from localcloud.runner import airflow_env, run_dag

    name = "rollout-untagged-image"
    template, group, _ = make_fleet(ec2, autoscaling, spec="another-spec")
    try:
        (tmp_path / "specs").mkdir()
        (tmp_path / "specs" / f"{name}.yaml").write_text(
            spec_text([{"channel": "latest", "launch_templates": [template], "auto_scaling_groups": [group]}])
            .replace(SPEC, name).replace("ami-0123456789abcdef0", ec2.describe_images(
                Owners=["amazon"])["Images"][0]["ImageId"]))
        local_cloud.reset_stats()
        result = run_dag(name, airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs")))
        calls = local_cloud.stats()["calls"]
    finally:
        remove_fleet(ec2, autoscaling, template, group)
    assert result.state == "failed" and result.task_states["create_builder_network"] == "failed"
    assert "launch_builder_instance" not in result.task_states and "roll_out" not in result.task_states
    assert (f"rollout: launch template {template} in {REGION} is not tagged {TAG_ROLLOUT}={name}: tag it so"
            in result.task_logs["create_builder_network"])
    assert not {"ec2:CreateSubnet", "ec2:CreateSecurityGroup", "ec2:ImportKeyPair", "ec2:RunInstances",
                "ec2:CreateLaunchTemplateVersion", "autoscaling:StartInstanceRefresh"} & set(calls)
    assert builder_resources(ec2, ssm, build_id_for(name, result.run_id)) == []
