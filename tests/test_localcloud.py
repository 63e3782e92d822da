"""The local cloud's front (localcloud/proxy.py): forwarding to moto, call counts, throttling, loopback only; the
addresses of both models (the machines of tests/test_machines.py, and the single sshd)."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud.authorized_keys import BUILD_TAG
from localcloud.chain import call_name
from localcloud.cloud import LocalCloud, LocalCloudError

REGION = "eu-west-1"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
# botocore's ``max_attempts`` counts retries (1 would still retry once); ``total_max_attempts`` counts attempts.
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})
STANDARD_RETRIES = Config(retries={"mode": "standard", "max_attempts": 10})
SIGNED = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/eu-west-1/ec2/aws4_request, "
                           "SignedHeaders=host;x-amz-date, Signature=0123abcd"}


def client(cloud, service: str, config: Config | None = None):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION, config=config,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator


@pytest.fixture(autouse=True)
def untouched_front(local_cloud):
    """Every test starts from zero counters and leaves throttling off, whatever happens in it."""
    local_cloud.configure(throttle_rate=0)
    local_cloud.reset_stats()
    yield
    local_cloud.configure(throttle_rate=0, throttle_seed=0)


def raw(cloud, method: str, path: str, body=None, headers=None, port: int | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port or cloud.state().ec2_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=not isinstance(
            body, bytes | str | type(None)))
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# --- counting ---------------------------------------------------------------------------------------


def test_calls_are_counted_exactly_by_service_and_action(local_cloud):
    ec2, ssm = client(local_cloud, "ec2"), client(local_cloud, "ssm")
    vpc_id = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    ec2.describe_vpcs()
    group = ec2.create_security_group(GroupName=f"front-{uuid.uuid4().hex[:8]}", Description="counted",
                                      VpcId=vpc_id)["GroupId"]
    assert ssm.get_parameter(Name=AL2023)["Parameter"]["Value"].startswith("ami-")

    stats = local_cloud.stats()
    assert stats["calls"] == {"ec2:DescribeVpcs": 2, "ec2:CreateSecurityGroup": 1, "ssm:GetParameter": 1}
    assert stats["throttled"] == {}

    ec2.delete_security_group(GroupId=group)
    assert local_cloud.reset_stats()["calls"] == {}
    assert local_cloud.stats()["calls"] == {}


def test_errors_from_moto_are_relayed_and_counted(local_cloud):
    ec2, ssm = client(local_cloud, "ec2", NO_RETRIES), client(local_cloud, "ssm", NO_RETRIES)
    with pytest.raises(ClientError) as ec2_error:
        ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])
    with pytest.raises(ClientError) as ssm_error:
        ssm.get_parameter(Name=f"/front/{uuid.uuid4().hex}")
    assert ec2_error.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    assert ssm_error.value.response["Error"]["Code"] == "ParameterNotFound"
    assert ec2_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert local_cloud.stats()["calls"] == {"ec2:DescribeInstances": 1, "ssm:GetParameter": 1}


def test_a_chunked_query_protocol_request_is_forwarded_and_counted(local_cloud):
    chunks = iter([b"Action=DescribeVpcs", b"&Version=2016-11-15"])
    status, headers, body = raw(local_cloud, "POST", "/", chunks, {
        **SIGNED, "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert status == 200, body
    assert b"<DescribeVpcsResponse" in body
    assert int(headers["Content-Length"]) == len(body)
    assert local_cloud.stats()["calls"] == {"ec2:DescribeVpcs": 1}


def test_a_request_that_expects_100_continue_is_told_to_go_on_before_it_sends_its_body(local_cloud):
    """botocore sends S3's PutObject with ``Expect: 100-continue`` and holds the body back until the interim answer
    comes (a second at most): the front must send it at once, not keep it in its write buffer with the answer."""
    body = b"the SBOMs of this spec go here\n"
    with socket.create_connection(("127.0.0.1", local_cloud.state().ec2_port), timeout=5) as sock:
        sock.sendall(f"PUT /image-factory-sboms/sboms/expect-test/.write-check HTTP/1.1\r\nHost: s3\r\n"
                     f"Authorization: {SIGNED['Authorization'].replace('/ec2/', '/s3/')}\r\n"
                     f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        interim = sock.recv(4096)  # (the body is not sent yet: without the interim answer, this waits 5 s and fails)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert local_cloud.stats()["calls"].get("s3:PutObject") == 1


def test_moto_api_passes_through_uncounted(local_cloud):
    front = raw(local_cloud, "GET", "/moto-api/")
    direct = raw(local_cloud, "GET", "/moto-api/", port=local_cloud.state().moto_port)
    assert front[0] == direct[0] == 200
    assert front[2] == direct[2]
    assert front[1]["Content-Type"] == direct[1]["Content-Type"]
    assert "Connection" not in front[1]  # moto's own hop-by-hop header stays on moto's side

    status, headers, body = raw(local_cloud, "HEAD", "/moto-api/")
    assert (status, body, headers["Content-Length"]) == (200, b"", direct[1]["Content-Length"])
    assert local_cloud.stats()["calls"] == {}


def test_the_fronts_own_endpoints(local_cloud):
    assert raw(local_cloud, "GET", "/_localcloud/nothing")[0] == 404
    assert raw(local_cloud, "POST", "/_localcloud/config", b"[1]")[0] == 400
    with pytest.raises(LocalCloudError, match="between 0 and 1"):
        local_cloud.configure(throttle_rate=1.5)
    assert local_cloud.configure(throttle_rate=0.25, throttle_seed=7) == {"throttle_rate": 0.25, "throttle_seed": 7}
    assert local_cloud.stats()["config"] == {"throttle_rate": 0.25, "throttle_seed": 7}


@pytest.mark.parametrize(("headers", "body", "expected"), [
    (SIGNED | {"Content-Type": "application/x-www-form-urlencoded"}, b"Version=2016-11-15&Action=RunInstances",
     "ec2:RunInstances"),
    ({"Authorization": SIGNED["Authorization"].replace("/ec2/", "/ssm/"), "X-Amz-Target": "AmazonSSM.GetParameter"},
     b"{}", "ssm:GetParameter"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"Action=DescribeVpcs", None),  # no signature
])
def test_call_names(headers, body, expected):
    message = http.client.HTTPMessage()
    for key, value in headers.items():
        message[key] = value
    assert call_name("POST", "/", message, body) == expected


def test_call_name_of_a_presigned_request():
    target = ("/?Action=DescribeRegions&X-Amz-Algorithm=AWS4-HMAC-SHA256"
              "&X-Amz-Credential=testing%2F20240101%2Feu-west-1%2Fec2%2Faws4_request")
    assert call_name("GET", target, http.client.HTTPMessage(), b"") == "ec2:DescribeRegions"


# --- the journal of calls ----------------------------------------------------------------------------


def test_the_journal_records_every_call_with_its_params_and_never_a_secret(local_cloud):
    ec2, ssm = client(local_cloud, "ec2"), client(local_cloud, "ssm")
    vpc_id = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    group_name, secret, name = f"journal-{uuid.uuid4().hex[:8]}", f"s3cret-{uuid.uuid4().hex}", uuid.uuid4().hex[:8]
    group = ec2.create_security_group(GroupName=group_name, Description="journal", VpcId=vpc_id, TagSpecifications=[
        {"ResourceType": "security-group", "Tags": [{"Key": "made-by", "Value": "journal-test"}]}])["GroupId"]
    user_data = base64.b64encode(secret.encode()).decode()
    template = None
    try:
        template = ec2.create_launch_template(LaunchTemplateName=f"journal-{name}",
                                              LaunchTemplateData={"UserData": user_data})["LaunchTemplate"]
        ssm.put_parameter(Name=f"/journal/{name}", Value=secret, Type="SecureString")
        calls = local_cloud.calls()
        assert [c["call"] for c in calls] == ["ec2:DescribeVpcs", "ec2:CreateSecurityGroup",
                                              "ec2:CreateLaunchTemplate", "ssm:PutParameter"]
        assert {c["region"] for c in calls} == {REGION}
        assert calls[1]["params"] == {
            "GroupName": group_name, "GroupDescription": "journal", "VpcId": vpc_id,
            "TagSpecification.1.ResourceType": "security-group", "TagSpecification.1.Tag.1.Key": "made-by",
            "TagSpecification.1.Tag.1.Value": "journal-test"}
        assert calls[2]["params"]["LaunchTemplateData.UserData"] == "<redacted>"
        assert calls[3]["params"] == {"Name": f"/journal/{name}", "Value": "<redacted>", "Type": "SecureString"}
        journal = raw(local_cloud, "GET", "/_localcloud/calls")[2].decode()
        assert secret not in journal and user_data not in journal
    finally:
        ssm.delete_parameter(Name=f"/journal/{name}")
        if template:
            ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
        ec2.delete_security_group(GroupId=group)
    assert local_cloud.calls()[-1]["call"] == "ec2:DeleteSecurityGroup"
    local_cloud.reset_stats()
    assert local_cloud.calls() == []


# --- throttling -------------------------------------------------------------------------------------


def test_every_call_throttled_reaches_a_client_without_retries_as_aws_throttling(local_cloud):
    ec2, ssm = client(local_cloud, "ec2", NO_RETRIES), client(local_cloud, "ssm", NO_RETRIES)
    try:
        local_cloud.configure(throttle_rate=1.0, throttle_seed=1)
        with pytest.raises(ClientError) as ec2_error:
            ec2.describe_vpcs()
        with pytest.raises(ClientError) as ssm_error:
            ssm.get_parameter(Name=AL2023)
        # Moto's own pages are never throttled.
        assert raw(local_cloud, "GET", "/moto-api/")[0] == 200
    finally:
        local_cloud.configure(throttle_rate=0)

    assert ec2_error.value.response["Error"] == {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."}
    assert ec2_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert ssm_error.value.response["Error"]["Code"] == "ThrottlingException"
    assert ssm_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert ssm_error.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ThrottlingException"
    stats = local_cloud.stats()
    assert stats["calls"] == stats["throttled"] == {"ec2:DescribeVpcs": 1, "ssm:GetParameter": 1}
    ec2.describe_vpcs()  # and off again


def test_a_denied_call_is_answered_as_aws_denies_it_in_that_region_only(local_cloud):
    ssm, ec2 = client(local_cloud, "ssm", NO_RETRIES), client(local_cloud, "ec2", NO_RETRIES)
    elsewhere = boto3.client("ssm", endpoint_url=local_cloud.endpoint, region_name="us-east-1", config=NO_RETRIES,
                             aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
    name = f"/denied/{uuid.uuid4().hex}"
    try:
        assert local_cloud.configure(deny=[f"ssm:PutParameter@{REGION}", f"ec2:DescribeVpcs@{REGION}"])["deny"]
        with pytest.raises(ClientError) as ssm_error:
            ssm.put_parameter(Name=name, Value="x", Type="String")
        with pytest.raises(ClientError) as ec2_error:
            ec2.describe_vpcs()
        elsewhere.put_parameter(Name=name, Value="x", Type="String")  # another region: allowed
        ec2.describe_subnets()  # another call: allowed
    finally:
        local_cloud.configure(deny=[])
    assert ssm_error.value.response["Error"]["Code"] == "AccessDeniedException"
    assert ec2_error.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert ec2_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):  # denied calls are not forwarded
        ssm.get_parameter(Name=name)
    ssm.put_parameter(Name=name, Value="x", Type="String")  # and off again
    for region_ssm in (ssm, elsewhere):
        region_ssm.delete_parameter(Name=name)
    with pytest.raises(LocalCloudError):
        local_cloud.configure(deny=["PutParameter in eu-west-1"])


def test_moto_answers_one_request_at_a_time(monkeypatch):
    """moto's backends are not thread-safe (a CreateSecurityGroup of 100 builds at once failed: "dictionary
    changed size during iteration"), and its server answers each request in a thread: the local cloud's moto
    lets one in at a time. (The race itself is too rare to show on demand: four requests that each take a
    while stand for it.)"""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    from localcloud import moto_fixes

    inside, most, lock = [0], [0], threading.Lock()

    def a_while(self, environ, start_response):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return [b"answered"]

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", a_while)
    moto_fixes.install_request_lock()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: DomainDispatcherApplication.__call__(None, {}, None), range(4)))
    assert answers == [[b"answered"]] * 4 and most[0] == 1


def test_standard_retries_recover_from_throttling(local_cloud):
    ec2 = client(local_cloud, "ec2", STANDARD_RETRIES)
    try:
        local_cloud.configure(throttle_rate=0.3, throttle_seed=1)
        answers = [ec2.describe_vpcs() for _ in range(30)]
    finally:
        local_cloud.configure(throttle_rate=0)
    assert all(answer["Vpcs"] for answer in answers)
    stats = local_cloud.stats()
    throttled, calls = stats["throttled"].get("ec2:DescribeVpcs", 0), stats["calls"]["ec2:DescribeVpcs"]
    print(f"\n30 DescribeVpcs at throttle rate 0.3: {calls} calls, {throttled} throttled")
    assert throttled > 0
    assert calls == 30 + throttled  # every throttled attempt retried, every call answered once


def test_the_same_seed_throttles_the_same_calls(local_cloud):
    def pattern() -> list[bool]:
        local_cloud.configure(throttle_rate=0.5, throttle_seed=42)
        results = []
        for _ in range(12):
            try:
                ec2.describe_vpcs()
                results.append(False)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "RequestLimitExceeded"
                results.append(True)
        return results

    ec2 = client(local_cloud, "ec2", NO_RETRIES)
    try:
        first, second = pattern(), pattern()
    finally:
        local_cloud.configure(throttle_rate=0)
    assert first == second
    assert any(first) and not all(first)


# --- the network ------------------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* write them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_an_image_name_in_use_is_refused_as_aws_refuses_it(local_cloud, ec2):
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    try:
        made = ec2.create_image(InstanceId=instance_id, Name="duplicate-name-test")["ImageId"]
        with pytest.raises(ClientError) as refused:
            ec2.create_image(InstanceId=instance_id, Name="duplicate-name-test")
        assert refused.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
        assert made in refused.value.response["Error"]["Message"]
        ec2.deregister_image(ImageId=made)  # then the name is free again
        again = ec2.create_image(InstanceId=instance_id, Name="duplicate-name-test")["ImageId"]
        ec2.deregister_image(ImageId=again)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert again != made


def test_create_image_and_copy_image_tag_the_snapshots_as_aws_does(local_cloud, ec2):
    """moto refuses (CreateImage) or ignores (CopyImage) a snapshot's TagSpecifications; the front applies them."""
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    specs = [{"ResourceType": kind, "Tags": [{"Key": "made-as", "Value": kind}]} for kind in ("image", "snapshot")]
    made = []
    try:
        made.append(ec2.create_image(InstanceId=instance_id, Name="snapshot-tags-test", TagSpecifications=specs)[
            "ImageId"])
        made.append(ec2.copy_image(SourceImageId=made[0], SourceRegion="eu-west-1", Name="snapshot-tags-copy",
                                   TagSpecifications=specs)["ImageId"])
        for image_id in made:
            [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
            assert {t["Key"]: t["Value"] for t in image["Tags"]} == {"made-as": "image"}
            snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
            assert snapshots
            for snapshot in ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]:
                assert {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])} == {"made-as": "snapshot"}
    finally:
        for image_id in made:
            ec2.deregister_image(ImageId=image_id)
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_each_resource_shows_and_is_filtered_by_its_own_tags(local_cloud, ec2):
    """moto_fixes.install_tag_lookup reads a resource's tags by its id: each its own, by every filter, and a
    deleted tag gone (ids of one kind share a prefix: none may show another's tags)."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    groups = [ec2.create_security_group(GroupName=f"tag-lookup-{n}-{uuid.uuid4().hex[:6]}", Description="t",
                                        VpcId=vpc, TagSpecifications=[{"ResourceType": "security-group", "Tags": [
                                            {"Key": "tag-lookup", "Value": str(n)}]}])["GroupId"] for n in range(3)]
    try:
        ec2.create_tags(Resources=groups[:1], Tags=[{"Key": "only-first", "Value": "yes"}])
        ec2.delete_tags(Resources=groups[2:], Tags=[{"Key": "tag-lookup"}])
        shown = {g["GroupId"]: {t["Key"]: t["Value"] for t in g.get("Tags", [])}
                 for g in ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]}
        assert shown == {groups[0]: {"tag-lookup": "0", "only-first": "yes"}, groups[1]: {"tag-lookup": "1"},
                         groups[2]: {}}
        by_key = ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": ["tag-lookup"]}])
        assert sorted(g["GroupId"] for g in by_key["SecurityGroups"]) == sorted(groups[:2])
        by_value = ec2.describe_security_groups(Filters=[{"Name": "tag:tag-lookup", "Values": ["1"]}])
        assert [g["GroupId"] for g in by_value["SecurityGroups"]] == [groups[1]]
    finally:
        for group in groups:
            ec2.delete_security_group(GroupId=group)


@pytest.fixture(scope="module")
def single_sshd_cloud(tmp_path_factory):
    """The model without machines (``machines=False``): one sshd on 127.0.0.1 for every instance."""
    cloud = LocalCloud(tmp_path_factory.mktemp("single-sshd") / "cloud", machines=False)
    try:
        cloud.up()
        yield cloud
    finally:
        cloud.down()


@pytest.mark.parametrize("model", ["machines", "single-sshd"])
def test_everything_listens_on_127_0_0_1_only(request, model):
    """And, with machines, the front on the bridge's address too (the Celery deployment's hosts reach it there)."""
    cloud = request.getfixturevalue("local_cloud" if model == "machines" else "single_sshd_cloud")
    state = cloud.state()
    assert state.host == "127.0.0.1"
    assert cloud.endpoint == f"http://127.0.0.1:{state.ec2_port}"
    assert cloud.moto_endpoint == f"http://127.0.0.1:{state.moto_port}"
    ports = [state.ec2_port, state.moto_port] + ([] if state.machines else [state.ssh_port])
    assert state.machines == (model == "machines") and len(set(ports)) == len(ports)
    bridge = socket.inet_aton(str(cloud.plan.bridge_address))[::-1].hex().upper() if state.machines else None
    for port in ports:
        # 127.0.0.1 is 0100007F (little-endian hex, as /proc/net/tcp writes it); no IPv6 socket.
        expected = {"0100007F", bridge} if port == state.ec2_port and bridge else {"0100007F"}
        assert listening_addresses(port) == expected, port
    assert cloud.running()


def test_single_sshd_env_points_builds_at_the_one_sshd(single_sshd_cloud):
    env = single_sshd_cloud.env()
    assert env["AIRFLOW__IMAGE_FACTORY__SSH_HOST"] == "127.0.0.1"
    assert env["AIRFLOW__IMAGE_FACTORY__SSH_PORT"] == str(single_sshd_cloud.state().ssh_port)
    assert env["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"] == "127.0.0.1/32"


def test_machines_env_sends_builds_to_the_instances_own_addresses(local_cloud, ec2):
    env = local_cloud.env()
    assert not {"AIRFLOW__IMAGE_FACTORY__SSH_HOST", "AIRFLOW__IMAGE_FACTORY__SSH_PORT",
                "AIRFLOW__IMAGE_FACTORY__SSH_USERNAME"} & set(env)
    assert env["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"] == f"{local_cloud.plan.bridge_address}/32"
    assert ipaddress.ip_address(local_cloud.plan.bridge_address) in ipaddress.ip_network("198.18.0.0/15")
    reserved = ipaddress.ip_network("198.18.0.0/15")
    assert ipaddress.ip_network(env["AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_CIDR"]).subnet_of(reserved)
    builder = ec2.describe_vpcs(VpcIds=[env["AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_ID"]])["Vpcs"][0]
    assert ipaddress.ip_network(builder["CidrBlock"]).subnet_of(reserved)
    # Every VPC and subnet of every region, the default VPC's included, is in the reserved range, and the
    # regions' ranges do not overlap.
    ranges = []
    for region in local_cloud.state().regions.split(","):
        regional = boto3.client("ec2", endpoint_url=local_cloud.endpoint, region_name=region,
                                aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
        vpcs = regional.describe_vpcs()["Vpcs"]
        assert any(v["IsDefault"] for v in vpcs)
        for block in [v["CidrBlock"] for v in vpcs] + [s["CidrBlock"] for s in regional.describe_subnets()["Subnets"]]:
            assert ipaddress.ip_network(block).subnet_of(reserved), (region, block)
        ranges.append({region: [ipaddress.ip_network(v["CidrBlock"]) for v in vpcs
                                if v["IsDefault"] or v["VpcId"] == local_cloud.state().builder_vpcs[region]]})
    flat = [(region, network) for item in ranges for region, networks in item.items() for network in networks]
    for region, network in flat:
        assert not any(network.overlaps(other) for r, other in flat if r != region), (region, network)


def test_without_machines_every_console_shows_the_one_sshd_s_host_key(single_sshd_cloud):
    from image_factory import host_keys
    from tests.test_host_keys import served_host_key

    ec2 = client(single_sshd_cloud, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    try:
        keys = host_keys.from_console(ec2, instance_id)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert keys == [served_host_key("127.0.0.1", single_sshd_cloud.state().ssh_port)]


def test_sshd_trusts_only_registered_build_keys_and_asks_moto_directly(single_sshd_cloud, tmp_path):
    local_cloud = single_sshd_cloud
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    state = local_cloud.state()

    def ssh() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", str(key), "-p", str(state.ssh_port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
             f"{state.user}@127.0.0.1", "echo", "in"], capture_output=True, text=True, timeout=60)

    refused = ssh()
    assert refused.returncode != 0 and "Permission denied" in refused.stderr

    ec2 = client(local_cloud, "ec2")
    name = f"front-test-{uuid.uuid4().hex[:8]}"
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=key.with_suffix(".pub").read_bytes(), TagSpecifications=[
        {"ResourceType": "key-pair", "Tags": [{"Key": BUILD_TAG, "Value": name}]}])
    try:
        local_cloud.configure(throttle_rate=1.0)  # the key lookup does not go through the front
        accepted = ssh()
    finally:
        local_cloud.configure(throttle_rate=0)
        ec2.delete_key_pair(KeyName=name)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == "in"
    assert "ec2:DescribeKeyPairs" not in local_cloud.stats()["calls"]


def test_a_slot_claimed_by_a_cloud_still_starting_is_not_taken_over(tmp_path, monkeypatch):
    """A cloud that has claimed a slot but written no state yet is not taken for a dead one (which a second cloud
    would take the slot from, removing the first one's bridge)."""
    from localcloud import addresses, machines

    monkeypatch.setattr(machines, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(addresses, "SLOTS", 1)
    starting = subprocess.Popen(["sleep", "30"])
    try:
        machines.RUN_DIR.mkdir()
        machines.owner_file(0).write_text(f"{tmp_path / 'starting'}\n{starting.pid}")
        with pytest.raises(LocalCloudError, match="1 local clouds with machines run on this host already"):
            LocalCloud(tmp_path / "second")._claim_slot()
        assert machines.owner_file(0).read_text().startswith(str(tmp_path / "starting"))
    finally:
        starting.kill()
        starting.wait()


RACE = """
import sys
from pathlib import Path
from localcloud import machines
machines.RUN_DIR = Path(sys.argv[1])  # the host's marks untouched
machines.BLACKHOLE_MARK = machines.RUN_DIR / "blackhole.made"
print(machines.ensure_blackhole())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_local_clouds_starting_at_once_share_the_blackhole_route_one_of_them_made(tmp_path):
    """Two test workers start their clouds at the same moment: each saw no route, both added it, and the second
    failed with "File exists" (every test of that worker then errored)."""
    namespace = f"lctest-race-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        starts = [subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", RACE, str(tmp_path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
                  for _ in range(6)]
        results = [(start.wait(timeout=60), *start.communicate()) for start in starts]
        assert all(code == 0 for code, _, _ in results), results
        assert sorted(out.strip() for _, out, _ in results) == ["False"] * 5 + ["True"], results
        assert "blackhole 198.18.0.0/15" in subprocess.run(
            ["ip", "-n", namespace, "route", "show", "type", "blackhole"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
