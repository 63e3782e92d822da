"""The command line, run as users run it: ``python -m image_factory validate | render | list | schema``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_ORIGIN, TAG_ROLE, TAG_RUN, TAG_SPEC, TAG_SPEC_HASH
from image_factory.schema import SCHEMA_PATH

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
BAD_SPECS = sorted((FIXTURES / "bad_specs").glob("*.yaml"))
SEED = sorted((FIXTURES / "seed").glob("*.yaml"))
SHIPPED = sorted((PROJECT / "include" / "specs").glob("*.y*ml"))
LIVE_SPEC = PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml"
EXPECT = re.compile(r"^# expect: (?P<field>.+?) \| (?P<substring>.+)$")
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
TASKS = ["create_builder_network", "launch_builder_instance", "configure", "register_image", "test_image", "promote",
         "tear_down"]
HOSTILE = "servermaker.shopspinner.xyz; rm -rf /"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__IMAGE_FACTORY__", "AIRFLOW_CONN_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT / "plugins"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_cli(*arguments: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "image_factory", *arguments], env=env or cli_env(), cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout)


def expectation(path: Path) -> tuple[str, str]:
    match = EXPECT.match(path.read_bytes().split(b"\n", 1)[0].decode())
    assert match, f"{path.name}: the first line must be '# expect: <field> | <substring of message>'"
    return match["field"], match["substring"]


@pytest.fixture(scope="module")
def validated() -> dict[Path, subprocess.CompletedProcess]:
    """``validate FILE`` for each bad spec, each good spec and each seed example on its own, four at a time."""
    paths = [*BAD_SPECS, *SHIPPED, *SEED]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(paths, pool.map(lambda p: run_cli("validate", str(p)), paths), strict=True))


# validate


def test_the_corpus_is_there():
    assert len(BAD_SPECS) >= 35 and SHIPPED and len(SEED) == 3


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_validate_fails_on_each_bad_spec_naming_the_field(validated, path):
    result = validated[path]
    field, substring = expectation(path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(f"{path}: ") for line in lines), result.stdout
    assert any(line.startswith(f"{path}: {field}: ") and substring in line for line in lines), result.stdout
    assert f"{path}: ok" not in lines


@pytest.mark.parametrize("path", [*SHIPPED, *SEED], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_validate_passes_the_shipped_specs_and_the_seed_examples(validated, path):
    result = validated[path]
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: ok\n", "")


def test_validate_a_folder_reports_every_file(tmp_path):
    result = run_cli("validate", str(FIXTURES / "bad_specs"), str(PROJECT / "include" / "specs"))
    assert result.returncode == 1
    reported = {line.split(": ", 1)[0] for line in result.stdout.splitlines()}
    assert reported == {str(p) for p in BAD_SPECS} | {str(PROJECT / "include" / "specs" / p.name) for p in SHIPPED}
    assert f"{PROJECT / 'include' / 'specs' / LIVE_SPEC.name}: ok" in result.stdout.splitlines()


def test_validate_reports_the_same_name_in_several_files():
    result = run_cli("validate", *map(str, SEED))  # the three seed examples all build shopspinner-linux-image
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for path, line in zip(SEED, lines, strict=True):
        assert line.startswith(f"{path}: image.name: 'shopspinner-linux-image' is used by several specs (")


def test_validate_usage_errors_exit_2(tmp_path):
    assert run_cli("validate").returncode == 2
    missing = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    empty = run_cli("validate", str(tmp_path))
    assert empty.returncode == 2 and "no *.yaml" in empty.stderr


def test_the_wrapper_script_runs_the_command_line():
    result = subprocess.run([str(PROJECT / "bin" / "image-factory"), "validate", str(LIVE_SPEC)], capture_output=True,
                            text=True, timeout=120, env=cli_env())
    assert (result.returncode, result.stdout) == (0, f"{LIVE_SPEC}: ok\n"), result.stderr


# render


def test_render_shows_the_tasks_resources_tags_and_role_scripts_of_the_shipped_spec():
    result = run_cli("render", str(LIVE_SPEC), env=cli_env(AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR="10.20.0.0/16"))
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    assert plan["dag_id"] == "shopspinner-linux-image"
    assert plan["schedule"] == "0 2 * * *"
    assert [task["task_id"] for task in plan["tasks"]] == TASKS
    tasks = {task["task_id"]: task for task in plan["tasks"]}
    # The plan is made from the DAG's own table: each task's line is the one the DAG's tasks carry.
    from image_factory.dag import STEPS

    assert {s.task_id: s.does for s in STEPS if s.task_id in TASKS} == {t["task_id"]: t["does"] for t in plan["tasks"]}
    assert tasks["test_image"]["tool"] == "testinfra" and tasks["test_image"]["files"] == ["test_appserver.py"]
    assert tasks["promote"]["channels"] == {"latest": "/image-factory/shopspinner-linux-image/latest"}
    assert tasks["configure"]["after"] == ["create_builder_network", "launch_builder_instance"]
    assert tasks["tear_down"]["teardown_of"] == "create_builder_network"
    assert plan["parameters"] == {"IMAGE_BUILDER_SUBNET_ID": "<made by create_builder_network>",
                                  "IMAGE_BUILDER_SSH_KEY": "<made by create_builder_network>"}
    # The plan shows the requests the steps send, made by the steps' own request functions.
    calls = {call["call"]: call["request"] for call in tasks["create_builder_network"]["requests"]}
    assert list(calls) == ["ec2:CreateVpc", "ec2:CreateSubnet", "ec2:CreateSecurityGroup",
                           "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
                           "ec2:AuthorizeSecurityGroupEgress", "ssm:PutParameter", "ec2:ImportKeyPair"]
    assert calls["ec2:AuthorizeSecurityGroupIngress"]["IpPermissions"][0]["IpRanges"][0]["CidrIp"] == "10.20.0.0/16"
    assert [(rule["IpProtocol"], rule["FromPort"]) for rule in calls["ec2:AuthorizeSecurityGroupEgress"][
        "IpPermissions"]] == [("tcp", 53), ("tcp", 80), ("tcp", 443), ("udp", 53)]
    assert calls["ec2:CreateSubnet"]["VpcId"] == "<at run time: the new VPC's id>"
    # Without a run id, the build id is not known, nor the /28 it tries first.
    assert calls["ec2:CreateSubnet"]["CidrBlock"].startswith("<at run time: a /28 of 10.213.0.0/24 chosen by")
    assert calls["ssm:PutParameter"]["Value"].startswith("<at run time: ")  # never a key
    [launch] = tasks["launch_builder_instance"]["requests"]
    instance = launch["request"]
    assert (launch["call"], instance["InstanceType"], launch["note"]) == ("ec2:RunInstances", "t3.small",
                                                                          "instance_size small")
    assert instance["NetworkInterfaces"][0]["SubnetId"] == "<made by create_builder_network>"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    assert instance["InstanceInitiatedShutdownBehavior"] == "terminate"
    # At the defaults the waits poll on the priors of a spec's first build.
    assert "from 10.0 s" in tasks["launch_builder_instance"]["waits"]
    configure = tasks["configure"]
    assert (configure["tool"], configure["server_role"]) == ("shell", "appserver")
    assert configure["commands"] == ["bash ./10-base.sh", "bash ./20-appserver.sh"]
    assert configure["ssh"]["host_key"].startswith("the one the instance's console shows")
    unchecked = run_cli("render", str(LIVE_SPEC), env=cli_env(AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR="10.20.0.0/16",
                                                           AIRFLOW__IMAGE_FACTORY__HOST_KEY_CHECK="off"))
    unchecked_tasks = {task["task_id"]: task for task in yaml.safe_load(unchecked.stdout)["tasks"]}
    assert unchecked_tasks["configure"]["ssh"]["host_key"] == "not checked ([image_factory] host_key_check = off)"
    unknown = yaml.safe_load(run_cli("render", str(LIVE_SPEC), env=cli_env(
        AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR="10.20.0.0/16", AIRFLOW__IMAGE_FACTORY__HOST_KEY_CHECK="yes")).stdout)
    assert any("host_key_check 'yes': expected one of console, off" in w for w in unknown["warnings"])
    [create_image] = tasks["register_image"]["requests"]
    assert create_image["call"] == "ec2:CreateImage"
    assert create_image["request"]["Name"].startswith("shopspinner-linux-image-<at run time: ")
    image_tags = create_image["request"]["TagSpecifications"][0]["Tags"]
    assert {TAG_SPEC, TAG_SPEC_HASH, TAG_ORIGIN, TAG_ROLE, TAG_RUN, TAG_BUILD} <= set(image_tags)
    assert image_tags[TAG_SPEC] == "shopspinner-linux-image"
    assert image_tags[TAG_SPEC_HASH] == plan["spec_hash"]
    assert image_tags[TAG_ROLE] == "appserver"
    assert image_tags["team"] == "shopspinner"
    assert image_tags[TAG_ORIGIN] == "<at run time: the origin's AMI id>"
    assert TAG_BUILD in calls["ec2:CreateVpc"]["TagSpecifications"][0]["Tags"]
    assert "warnings" not in plan


def test_render_quotes_hostile_values_and_marks_what_is_resolved_at_run_time(tmp_path):
    spec = tmp_path / "hostile.yaml"
    spec.write_text(yaml.safe_dump({"image": {
        "name": "hostile-image", "origin": "ami-0123456789abcdef0", "region": "eu-west-1",
        "description": "built from ${GIT_SHA}",
        "configure": {"tool": "servermaker", "code_repo": HOSTILE, "server_role": "${ROLE}"}}}))
    result = run_cli("render", str(spec), "--param", "ROLE=appserver", "--run-id", "manual__1",
                     env=cli_env(AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR="10.20.0.0/16"))
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    configure = next(task for task in plan["tasks"] if task["task_id"] == "configure")
    [command] = configure["commands"]
    assert command == f"servermaker apply --repository {shlex.quote(HOSTILE)} --role appserver"
    assert f"--repository '{HOSTILE}' --role appserver" in result.stdout  # printed as it will run
    assert shlex.split(command) == ["servermaker", "apply", "--repository", HOSTILE, "--role", "appserver"]
    assert plan["parameters"] == {"GIT_SHA": "${GIT_SHA} (resolved at run time)", "ROLE": "appserver"}
    assert plan["description"] == "built from ${GIT_SHA} (resolved at run time)"
    assert re.fullmatch(r"b[0-9a-f]{12}", plan["build_id"])


def test_airflows_log_lines_stay_out_of_the_output(tmp_path):
    """Airflow logs to stdout, and loads every plugin at its start when lazy loading is off (as the project runs
    it): a plugin's warning there (dag-factory's deprecation warnings, once it was installed) broke the YAML."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "noisy_plugin.py").write_text("import warnings\nwarnings.warn('noisy plugin: loaded')\n")
    result = run_cli("render", str(LIVE_SPEC), env=cli_env(
        AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins),
        AIRFLOW__CORE__LAZY_LOAD_PLUGINS="False", AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR="10.20.0.0/16"))
    assert result.returncode == 0, result.stderr
    assert "noisy plugin: loaded" in result.stderr
    assert yaml.safe_load(result.stdout)["dag_id"] == "shopspinner-linux-image"


