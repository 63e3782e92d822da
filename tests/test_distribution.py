"""Distribution, in real DAG runs on the local cloud's machines: a tested image copied into two more regions at
once and shared, its channel moved in all three; a copy that fails fails the run, moves no channel anywhere and
leaves no half-made copy. (The bad specs are in tests/fixtures/bad_specs/distribute-*.yaml.)
"""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from image_factory.build import (
    TAG_BUILD,
    TAG_COMPLETE,
    TAG_ORIGIN,
    TAG_ROLE,
    TAG_SOURCE_IMAGE,
    TAG_SOURCE_REGION,
    TAG_SPEC,
    TAG_SPEC_HASH,
    TAG_TESTS,
    build_id_for,
    tag_dict,
)
from image_factory.inventory import builder_resources
from image_factory.sbom import IAM_ACTIONS, TAG_SBOM
from image_factory.steps.image import find as find_images
from localcloud.cloud import SBOM_BUCKET
from localcloud.runner import airflow_env, migrate, run_dag

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT / "include" / "examples" / "shopspinner-global-image.yaml"
NAME, COPIES, OWN = "shopspinner-global-image", ("us-east-1", "eu-central-1"), "eu-west-1"
FAILING, FAILING_REGION = "distribution-fails", "us-west-2"
ACCOUNT = "123456789012"
ORGANIZATION = "arn:aws:organizations::111122223333:organization/o-exampleorgid"
UNIT = "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-abcd-12345678"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def client(cloud, service: str, region: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # noqa: S106 emulator


def channel(cloud, name: str, region: str) -> str | None:
    ssm = client(cloud, "ssm", region)
    try:
        return ssm.get_parameter(Name=f"/image-factory/{name}/latest")["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None


@pytest.fixture(scope="module")
def runs(local_cloud, tmp_path_factory):
    """Two builds at once: the example spec (its copies succeed), and one whose copy into us-west-2 fails (the
    local cloud fails it, as a copy on AWS can fail)."""
    work = tmp_path_factory.mktemp("distribution")
    homes = [tmp_path_factory.mktemp(f"airflow-distribution-{i}") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda home: migrate(airflow_env(local_cloud, home)), homes))
    good, bad = work / "good", work / "bad"
    good.mkdir()
    bad.mkdir()
    (good / EXAMPLE.name).write_text(EXAMPLE.read_text())
    (bad / f"{FAILING}.yaml").write_text(textwrap.dedent(f"""\
        image:
          name: {FAILING}
          origin: resolve:ssm:{AL2023}
          region: {OWN}
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure: {{tool: shell, server_role: appserver}}
          test: {{tool: testinfra, tests: appserver}}
          distribute: {{regions: [{FAILING_REGION}], share_with: {{accounts: ["{ACCOUNT}"]}}}}
          promote: {{channels: [latest]}}
        """))
    # The good build's first try of distribute_image fails once right after its CopyImage calls: the retry must
    # find those copies, not make more.
    good_env = airflow_env(local_cloud, homes[0], specs_folder=str(good), retry_delay="1")
    good_env.update(IMAGE_FACTORY_FAULTS="after:copy*once", IMAGE_FACTORY_FAULTS_STATE=str(work))
    local_cloud.reset_stats()
    local_cloud.configure(fail_copies_to=[FAILING_REGION])
    try:
        with ThreadPoolExecutor(2) as pool:
            distributed, failed = pool.map(lambda job: run_dag(*job), [
                (NAME, good_env), (FAILING, airflow_env(local_cloud, homes[1], specs_folder=str(bad)))])
    finally:
        local_cloud.configure(fail_copies_to=[])
    for result in (distributed, failed):  # for a look when a test fails
        (work / f"{result.dag_id}.log").write_text(result.output)
    calls = local_cloud.stats()["calls"]
    yield distributed, failed, calls
    for name, regions in ((NAME, (OWN, *COPIES)), (FAILING, (OWN, FAILING_REGION))):
        for region in regions:
            ssm, ec2 = client(local_cloud, "ssm", region), client(local_cloud, "ec2", region)
            if channel(local_cloud, name, region):
                ssm.delete_parameter(Name=f"/image-factory/{name}/latest")
            for image in ec2.describe_images(Owners=["self"], Filters=[
                    {"Name": f"tag:{TAG_SPEC}", "Values": [name]}])["Images"]:
                ec2.deregister_image(ImageId=image["ImageId"])


def test_a_distributed_build_leaves_a_tagged_shared_copy_and_the_channel_in_every_region(runs, local_cloud):
    distributed, _, _ = runs
    assert distributed.succeeded, distributed.output[-5000:]
    build_id = build_id_for(NAME, distributed.run_id)
    own = client(local_cloud, "ec2", OWN)
    [original] = find_images(own, build_id)
    original_tags = tag_dict(original["Tags"])
    assert original_tags[TAG_TESTS] == "passed"
    assert channel(local_cloud, NAME, OWN) == original["ImageId"]
    images = {OWN: original}
    for region in COPIES:
        ec2 = client(local_cloud, "ec2", region)
        [copy] = find_images(ec2, build_id)  # one copy, found by the build's tag
        images[region] = copy
        tags = tag_dict(copy["Tags"])
        assert copy["State"] == "available" and copy["Name"] == original["Name"]
        for key in (TAG_SPEC, TAG_BUILD, TAG_SPEC_HASH, TAG_ORIGIN, TAG_ROLE, TAG_TESTS, "team"):
            assert tags[key] == original_tags[key], key
        assert (tags[TAG_SOURCE_IMAGE], tags[TAG_SOURCE_REGION], tags[TAG_COMPLETE]) == (
            original["ImageId"], OWN, "true")
        assert channel(local_cloud, NAME, region) == copy["ImageId"]  # each region's channel: its own copy
        [snapshot] = [m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"] if "Ebs" in m]
        assert tag_dict(ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["Tags"])[TAG_BUILD] == build_id
    # Shared in every region: launch permissions on each image, create-volume permission on its snapshots.
    for region, image in images.items():
        ec2 = client(local_cloud, "ec2", region)
        permissions = ec2.describe_image_attribute(ImageId=image["ImageId"], Attribute="launchPermission")[
            "LaunchPermissions"]
        assert {"UserId": ACCOUNT} in permissions, region
        assert {"OrganizationArn": ORGANIZATION} in permissions and {"OrganizationalUnitArn": UNIT} in permissions
        for mapping in image["BlockDeviceMappings"]:
            volume = ec2.describe_snapshot_attribute(SnapshotId=mapping["Ebs"]["SnapshotId"],
                                                     Attribute="createVolumePermission")
            assert {"UserId": ACCOUNT} in volume["CreateVolumePermissions"], region
    # All copies at once: two CopyImage calls, and one deferral that waited in both regions; the retry after the
    # fault found the copies the first try made.
    log = distributed.task_logs["distribute_image"]
    assert "transient fault injected at after:copy" in distributed.output
    assert log.count("created image copy") == 2 and log.count("of this build exists already") == 2
    assert log.count("deferred to the triggerer") == 1 and "in us-east-1, " in log
    promote_log = distributed.task_logs["promote"]
    event, _ = json.JSONDecoder().raw_decode(promote_log.split("promotion event: ", 1)[1])
    assert event["copies"] == {region: images[region]["ImageId"] for region in COPIES}
    assert event["regions"] == sorted([OWN, *COPIES])
    assert builder_resources(own, client(local_cloud, "ssm", OWN), build_id) == []


def test_an_instance_of_a_copy_in_another_region_boots_with_the_role_s_files(runs, local_cloud):
    distributed, _, _ = runs
    assert distributed.succeeded
    build_id = build_id_for(NAME, distributed.run_id)
    [original] = find_images(client(local_cloud, "ec2", OWN), build_id)
    [copy] = find_images(client(local_cloud, "ec2", "us-east-1"), build_id)
    layers = local_cloud.machines_list()["images"]
    assert layers[copy["ImageId"]]["layers"] == layers[original["ImageId"]]["layers"] != []
    assert layers[copy["ImageId"]]["region"] == "us-east-1"
    assert local_cloud.shell(copy["ImageId"], "us-east-1",
                             ["grep", "-q", "^listen_port = 8080$", "/etc/shopspinner/appserver.conf"]) == 0


def test_a_copy_that_fails_fails_the_run_moves_no_channel_and_leaves_no_half_made_copy(runs, local_cloud):
    _, failed, _ = runs
    assert failed.state == "failed"
    assert failed.task_states["test_image"] == "success"
    assert failed.task_states["distribute_image"] == "failed"
    assert "promote" not in failed.task_states and failed.task_states["tear_down"] == "success"
    assert f"{FAILING_REGION}: image_available" in failed.task_logs["distribute_image"]
    assert "terminal failure state" in failed.task_logs["distribute_image"]
    for region in (OWN, FAILING_REGION):
        assert channel(local_cloud, FAILING, region) is None, region
    build_id = build_id_for(FAILING, failed.run_id)
    assert find_images(client(local_cloud, "ec2", FAILING_REGION), build_id) == []  # the failed copy is gone
    assert "removed half-made copies in us-west-2" in failed.task_logs["tear_down"]
    [original] = find_images(client(local_cloud, "ec2", OWN), build_id)  # the tested original stays
    assert tag_dict(original["Tags"])[TAG_COMPLETE] == "true"
    assert builder_resources(client(local_cloud, "ec2", OWN), client(local_cloud, "ssm", OWN), build_id) == []


def test_the_iam_policy_grants_what_distribution_calls(runs):
    _, _, calls = runs
    policy = json.loads((PROJECT / "include" / "iam" / "image-factory-policy.json").read_text())
    granted = {action for statement in policy["Statement"] for action in
               ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    assert {"ec2:CopyImage", "ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute"} <= set(calls)
    assert calls["ec2:CopyImage"] == 3  # two copies of one build (its retry made none), one of the other
    # (S3's calls by their IAM actions: CopyObject needs GetObject and PutObject.)
    assert {action for call in calls for action in IAM_ACTIONS.get(call, (call,))} - granted == set()


def test_the_command_line_shows_a_copy_its_source_and_its_channel(runs, local_cloud):
    from tests.test_cli import cli_env, run_cli

    distributed, _, _ = runs
    assert distributed.succeeded
    build_id = build_id_for(NAME, distributed.run_id)
    [original] = find_images(client(local_cloud, "ec2", OWN), build_id)
    [copy] = find_images(client(local_cloud, "ec2", "eu-central-1"), build_id)
    # The copy points to its original's SBOM (distribution copies tags): one document for both.
    assert tag_dict(copy["Tags"])[TAG_SBOM] == tag_dict(original["Tags"])[TAG_SBOM] == (
        f"s3://{SBOM_BUCKET}/sboms/{NAME}/{original['ImageId']}.cdx.json")
    env = cli_env(AIRFLOW_CONN_AWS_DEFAULT=local_cloud.env()["AIRFLOW_CONN_AWS_DEFAULT"])
    listed = run_cli("list", NAME, "--region", "eu-central-1", env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(copy["ImageId"])]
    assert row.split()[-2:] == [f"{original['ImageId']}@{OWN}", "latest"]
    shown = run_cli("show", copy["ImageId"], "--region", "eu-central-1", env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert f"  copy of: {original['ImageId']}@{OWN}" in lines
    assert any(line.startswith(f"  copy of {original['ImageId']}") for line in lines)  # then the original's lineage
    assert any("root origin: owner" in line for line in lines)


def test_a_promotion_refused_in_one_region_puts_the_channel_back_in_the_others(local_cloud):
    """All or none: AWS denies the channel's write in the build's own region (moved last); the copies' regions
    get back what they named before (an older image, or no channel at all)."""
    from botocore.exceptions import ClientError

    from image_factory.steps import channels

    name, older = "all-or-none", "ami-0000000000000a001"
    images = {"us-east-1": "ami-0000000000000a002", "eu-central-1": "ami-0000000000000a003",
              OWN: "ami-0000000000000a004"}

    def ssm_in(region):
        return client(local_cloud, "ssm", region)

    ssm_in("us-east-1").put_parameter(Name=f"/image-factory/{name}/latest", Value=older, Type="String",
                                      DataType="aws:ec2:image")
    local_cloud.configure(deny=[f"ssm:PutParameter@{OWN}"])
    try:
        with pytest.raises(ClientError, match="AccessDenied"):
            channels.move_everywhere(ssm_in, name, ["latest"], images, {"status": "passed"}, "/image-factory")
        refused = {region: channel(local_cloud, name, region) for region in images}
    finally:
        local_cloud.configure(deny=[])
    assert refused == {"us-east-1": older, "eu-central-1": None, OWN: None}
    try:
        moved = channels.move_everywhere(ssm_in, name, ["latest"], images, {"status": "passed"}, "/image-factory")
        assert {region: channel(local_cloud, name, region) for region in images} == images
        # us-east-1's history: the older image, the refused promotion, its undoing, this one
        assert moved["us-east-1"] == {"latest": 4} and moved[OWN] == {"latest": 1}
    finally:
        for region in images:
            ssm_in(region).delete_parameter(Name=f"/image-factory/{name}/latest")
