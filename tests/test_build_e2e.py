"""Whole builds: real Airflow DAG runs against the local cloud (moto EC2 + a real OpenSSH server).

Every assertion about the cloud is read back from the emulator, not from what the DAG says it did.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import textwrap
import threading
import time
from pathlib import Path

import boto3
import pytest
import yaml

from image_factory.build import (
    TAG_BUILD,
    TAG_ORIGIN,
    TAG_ROLE,
    TAG_RUN,
    TAG_SPEC,
    TAG_SPEC_HASH,
    build_id_for,
    tag_dict,
)
from image_factory.inventory import builder_resources
from image_factory.sbom import IAM_ACTIONS
from image_factory.spec import load_spec
from image_factory.steps.image import find as find_images
from localcloud.runner import airflow_env, run_dag

PROJECT = Path(__file__).resolve().parents[1]
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
PRIVATE_KEY_MARKER = "PRIVATE KEY-----"


def instances_of(ec2, build_id: str) -> list[dict]:
    reservations = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_BUILD}", "Values": [build_id]}])
    return [i for r in reservations["Reservations"] for i in r["Instances"]]


def write_spec(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


class KeyCatcher(threading.Thread):
    """Reads the build's private key from the emulator while the build runs (teardown deletes it)."""

    def __init__(self, cloud):
        super().__init__(daemon=True)
        # Straight to moto, so that the API calls counted for the build are the build's own.
        self.ssm = boto3.client("ssm", endpoint_url=cloud.moto_endpoint, region_name="eu-west-1",
                                aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
        self.done = threading.Event()
        self.keys: set[str] = set()

    def run(self):
        deadline = time.monotonic() + 600
        while not self.done.is_set() and time.monotonic() < deadline:
            found = self.ssm.describe_parameters(ParameterFilters=[
                {"Key": "Name", "Option": "BeginsWith", "Values": ["/image-factory/builds/"]}])["Parameters"]
            for parameter in found:
                with contextlib.suppress(self.ssm.exceptions.ParameterNotFound):
                    self.keys.add(self.ssm.get_parameter(Name=parameter["Name"], WithDecryption=True)[
                        "Parameter"]["Value"])
            self.done.wait(0.2)


@pytest.fixture(scope="module")
def shopspinner_run(local_cloud, airflow_home):
    catcher = KeyCatcher(local_cloud)
    local_cloud.reset_stats()
    catcher.start()
    try:
        # Asking to keep a failed build's instance: a build that succeeds keeps nothing all the same.
        result = run_dag("shopspinner-linux-image", airflow_env(local_cloud, airflow_home),
                         conf=json.dumps({"keep_on_failure_hours": 2}))
    finally:
        catcher.done.set()
        catcher.join()
    result.private_keys = catcher.keys
    result.api_calls = local_cloud.stats()["calls"]
    result.calls = local_cloud.calls()  # the journal: every call the emulator received, with its parameters
    result.airflow_home = airflow_home
    return result


def test_shopspinner_image_is_built_tagged_and_nothing_is_left(shopspinner_run, ec2, ssm):
    result = shopspinner_run
    assert result.succeeded, result.output[-5000:]
    build_id = build_id_for("shopspinner-linux-image", result.run_id)

    images = find_images(ec2, build_id)
    assert len(images) == 1
    image = images[0]
    assert image["State"] == "available"
    assert image["Name"].startswith("shopspinner-linux-image-") and image["Name"].endswith(build_id)
    tags = tag_dict(image["Tags"])
    spec = load_spec(PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml")
    assert tags[TAG_SPEC] == "shopspinner-linux-image"
    assert tags[TAG_SPEC_HASH] == spec.content_hash
    assert tags[TAG_ORIGIN] == ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    assert tags[TAG_ROLE] == "appserver"
    assert tags[TAG_RUN] == result.run_id
    assert tags["team"] == "shopspinner"  # the spec's own tags

    # The builder, and the test instance of the new image: both locked down, both gone.
    launched = {tag_dict(i["Tags"])["image-factory:instance"]: i for i in instances_of(ec2, build_id)}
    assert sorted(launched) == ["builder", "test"]
    assert launched["test"]["ImageId"] == image["ImageId"]
    for instance in launched.values():
        assert instance["State"]["Name"] == "terminated"
        assert instance["InstanceType"] == "t3.small"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert (tags["image-factory:tests"], tags["image-factory:tests-failed"]) == ("passed", "0")
    assert builder_resources(ec2, ssm, build_id) == []
    assert "kept until" not in result.task_logs["tear_down"]  # (its trigger asked to keep a failed build's)


#: A value of the plan that only the build knows (plan.RunTime), or a parameter the setup provides.
PLACEHOLDER = re.compile(r"<at run time: [^>]*>|<made by [a-z_]+>")


def _as_sent(request: dict) -> dict:
    """A request of the plan back as the step passes it to boto3: tags as lists of Key and Value."""
    def tags(value):
        if isinstance(value, dict):
            return [{"Key": k, "Value": v} for k, v in value.items()]
        return [{**spec, "Tags": tags(spec["Tags"])} for spec in value]

    return {k: tags(v) if k in ("TagSpecifications", "Tags") else v for k, v in request.items()}


def _flat(operation: str, request: dict) -> dict:
    """An EC2 request as query parameters, serialized by botocore as the build's own client does."""
    import botocore.serialize
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2").operation_model(operation)
    serializer = botocore.serialize.create_serializer("ec2", include_validation=False)
    body = serializer.serialize_to_request(request, model)["body"]
    return {k: str(v) for k, v in body.items() if k not in ("Action", "Version")}


def _differences(planned, sent, where: str = "") -> list[str]:
    """Where ``sent`` (the emulator's record) differs from ``planned``; a placeholder matches any value."""
    if isinstance(planned, dict) and isinstance(sent, dict):
        found = [f"{where}.{k}: planned, not sent" for k in planned.keys() - sent.keys()]
        found += [f"{where}.{k}: sent, not planned" for k in sent.keys() - planned.keys()]
        for key in planned.keys() & sent.keys():
            found += _differences(planned[key], sent[key], f"{where}.{key}")
        return found
    if isinstance(planned, list) and isinstance(sent, list) and len(planned) == len(sent):
        return [found for i, (p, s) in enumerate(zip(planned, sent, strict=True))
                for found in _differences(p, s, f"{where}[{i}]")]
    if isinstance(planned, str) and isinstance(sent, str):
        pattern = ".+".join(re.escape(part) for part in PLACEHOLDER.split(planned))
        return [] if re.fullmatch(pattern, sent, re.S) else [f"{where}: planned {planned!r}, sent {sent!r}"]
    return [] if planned == sent else [f"{where}: planned {planned!r}, sent {sent!r}"]


def test_the_plan_render_shows_is_what_the_build_sent(shopspinner_run, local_cloud, airflow_home, ec2):
    """``render`` with the run's id, compared with every call of the plan the emulator received from that build:
    subnet CIDR, security group rules, instance types and options, tags, key pair, image name."""
    from tests.test_cli import cli_env, run_cli

    result = shopspinner_run
    assert result.succeeded, result.output[-5000:]
    rendered = run_cli("render", "shopspinner-linux-image", "--run-id", result.run_id,
                       env=cli_env(**airflow_env(local_cloud, airflow_home)))
    assert rendered.returncode == 0, rendered.stderr
    plan = yaml.safe_load(rendered.stdout)
    assert plan["build_id"] == build_id_for("shopspinner-linux-image", result.run_id)
    assert "warnings" not in plan
    planned = [(task["task_id"], call) for task in plan["tasks"] for call in task.get("requests", [])]
    received = [c for c in result.calls if c["region"] == plan["region"]]
    compared = []
    for task_id, call in planned:
        request = _as_sent(call["request"])
        if call["call"].startswith("ec2:"):
            request.pop("PublicKeyMaterial", None)  # (a placeholder, base64-encoded once sent)
            expected = _flat(call["call"].split(":")[1], request)
        else:  # (SSM's PutParameter: the journal hides every "Value" of it, the tags' too)
            expected = {**request, "Tags": [{**tag, "Value": "<redacted>"} for tag in request["Tags"]]}
        sent = [c["params"] for c in received if c["call"] == call["call"]]
        # The builder's RunInstances and the test instance's are told by their token; the key's PutParameter from
        # promote's by its name.
        if (key := {"ec2:RunInstances": "ClientToken", "ssm:PutParameter": "Name"}.get(call["call"])) is not None:
            sent = [p for p in sent if p[key] == request[key]]
        elif call["call"] == "ec2:ImportKeyPair":
            sent = [{k: v for k, v in p.items() if k != "PublicKeyMaterial"} for p in sent]
        assert sent, f"{task_id}: the build sent no {call['call']}"
        assert len(sent) == 1, f"{task_id}: {call['call']} sent {len(sent)} times"
        assert _differences(expected, sent[0], call["call"]) == [], f"{task_id}: {call['call']}"
        compared.append(call["call"])
    # (The local cloud gives builds a builder VPC, as a deployment's builder_vpc_id does: no CreateVpc.)
    assert compared == ["ec2:CreateSubnet", "ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                        "ec2:RevokeSecurityGroupEgress", "ec2:AuthorizeSecurityGroupEgress", "ssm:PutParameter",
                        "ec2:ImportKeyPair", "ec2:RunInstances", "ec2:StopInstances", "ec2:CreateImage",
                        "ec2:RunInstances"]
    # What the issue names, spelled out (each is part of the comparison above).
    sent = {c["call"]: c["params"] for c in received}
    network = {c["call"]: c["request"] for c in plan["tasks"][0]["requests"]}
    assert sent["ec2:ImportKeyPair"]["KeyName"] == network["ec2:ImportKeyPair"]["KeyName"]
    builder = next(c["params"] for c in received
                   if c["call"] == "ec2:RunInstances" and c["params"]["ClientToken"].endswith("-launch"))
    assert (builder["InstanceType"], builder["MetadataOptions.HttpTokens"],
            builder["BlockDeviceMapping.1.Ebs.Encrypted"], builder["InstanceInitiatedShutdownBehavior"]) == (
        "t3.small", "required", "true", "terminate")
    # The subnet: in a configured VPC, which blocks are free only the build sees, so the plan leaves the CIDR to run
    # time. Rendered as if the VPC were the build's own (builder_vpc_cidr: its CIDR, no other subnet in it, as
    # here: the build sent one CreateSubnet, not refused), the plan shows the block the build tried first.
    vpc_id = sent["ec2:CreateSubnet"]["VpcId"]
    assert network["ec2:CreateSubnet"]["CidrBlock"].startswith(f"<at run time: the free /28 blocks of VPC {vpc_id}")
    [vpc] = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    own = yaml.safe_load(run_cli("render", "shopspinner-linux-image", "--run-id", result.run_id, env=cli_env(
        **airflow_env(local_cloud, airflow_home, builder_vpc_id="", builder_vpc_cidr=vpc["CidrBlock"]))).stdout)
    subnet = next(c for c in own["tasks"][0]["requests"] if c["call"] == "ec2:CreateSubnet")
    assert sent["ec2:CreateSubnet"]["CidrBlock"] == subnet["request"]["CidrBlock"]
    [image] = find_images(ec2, plan["build_id"])
    assert image["Name"] == sent["ec2:CreateImage"]["Name"]


def test_builder_network_was_made_then_deleted(shopspinner_run, ec2):
    log = shopspinner_run.task_logs["create_builder_network"]
    # (The local cloud gives builds a builder VPC, as a deployment's builder_vpc_id does: no VPC per build.)
    for kind in ("subnet", "security-group", "key-pair"):
        assert f"created {kind} " in log
    group_id = log.split("created security-group ")[1].split()[0]
    with pytest.raises(Exception, match=r"InvalidGroup\.NotFound"):
        ec2.describe_security_groups(GroupIds=[group_id])
    assert "created instance i-" not in log  # the launch is a task of its own
    assert "created instance i-" in shopspinner_run.task_logs["launch_builder_instance"]
    # promote and tear_down both wait only on test_image: either may start first.
    started = list(shopspinner_run.task_states)
    assert started[:5] == ["create_builder_network", "launch_builder_instance", "configure", "register_image",
                           "test_image"]
    assert sorted(started[5:]) == ["promote", "tear_down"]
    teardown_log = shopspinner_run.task_logs["tear_down"]
    assert f"deleted security-group {group_id}" in teardown_log
    assert "deleted instance i-" in teardown_log


def test_role_output_is_in_the_configure_log(shopspinner_run):
    configure_log = shopspinner_run.task_logs["configure"]
    # SSH went to the host key the instance's console showed; nothing logged in unverified.
    assert re.search(r"host key of i-\w+ \(from its console\): ssh-ed25519 SHA256:", configure_log)
    assert "not verified" not in shopspinner_run.output
    assert "appserver role: configuring" in configure_log
    assert "appserver role: done" in configure_log
    assert "appserver role: done" not in shopspinner_run.task_logs["register_image"]
    staging = re.search(r"copied role 'appserver' \(2 files\) to (\S+)", configure_log).group(1)
    assert staging.startswith("/tmp/image-factory-role.") and not Path(staging).exists()


def test_private_key_never_reaches_logs_xcom_or_the_metadata_database(shopspinner_run):
    assert len(shopspinner_run.private_keys) == 1
    private_key = shopspinner_run.private_keys.pop()
    assert private_key.startswith("-----BEGIN OPENSSH " + PRIVATE_KEY_MARKER)
    # Any piece of the key's body would be a leak: look for each line of it.
    secret_lines = [line for line in private_key.splitlines() if line and not line.startswith("-----")]
    assert secret_lines
    places = {"the task logs": shopspinner_run.output.encode()}
    for path in shopspinner_run.airflow_home.rglob("*"):
        if path.is_file():  # the metadata database (XCom, rendered fields, ...) and any log file
            places[str(path)] = path.read_bytes()
    assert any(p.endswith("airflow.db") for p in places)
    for where, content in places.items():
        assert PRIVATE_KEY_MARKER.encode() not in content, where
        for line in secret_lines:
            assert line.encode() not in content, where


def test_the_iam_policy_grants_what_the_build_calls_and_nothing_the_project_never_calls(shopspinner_run):
    policy = json.loads((PROJECT / "include" / "iam" / "image-factory-policy.json").read_text())
    granted = {action for statement in policy["Statement"] for action in
               ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    # (S3's calls by their IAM actions: CopyObject needs GetObject and PutObject.)
    called = {action for call in shopspinner_run.api_calls for action in IAM_ACTIONS.get(call, (call,))}
    assert {"ec2:RunInstances", "ec2:CreateImage", "ec2:TerminateInstances", "ssm:PutParameter"} <= called
    assert {"s3:PutObject", "s3:GetObject", "s3:DeleteObject"} <= called  # (the SBOM)
    assert called - granted == set(), "the build calls actions the policy does not grant"
    in_code = actions_in_code(PROJECT / "plugins")
    # Implied: tagging in a create call needs ec2:CreateTags; PutParameter with Tags needs ssm:AddTagsToResource.
    assert granted - in_code - {"ssm:AddTagsToResource"} == set(), "the policy grants actions no code calls"
    assert in_code - granted == set(), "the code calls actions the policy does not grant"


def actions_in_code(folder: Path) -> set[str]:
    """Every EC2, SSM, SNS, Auto Scaling and S3 action (S3's by its IAM actions) the code can call: client
    methods, the calls a wait makes after its state (``FollowUp("ec2", "create_image", {...})``, and
    ``("delete_subnet", {...})`` as the deletions of resources.py are written), the waiters' operations (boto3's
    and the project's own), and the provider's SNS notifier (sns:Publish)."""
    from image_factory.waits.polls import WAITERS

    clients = {service: boto3.client(service, region_name="eu-west-1", aws_access_key_id="x",
                                     aws_secret_access_key="x")  # noqa: S106
               for service in ("ec2", "ssm", "sns", "autoscaling", "s3")}
    actions = set()
    for path in folder.rglob("*.py"):
        text = path.read_text()
        if re.search(r"\bSnsNotifier\(", text):  # (its hook's publish_to_target calls Publish)
            actions.add("sns:Publish")
        for service, method in re.findall(r"\b(ec2|ssm|sns|autoscaling|s3)\.([a-z_]+)\(", text):
            if method not in ("get_waiter", "get_paginator"):
                call = f"{service}:{clients[service].meta.method_to_api_mapping[method]}"
                actions.update(IAM_ACTIONS.get(call, (call,)))
        for service, method in re.findall(r'\b(ec2|ssm)\.get_paginator\("(\w+)"\)', text):
            actions.add(f"{service}:{clients[service].meta.method_to_api_mapping[method]}")
        for service, method in re.findall(r'\ball_items\((ec2|ssm), "(\w+)"', text):  # (aws.all_items: pages)
            actions.add(f"{service}:{clients[service].meta.method_to_api_mapping[method]}")
        for method in re.findall(r'\("([a-z_]+)", \{', text):  # (the table of resources.py: SSM's too)
            service = next((name for name, client in clients.items() if method in client.meta.method_to_api_mapping),
                           None)
            if service:
                actions.add(f"{service}:{clients[service].meta.method_to_api_mapping[method]}")
        for service, method in re.findall(r'\bFollowUp\("(ec2|ssm)", "([a-z_]+)"', text):  # (a wait's follow-up calls)
            actions.add(f"{service}:{clients[service].meta.method_to_api_mapping[method]}")
        for waiter in re.findall(r'get_waiter\("(\w+)"\)', text):
            actions.add(f"ec2:{clients['ec2'].get_waiter(waiter).config.operation}")
    # The project's own waiters (an instance refresh's: waits/polls.py).
    actions |= {f"{service}:{definition['operation']}" for service, definition in WAITERS.values()}
    return actions


def test_failing_role_fails_the_run_and_leaves_nothing(local_cloud, airflow_home, ec2, ssm, tmp_path):
    roles = tmp_path / "roles"
    (roles / "failing").mkdir(parents=True)
    # The role says where it ran, and how private that folder was, then fails.
    (roles / "failing" / "10-fail.sh").write_text("echo \"staging $PWD $(stat -c %a .)\"\n"
                                                  "echo 'about to fail on purpose'\nexit 1\n")
    write_spec(tmp_path / "specs", "failing-role-image", f"""\
        image:
          name: failing-role-image
          platform: aws
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          instance_size: small
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure:
            tool: shell
            server_role: failing
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"), roles_folder=str(roles))
    result = run_dag("failing-role-image", env)

    assert result.exit_code != 0 and result.state == "failed"
    assert result.task_states["configure"] == "failed"
    assert "register_image" not in result.task_states  # never ran
    assert result.task_states["tear_down"] == "success"
    configure_log = result.task_logs["configure"]
    assert "exited with status 1" in configure_log
    assert "| about to fail on purpose" in configure_log  # the tail of the remote output, in the error
    staging, mode = re.search(r"staging (\S+) (\d+)", configure_log).groups()
    assert staging.startswith("/tmp/image-factory-role.") and mode == "700"
    assert not Path(staging).exists()  # it ran on the instance, not on this host
    build_id = build_id_for("failing-role-image", result.run_id)
    assert find_images(ec2, build_id) == []
    result.airflow_home = airflow_home
    assert metadata(result, "SELECT id FROM asset_event WHERE source_run_id = ?", result.run_id) == []
    assert [i["State"]["Name"] for i in instances_of(ec2, build_id)] == ["terminated"]
    assert builder_resources(ec2, ssm, build_id) == []


def test_command_template_tool_quotes_spec_values(local_cloud, airflow_home, ec2, ssm, tmp_path):
    marker = tmp_path / "injected"
    write_spec(tmp_path / "specs", "servermaker-image", f"""\
        image:
          name: servermaker-image
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          size: medium
          configure:
            tool: servermaker
            code_repo: "servermaker.shopspinner.xyz; touch {marker}"
            server_role: ${{ROLE}}
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"),
                      servermaker_command="echo servermaker apply --repository {code_repo} --role {server_role}")
    result = run_dag("servermaker-image", env, conf=json.dumps({"ROLE": "appserver"}))

    assert result.succeeded, result.output[-5000:]
    configure_log = result.task_logs["configure"]
    # The whole value arrives as one argument, printed literally; the `touch` never ran.
    assert f"servermaker apply --repository servermaker.shopspinner.xyz; touch {marker} --role appserver" \
        in configure_log
    assert not marker.exists()
    build_id = build_id_for("servermaker-image", result.run_id)
    assert [i["InstanceType"] for i in instances_of(ec2, build_id)] == ["t3.medium"]
    # No builder subnet asked for: the instance ran in the default VPC, and nothing is left.
    assert "created subnet" not in result.task_logs["create_builder_network"]
    assert tag_dict(find_images(ec2, build_id)[0]["Tags"])[TAG_ROLE] == "appserver"
    assert builder_resources(ec2, ssm, build_id) == []


def metadata(result, sql: str, *args) -> list[tuple]:
    """Rows from the metadata database of the Airflow home the run used (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{result.airflow_home / 'airflow.db'}?mode=ro", uri=True)) as db:
        return db.execute(sql, args).fetchall()


def test_register_returns_a_build_summary_with_step_durations(shopspinner_run, ec2):
    (value,), = metadata(shopspinner_run, "SELECT value FROM xcom WHERE run_id = ? AND task_id = 'register_image' "
                                          "AND key = 'return_value'", shopspinner_run.run_id)
    summary = json.loads(value)
    build_id = build_id_for("shopspinner-linux-image", shopspinner_run.run_id)
    assert summary["image_id"] == find_images(ec2, build_id)[0]["ImageId"]
    assert summary["region"] == "eu-west-1" and summary["server_role"] == "appserver"
    assert set(summary["step_seconds"]) == {"create_builder_network", "launch_builder_instance", "configure"}
    # The windows the stop and the image were seen in: what the spec's next build polls around.
    assert set(summary["waits"]) == {"instance_stopped", "image_available"}
    assert all(0 <= low <= high for low, high in summary["waits"].values())
    assert all(isinstance(s, int | float) and s >= 0 for s in summary["step_seconds"].values())


def test_console_links_point_at_the_emulator_dashboard(shopspinner_run, local_cloud):
    rows = metadata(shopspinner_run, "SELECT task_id, key, value FROM xcom WHERE run_id = ? AND key LIKE '_link_%'",
                    shopspinner_run.run_id)
    dashboard = f"{local_cloud.endpoint}/moto-api/"
    assert sorted((task, key, json.loads(value)) for task, key, value in rows) == [
        ("launch_builder_instance", "_link_BuilderInstanceLink", dashboard),
        ("register_image", "_link_ImageLink", dashboard)]
    assert "ran on an emulated cloud, not on AWS" in shopspinner_run.task_logs["launch_builder_instance"]


def test_a_successful_build_emits_an_image_asset_event(shopspinner_run, ec2):
    events = metadata(shopspinner_run, "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                                       "WHERE a.uri = 'image-factory://images/shopspinner-linux-image' "
                                       "AND e.source_run_id = ?", shopspinner_run.run_id)
    assert len(events) == 1
    extra = json.loads(events[0][0])
    build_id = build_id_for("shopspinner-linux-image", shopspinner_run.run_id)
    assert extra["image_id"] == find_images(ec2, build_id)[0]["ImageId"]
    assert extra["region"] == "eu-west-1"


def test_the_image_has_an_sbom_of_its_packages_that_find_package_searches(shopspinner_run, local_cloud,
                                                                          airflow_home, ec2, ssm, tmp_path, capfd):
    """The SBOM lists the package the role installed at the version dpkg-query shows on an instance of the image,
    and validates against CycloneDX 1.6 (the library's own validator); find-package finds the image by it, and
    not an image without it (a build of the bare origin), with Debian's ordering for --below."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    from image_factory import sbom
    from localcloud.cloud import SBOM_BUCKET
    from tests.test_cli import cli_env, run_cli

    name = "shopspinner-linux-image"
    build_id = build_id_for(name, shopspinner_run.run_id)
    [image] = find_images(ec2, build_id)
    image_id, tags = image["ImageId"], tag_dict(image["Tags"])
    uri = tags[sbom.TAG_SBOM]
    assert uri == f"s3://{SBOM_BUCKET}/sboms/{name}/{image_id}.cdx.json"
    s3 = s3_client(local_cloud)
    text = sbom.read(s3, uri)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    assert document["specVersion"] == "1.6" and document["metadata"]["component"]["type"] == "operating-system"
    assert document["metadata"]["component"]["name"] == "debian"
    assert {p["name"]: p["value"] for p in document["metadata"]["properties"]} == {
        "image-factory:spec": name, "image-factory:spec-hash": tags[TAG_SPEC_HASH],
        "image-factory:build-id": build_id, "image-factory:server-role": "appserver",
        "image-factory:origin-ami": tags[TAG_ORIGIN]}
    packages = {p.name: p for p in sbom.packages_in(document)}
    assert int(tags[sbom.TAG_SBOM_PACKAGES]) == len(document["components"]) == len(packages) > 100
    # (Moved to the image's key: nothing is left under the build's.)
    assert s3.list_objects_v2(Bucket=SBOM_BUCKET, Prefix=sbom.build_key(name, build_id))["KeyCount"] == 0

    # What dpkg-query shows on a fresh instance of the image.
    capfd.readouterr()
    assert local_cloud.shell(image_id, command=["dpkg-query -W -f '=${Version}=${Architecture}=' nginx-light"]) == 0
    version, arch = re.search(r"=(\S+)=(\S+)=", capfd.readouterr().out).groups()
    assert (packages["nginx-light"].version, packages["nginx-light"].arch) == (version, arch)
    [component] = [c for c in document["components"] if c["name"] == "nginx-light"]
    assert PackageURL.from_string(component["purl"]).to_dict() == {
        "type": "deb", "namespace": "debian", "name": "nginx-light", "version": version,
        "qualifiers": {"arch": arch, "distro": "debian-12"}, "subpath": None}

    # An image without it: a build of the origin as it is (no role); its SBOM has the base, not nginx.
    plain = "sbom-plain-image"
    write_spec(tmp_path / "specs", plain, f"""\
        image:
          name: {plain}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          ssh_key: ${{IMAGE_BUILDER_SSH_KEY}}
        """)
    result = run_dag(plain, airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs")))
    [other] = find_images(ec2, build_id_for(plain, result.run_id)) if result.succeeded else [None]
    try:
        assert result.succeeded, result.output[-5000:]
        env = cli_env(AIRFLOW_CONN_AWS_DEFAULT=local_cloud.env()["AIRFLOW_CONN_AWS_DEFAULT"])

        def found(*arguments: str) -> dict[str, list[str]]:
            answer = run_cli("find-package", *arguments, "--region", "eu-west-1", env=env)
            assert answer.returncode in (0, 1), answer.stderr
            return {row.split()[0]: row.split()[1:] for row in answer.stdout.splitlines()[1:]
                    if row.startswith("ami-")}

        hits = found("nginx-light")
        assert hits[image_id] == [name, image["CreationDate"], version, "latest"]
        assert other["ImageId"] not in hits
        assert found("nginx-light", "--spec", plain) == {}
        assert other["ImageId"] in found("libc6", "--spec", plain)  # (the base's packages: it is there)
        # Debian's ordering: an epoch outweighs any version without one; a tilde sorts before the release.
        assert image_id in found("nginx-light", "--below", "1:0")
        assert image_id not in found("nginx-light", "--below", version)
        assert image_id not in found("nginx-light", "--below", f"{version}~rc1")
        assert image_id in found("nginx-light", "--below", f"{version}+b1")
        shown = run_cli("sbom", image_id, "--region", "eu-west-1", env=env)
        assert shown.returncode == 0 and json.loads(shown.stdout) == document
    finally:
        if other is not None:
            s3.delete_object(Bucket=SBOM_BUCKET, Key=sbom.key_of(plain, other["ImageId"]))
            ec2.deregister_image(ImageId=other["ImageId"], DeleteAssociatedSnapshots=True)


def s3_client(local_cloud):
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=local_cloud.endpoint, region_name="eu-west-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",  # noqa: S106 emulator
                        config=Config(s3={"addressing_style": "path"}))


def test_a_failing_launch_fails_the_run_still_tears_down_and_leaves_nothing(local_cloud, airflow_home, ec2, ssm):
    """RunInstances went through, then the launch task failed (a permanent fault right after it): the run
    fails, the later steps never run, and tear_down, which has no launch record, finds the instance by tag."""
    env = airflow_env(local_cloud, airflow_home)
    env["IMAGE_FACTORY_FAULTS"] = "after:launch"
    result = run_dag("shopspinner-linux-image", env)

    assert result.exit_code != 0 and result.state == "failed"
    assert result.task_states["create_builder_network"] == "success"
    assert result.task_states["launch_builder_instance"] == "failed"
    assert "configure" not in result.task_states and "register_image" not in result.task_states
    assert result.task_states["tear_down"] == "success"
    build_id = build_id_for("shopspinner-linux-image", result.run_id)
    made = instances_of(ec2, build_id)
    assert [i["State"]["Name"] for i in made] == ["terminated"]  # it was made, and it is gone
    assert f"deleted instance {made[0]['InstanceId']}" in result.task_logs["tear_down"]
    assert find_images(ec2, build_id) == []
    assert builder_resources(ec2, ssm, build_id) == []