def test_render_refuses_bad_input():
    bad = run_cli("render", str(FIXTURES / "bad_specs" / "region-europe.yaml"))
    assert bad.returncode == 1 and "image.region: expected an AWS region" in bad.stderr
    usage = run_cli("render", str(LIVE_SPEC), "--param", "lower=case")
    assert usage.returncode == 2 and "NAME=VALUE" in usage.stderr


# list


def test_list_shows_the_images_of_a_spec_from_their_lineage_tags(local_cloud, ec2, ssm, tmp_path):
    name = f"cli-list-{uuid.uuid4().hex[:8]}"
    origin = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    instance_id = ec2.run_instances(ImageId=origin, MinCount=1, MaxCount=1, InstanceType="t3.micro")[
        "Instances"][0]["InstanceId"]
    images: list[str] = []

    def make_image(build_id: str, complete: bool) -> str:
        tags = {TAG_SPEC: name, TAG_SPEC_HASH: "0123456789abcdef", TAG_ORIGIN: origin, TAG_ROLE: "appserver",
                TAG_BUILD: build_id, TAG_RUN: f"manual__{build_id}", "Name": name}
        if complete:
            tags[TAG_COMPLETE] = "true"
        image_id = ec2.create_image(
            InstanceId=instance_id, Name=f"{name}-20260101-000000-{build_id}",
            TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["ImageId"]
        images.append(image_id)
        return image_id

    try:
        older = make_image("b000000000001", complete=False)
        time.sleep(1.1)  # creation times have whole seconds
        newer = make_image("b000000000002", complete=True)
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"image:\n  name: {name}\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n")
        for argument in (name, str(spec)):
            result = run_cli("list", argument, env=cli_env(**local_cloud.env()))
            assert result.returncode == 0, result.stdout + result.stderr
            header, *rows = result.stdout.splitlines()
            assert header.split() == ["IMAGE", "ID", "NAME", "STATE", "CREATED", "ORIGIN", "AMI", "SERVER", "ROLE",
                                      "SPEC", "HASH", "BUILD", "ID", "COMPLETE", "TESTS", "OVERRIDDEN", "COPY", "OF",
                                      "CHANNELS"]
            assert [row.split()[0] for row in rows] == [newer, older]  # newest first
            assert rows[0].split()[1:] == [f"{name}-20260101-000000-b000000000002", "available",
                                           rows[0].split()[3], origin, "appserver", "0123456789abcdef",
                                           "b000000000002", "yes", "-", "-", "-", "-"]
            assert rows[1].split()[-6:] == ["b000000000001", "no", "-", "-", "-", "-"]
        shown = run_cli("show", newer, env=cli_env(**local_cloud.env()))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0] == f"image {newer} {name}-20260101-000000-b000000000002"
        assert {"  spec: " + name, "  build: b000000000002", "  role: appserver", "  channels: -"} <= set(lines)
        assert lines[-3].startswith(f"  built from {origin}") and lines[-1].startswith("    root origin: owner ")
        gone = run_cli("show", "ami-0000000000000dead", env=cli_env(**local_cloud.env()))
        assert gone.returncode == 1 and "missing: no such image" in gone.stdout
    finally:
        for image_id in images:
            snapshots = [m["Ebs"]["SnapshotId"] for i in ec2.describe_images(ImageIds=[image_id])["Images"]
                         for m in i.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
            ec2.deregister_image(ImageId=image_id)
            for snapshot_id in snapshots:
                ec2.delete_snapshot(SnapshotId=snapshot_id)
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_list_with_an_unknown_connection_fails_with_a_message():
    result = run_cli("list", "shopspinner-linux-image", "--aws-conn-id", "no_such_connection")
    assert result.returncode == 1
    assert "cannot list the images of 'shopspinner-linux-image' (connection 'no_such_connection')" in result.stderr


# schema


def test_schema_prints_the_committed_schema():
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA_PATH.read_text()
