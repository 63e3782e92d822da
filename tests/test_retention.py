"""Retention: ten images of a spec on the local cloud (aged by its front), some protected; exactly the old
unprotected ones are deprecated or deleted, their snapshots with them, each verdict logged with its reason; a
dry run changes nothing; a second run does nothing new. The runs are real DAG runs (``airflow dags test``)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_SPEC, TAG_TESTS
from image_factory.retention import DELETE, DEPRECATE, KEEP, judge, survey
from image_factory.spec import Retention, channel_parameter
from localcloud.runner import airflow_env, run_dag

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SPEC = "retained-image"
RULES = Retention(keep=2, deprecate_after_days=30, delete_after_days=60, keep_failed_hours=24)
# Newest first: (age in days, tests, what protects it) -> the verdict that follows from RULES.
IMAGES = [
    (0, "passed", None, KEEP),            # the newest 2 ...
    (5, "failed", None, DELETE),          # (failed images do not count towards keep; 5 days > 24 hours)
    (10, "passed", None, KEEP),           # ... are kept
    (20, "passed", "channel", KEEP),
    (25, "passed", None, KEEP),           # beyond keep, too young to deprecate
    (35, "passed", "stopped instance", KEEP),
    (40, "passed", None, DEPRECATE),
    (50, "passed", "launch template", KEEP),
    (70, "passed", None, DELETE),         # an older launch template version names it: no protection
    (80, "failed", None, DELETE),
]


@pytest.fixture(scope="module")
def aged_images(local_cloud, ec2, ssm):
    """The ten images (ids, newest first), their protections in place, and one untagged image of 100 days."""
    made = {"instances": [], "images": [], "templates": [], "parameters": []}
    now = datetime.now(UTC)
    try:
        origin = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
        builder = ec2.run_instances(ImageId=origin, MinCount=1, MaxCount=1, InstanceType="t3.small")
        builder_id = builder["Instances"][0]["InstanceId"]
        made["instances"].append(builder_id)
        ec2.get_waiter("instance_running").wait(InstanceIds=[builder_id], WaiterConfig={"Delay": 1})
        ec2.stop_instances(InstanceIds=[builder_id])
        ec2.get_waiter("instance_stopped").wait(InstanceIds=[builder_id], WaiterConfig={"Delay": 1})
        ids, ages = [], {}
        for number, (age, tests, _, _) in enumerate(IMAGES):
            tags = {TAG_SPEC: SPEC, TAG_BUILD: f"bretention{number:03d}", TAG_COMPLETE: "true", TAG_TESTS: tests}
            image_id = ec2.create_image(InstanceId=builder_id, Name=f"{SPEC}-{number}", TagSpecifications=[{
                "ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]
            made["images"].append(image_id)
            ids.append(image_id)
            ages[image_id] = now - timedelta(days=age, hours=1)
        foreign = ec2.create_image(InstanceId=builder_id, Name="not-image-factory")["ImageId"]
        made["images"].append(foreign)
        ages[foreign] = now - timedelta(days=100)
        local_cloud.backdate_images(ages)
        protections = {what: ids[n] for n, (_, _, what, _) in enumerate(IMAGES) if what}
        # A channel (the spec's latest) names one.
        parameter = channel_parameter(SPEC, "latest")
        ssm.put_parameter(Name=parameter, Value=protections["channel"], Type="String", DataType="aws:ec2:image",
                          Overwrite=True)
        made["parameters"].append(parameter)
        # A stopped instance uses one.
        user = ec2.run_instances(ImageId=protections["stopped instance"], MinCount=1, MaxCount=1,
                                 InstanceType="t3.small")["Instances"][0]["InstanceId"]
        made["instances"].append(user)
        ec2.get_waiter("instance_running").wait(InstanceIds=[user], WaiterConfig={"Delay": 1})
        ec2.stop_instances(InstanceIds=[user])
        ec2.get_waiter("instance_stopped").wait(InstanceIds=[user], WaiterConfig={"Delay": 1})
        # A launch template: version 1 names the 70-day-old image; version 2, latest and default, the 50-day one.
        template = ec2.create_launch_template(LaunchTemplateName="retention-test", LaunchTemplateData={
            "ImageId": ids[8]})["LaunchTemplate"]["LaunchTemplateId"]
        made["templates"].append(template)
        ec2.create_launch_template_version(LaunchTemplateId=template, SourceVersion="1",
                                           LaunchTemplateData={"ImageId": protections["launch template"]})
        ec2.modify_launch_template(LaunchTemplateId=template, DefaultVersion="2")
        yield {"ids": ids, "foreign": foreign, "builder": builder_id}
    finally:
        for template in made["templates"]:
            ec2.delete_launch_template(LaunchTemplateId=template)
        for parameter in made["parameters"]:
            ssm.delete_parameter(Name=parameter)
        if made["instances"]:
            ec2.terminate_instances(InstanceIds=made["instances"])
            ec2.get_waiter("instance_terminated").wait(InstanceIds=made["instances"], WaiterConfig={"Delay": 1})
        left = {i["ImageId"]: i for i in ec2.describe_images(ImageIds=made["images"])["Images"]}
        for image in left.values():
            ec2.deregister_image(ImageId=image["ImageId"], DeleteAssociatedSnapshots=True)


@pytest.fixture(scope="module")
def retention_env(local_cloud, airflow_home, tmp_path_factory):
    specs = tmp_path_factory.mktemp("retention-specs")
    (specs / f"{SPEC}.yaml").write_text(textwrap.dedent(f"""\
        image:
          name: {SPEC}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          retention:
            keep: {RULES.keep}
            deprecate_after_days: {RULES.deprecate_after_days}
            delete_after_days: {RULES.delete_after_days}
            keep_failed_hours: {RULES.keep_failed_hours:g}
        """))
    return airflow_env(local_cloud, airflow_home, specs_folder=str(specs))


def _states(ec2, ids: list[str]) -> dict[str, tuple[str | None, list[str]]]:
    """image id -> (deprecation time, snapshot ids), for the images that still exist."""
    found = ec2.describe_images(ImageIds=ids, IncludeDeprecated=True)["Images"]
    return {i["ImageId"]: (i.get("DeprecationTime"), [m["Ebs"]["SnapshotId"] for m in i["BlockDeviceMappings"]
                                                      if "Ebs" in m]) for i in found}


def test_verdicts_follow_the_rules_and_protect_what_is_used(aged_images, ec2, ssm):
    found = survey(ec2, ssm, "eu-west-1", "/image-factory")
    verdicts = {v.image_id: v for v in judge([found], {SPEC: RULES})}
    assert {image_id: verdicts[image_id].action for image_id in aged_images["ids"]} == {
        image_id: expected for image_id, (*_, expected) in zip(aged_images["ids"], IMAGES, strict=True)}
    assert aged_images["foreign"] not in verdicts  # no Image Factory tag: never even looked at
    ids = aged_images["ids"]
    assert verdicts[ids[3]].reason == "a channel names it: /image-factory/retained-image/latest"
    assert verdicts[ids[5]].reason.startswith("instances use it: i-") and "(stopped)" in verdicts[ids[5]].reason
    assert verdicts[ids[7]].reason.startswith("launch templates name it: lt-") and " v2" in verdicts[ids[7]].reason
    assert "failed its tests" in verdicts[ids[1]].reason and "one of the newest 2" in verdicts[ids[2]].reason
    # Four listings, one page each here: the calls do not grow with the images.
    assert dict(found.calls) == {"ec2:DescribeImages": 1, "ec2:DescribeInstances": 1,
                                 "ec2:DescribeLaunchTemplateVersions": 1, "ssm:GetParametersByPath": 1}


def test_dry_run_changes_nothing_then_a_run_retires_exactly_the_old_unprotected_ones(aged_images, retention_env,
                                                                                     ec2):
    ids = aged_images["ids"]
    before = _states(ec2, [*ids, aged_images["foreign"]])
    dry = run_dag("image_factory_retention", retention_env, conf='{"dry_run": true}')
    assert dry.succeeded, dry.output[-3000:]
    log = dry.task_logs["retire_images"]
    assert f"would deprecate eu-west-1 {ids[6]}" in log
    for doomed in (ids[1], ids[8], ids[9]):
        assert f"would delete eu-west-1 {doomed}" in log
    assert _states(ec2, [*ids, aged_images["foreign"]]) == before

    run = run_dag("image_factory_retention", retention_env)
    assert run.succeeded, run.output[-3000:]
    log = run.task_logs["retire_images"]
    after = _states(ec2, [*ids, aged_images["foreign"]])
    deleted = {ids[1], ids[8], ids[9]}
    assert set(before) - set(after) == deleted
    for image_id in deleted:
        assert f"deleted eu-west-1 {image_id} and its snapshots" in log
        snapshots = before[image_id][1]
        assert snapshots and not ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snapshots}]
                                                        )["Snapshots"]
    assert after[ids[6]][0] is not None and before[ids[6]][0] is None  # deprecated
    assert all(after[i][0] is None for i in ids if i not in deleted | {ids[6]})
    assert after[aged_images["foreign"]] == before[aged_images["foreign"]]
    for image_id in (ids[3], ids[5], ids[7]):
        assert f"keep eu-west-1 {image_id}: " in log
    assert f"retention: {SPEC}: 3 deleted, 1 deprecated, 6 kept" in log

    again = run_dag("image_factory_retention", retention_env)
    assert again.succeeded, again.output[-3000:]
    log = again.task_logs["retire_images"]
    assert "deleted eu-west-1" not in log and "deprecated eu-west-1" not in log
    assert f"retention: {SPEC}: 1 deprecated already, 6 kept" in log
    assert _states(ec2, [*ids, aged_images["foreign"]]) == after


def test_the_local_cloud_deprecates_and_keeps_snapshots_as_aws_does(aged_images, ec2):
    image_id = ec2.create_image(InstanceId=aged_images["builder"], Name="deprecation-probe")["ImageId"]
    try:
        at = (datetime.now(UTC) + timedelta(days=2)).replace(second=30)
        ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=at)
        image = ec2.describe_images(ImageIds=[image_id], IncludeDeprecated=True)["Images"][0]
        assert image["DeprecationTime"] == at.strftime("%Y-%m-%dT%H:%M:00.000Z")  # to the minute, as AWS
        ec2.disable_image_deprecation(ImageId=image_id)
        assert "DeprecationTime" not in ec2.describe_images(ImageIds=[image_id])["Images"][0]
        snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        with pytest.raises(Exception, match=r"InvalidSnapshot\.InUse"):  # an image's snapshot: refused, as AWS
            ec2.delete_snapshot(SnapshotId=snapshot)
    finally:
        ec2.deregister_image(ImageId=image_id)
    # Deregistered without DeleteAssociatedSnapshots: the snapshot stays (and costs), as on AWS.
    assert ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
    ec2.delete_snapshot(SnapshotId=snapshot)
