"""The steps as plain functions against the EC2 emulator: least access, idempotence, teardown order."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from image_factory import resources
from image_factory.build import Build
from image_factory.errors import PermanentError
from image_factory.inventory import builder_resources
from image_factory.settings import Settings, SettingsError
from image_factory.spec import parse_spec
from image_factory.steps import image, infrastructure, instance, origin, teardown

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SPEC = f"""
image:
  name: steps-test-image
  origin: resolve:ssm:{AL2023}
  region: eu-west-1
  subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
  egress_ports: [443, 53]
"""


#: The local cloud's own-VPC range (its machines have addresses in 198.18.0.0/15 only), set for the module.
CLOUD_SETTINGS: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _cloud_settings(local_cloud):
    env = local_cloud.env()
    CLOUD_SETTINGS.update(builder_vpc_cidr=env["AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_CIDR"],
                          provisioner_cidr=env["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"])


def make_build(text: str = SPEC, **settings) -> Build:
    spec = parse_spec(text)
    values = {"provisioner_cidr": "127.0.0.1/32", "poll_interval": 1, **CLOUD_SETTINGS, **settings}
    return Build(spec=spec, spec_hash="0" * 16, run_id=f"test-{uuid.uuid4()}", settings=Settings(**values))


def with_subnet(build: Build, subnet_id: str) -> Build:
    """The build as the steps after step 2 see it: ${IMAGE_BUILDER_SUBNET_ID} resolved."""
    return dataclasses.replace(build, spec=build.spec.model_copy(update={"subnet": subnet_id}))


@pytest.fixture
def build(ec2, ssm):
    made = make_build()
    yield made
    teardown.tear_down(ec2, ssm, made.build_id, 1)
    assert builder_resources(ec2, ssm, made.build_id) == []


def test_security_group_lets_in_only_ssh_from_the_provisioner_and_out_only_the_spec_ports(ec2, ssm, build):
    infra = infrastructure.create(ec2, ssm, build)
    group = ec2.describe_security_groups(GroupIds=[infra.security_group_id])["SecurityGroups"][0]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", 22, 22, [build.settings.provisioner_cidr])]
    egress = sorted((p["IpProtocol"], p["FromPort"]) for p in group["IpPermissionsEgress"])
    assert egress == [("tcp", 53), ("tcp", 443), ("udp", 53)]


def test_a_rule_call_sent_again_after_a_lost_answer_counts_as_done(ec2, ssm, build):
    infra = infrastructure.create(ec2, ssm, build)
    ssh_in = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
               "IpRanges": [{"CidrIp": build.settings.provisioner_cidr}]}]
    with pytest.raises(Exception, match=r"InvalidPermission\.Duplicate"):  # what AWS answers the second call
        ec2.authorize_security_group_ingress(GroupId=infra.security_group_id, IpPermissions=ssh_in)
    with infrastructure.rules_as_asked():
        ec2.authorize_security_group_ingress(GroupId=infra.security_group_id, IpPermissions=ssh_in)
    with pytest.raises(Exception, match="InvalidParameterValue"), infrastructure.rules_as_asked():
        ec2.authorize_security_group_ingress(GroupId=infra.security_group_id, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "not-a-cidr"}]}])


def test_ssh_from_anywhere_is_refused_unless_the_spec_opts_in(ec2, ssm):
    wide = make_build(provisioner_cidr="0.0.0.0/0")
    with pytest.raises(SettingsError, match="whole internet"):
        infrastructure.create(ec2, ssm, wide)
    assert builder_resources(ec2, ssm, wide.build_id) == []
    opted_in = make_build(SPEC + "  allow_ssh_from_anywhere: true\n", provisioner_cidr="0.0.0.0/0")
    try:
        infra = infrastructure.create(ec2, ssm, opted_in)
        group = ec2.describe_security_groups(GroupIds=[infra.security_group_id])["SecurityGroups"][0]
        assert group["IpPermissions"][0]["IpRanges"][0]["CidrIp"] == "0.0.0.0/0"
    finally:
        teardown.tear_down(ec2, ssm, opted_in.build_id, 1)


def test_every_step_run_twice_creates_each_resource_once(ec2, ssm, build):
    origin_image = origin.describe_origin(ec2, ssm, build.spec.origin, build.region)
    ami = origin_image["ImageId"]
    first = infrastructure.create(ec2, ssm, build)
    second = infrastructure.create(ec2, ssm, build)
    assert first == second
    outputs = first.outputs()
    launched = with_subnet(build, outputs["IMAGE_BUILDER_SUBNET_ID"])
    view = instance.launch_view(origin_image)
    made = instance.launch(ec2, launched, view, first.security_group_id, first.key_name)
    again = instance.launch(ec2, launched, view, first.security_group_id, first.key_name)
    assert again["instance_id"] == made["instance_id"]
    instance_id = made["instance_id"]
    registered = image.register(ec2, launched, instance_id, ami, f"steps-test-{launched.build_id}")
    again = image.register(ec2, launched, instance_id, ami, f"steps-test-{launched.build_id}")
    assert again["ImageId"] == registered["ImageId"]
    kinds = [kind for kind, _ in builder_resources(ec2, ssm, build.build_id)]
    assert sorted(kinds) == sorted(["instance", "key-pair", "security-group", "subnet", "vpc", "ssm-parameter"])
    assert len(image.find(ec2, build.build_id)) == 1
    image.deregister(ec2, registered)


def test_launched_instance_is_locked_down(ec2, ssm, build):
    origin_image = origin.describe_origin(ec2, ssm, build.spec.origin, build.region)
    infra = infrastructure.create(ec2, ssm, build)
    launched = with_subnet(build, infra.subnet_id)
    instance_id = instance.launch(ec2, launched, origin_image, infra.security_group_id, infra.key_name)["instance_id"]
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["MetadataOptions"]["HttpTokens"] == "required"
    assert "PublicIpAddress" not in described
    assert described["SubnetId"] == infra.subnet_id
    volume_id = described["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Encrypted"] is True
    [interface] = described["NetworkInterfaces"]
    assert interface["Attachment"]["DeleteOnTermination"] is True
    ec2.terminate_instances(InstanceIds=[instance_id])
    left = ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [infra.subnet_id]}])
    assert left["NetworkInterfaces"] == []
    # Terminated twice (test_image, then the teardown with the builder): as on AWS, no error.
    ec2.terminate_instances(InstanceIds=[instance_id])


def test_origin_errors_are_permanent_and_clear(ec2, ssm):
    with pytest.raises(PermanentError, match="ami-0123456789abcdef0 does not exist in eu-west-1"):
        origin.resolve_origin(ec2, ssm, "ami-0123456789abcdef0", "eu-west-1")
    with pytest.raises(PermanentError, match="SSM parameter /no/such/parameter does not exist"):
        origin.resolve_origin(ec2, ssm, "resolve:ssm:/no/such/parameter", "eu-west-1")


class DependencyViolationTwice:
    """An EC2 client whose DeleteSecurityGroup answers DependencyViolation twice, as AWS does while the
    instance that holds the group is still shutting down."""

    def __init__(self, ec2):
        self._ec2 = ec2
        self.refusals = 0

    def __getattr__(self, name):
        return getattr(self._ec2, name)

    def delete_security_group(self, **kwargs):
        from botocore.exceptions import ClientError

        if self.refusals < 2:
            self.refusals += 1
            raise ClientError({"Error": {"Code": "DependencyViolation", "Message": "in use"}}, "DeleteSecurityGroup")
        return self._ec2.delete_security_group(**kwargs)


def test_teardown_retries_a_security_group_still_in_use(ec2, ssm, build):
    infrastructure.create(ec2, ssm, build)
    flaky = DependencyViolationTwice(ec2)
    removed = resources.delete(flaky, ssm, resources.find(ec2, ssm, build.build_id), delay=0.01)
    assert flaky.refusals == 2
    assert any(r.startswith("sg-") for r in removed)
    assert builder_resources(ec2, ssm, build.build_id) == []


def test_teardown_by_the_setups_record_makes_no_lookups_and_leaves_nothing(local_cloud, ec2, ssm, build):
    origin_image = origin.describe_origin(ec2, ssm, build.spec.origin, build.region)
    infra = infrastructure.create(ec2, ssm, build)
    launched = with_subnet(build, infra.subnet_id)
    instance_id = instance.launch(ec2, launched, origin_image, infra.security_group_id, infra.key_name)["instance_id"]
    record = {"origin_ami": origin_image["ImageId"], **infra.to_dict(), "instance_id": instance_id}
    local_cloud.reset_stats()

    removed = teardown.tear_down(ec2, ssm, build.build_id, 1, record=record, image_complete=True)

    calls = local_cloud.stats()["calls"]
    # Only the terminate wait describes anything; every deletion names its resource from the record.
    assert [action for action in calls if ":Describe" in action] == ["ec2:DescribeInstances"]
    assert {calls[a] for a in ("ec2:TerminateInstances", "ec2:DeleteKeyPair", "ssm:DeleteParameter",
                               "ec2:DeleteSecurityGroup", "ec2:DeleteSubnet", "ec2:DeleteVpc")} == {1}
    assert sorted(removed) == sorted([instance_id, infra.key_name, infra.private_key_parameter,
                                      infra.security_group_id, infra.subnet_id, infra.vpc_id])
    assert builder_resources(ec2, ssm, build.build_id) == []


class StaleSubnetView:
    """EC2 whose subnet listing is the one every build started together read: before any of them made its own."""

    def __init__(self, ec2, vpc_id: str):
        self._ec2 = ec2
        self.seen = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
        self.creates = 0

    def __getattr__(self, name):
        return getattr(self._ec2, name)

    def describe_subnets(self, **kwargs):
        return self.seen if "Filters" in kwargs and kwargs["Filters"][0]["Name"] == "vpc-id" else \
            self._ec2.describe_subnets(**kwargs)

    def create_subnet(self, **kwargs):
        self.creates += 1
        return self._ec2.create_subnet(**kwargs)


def test_builds_started_together_in_a_shared_vpc_rarely_try_the_same_block(ec2, ssm):
    vpc_id = ec2.create_vpc(CidrBlock="10.215.0.0/21")["Vpc"]["VpcId"]  # 128 blocks of /28
    builds = [make_build(builder_vpc_id=vpc_id) for _ in range(8)]
    stale = StaleSubnetView(ec2, vpc_id)
    try:
        made = [infrastructure._ensure_subnet(stale, b, vpc_id) for b in builds]
        cidrs = [s["CidrBlock"] for s in ec2.describe_subnets(SubnetIds=made)["Subnets"]]
        assert len(set(made)) == len(set(cidrs)) == 8
        # From the first free block, the n-th build would try n blocks: 36 calls. Each from its own: 8, plus
        # one per (rare) block two builds both chose.
        assert stale.creates < 16, stale.creates
    finally:
        for b in builds:
            teardown.tear_down(ec2, ssm, b.build_id, 1)
        ec2.delete_vpc(VpcId=vpc_id)
