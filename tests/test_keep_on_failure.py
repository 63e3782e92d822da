"""A failed build's instance kept to be looked at (``keep_on_failure_hours``, keep.py), on the local cloud.

One real DAG run whose role fails: the builder stays running with its security group, subnet, key pair and the
key's parameter, each tagged ``image-factory:keep-until``; ``image-factory ssh BUILD -- COMMAND`` runs on it
(the host key pinned from its console, the key in a temporary file removed afterwards); the sweeper keeps it
until keep-until, and sweeps it once that has passed (the sweep is the build's teardown, as `release`'s is;
test_lifecycle releases a kept test instance); ``image-factory release`` then says it kept nothing.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

from image_factory import host_keys
from image_factory.build import TAG_KEEP_UNTIL, TAG_LOGIN, build_id_for, tag_dict
from image_factory.inventory import builder_resources
from image_factory.keep import KEEP_UNTIL_FORMAT, ssh_command
from image_factory.resources import parameter_folder
from image_factory.steps.teardown import tear_down
from image_factory.sweeper import find_builds, orphans, sweep
from localcloud.runner import airflow_env, run_dag
from tests.test_build_e2e import AL2023, PRIVATE_KEY_MARKER, instances_of, write_spec
from tests.test_cli import cli_env, run_cli

SPEC = "kept-failure-image"


def kept_tags(ec2, ssm, build_id: str) -> dict[str, str | None]:
    """Each of the build's resources ("kind id") -> its keep-until tag (None: untagged)."""
    found = {}
    for kind, resource_id in builder_resources(ec2, ssm, build_id):
        if kind == "ssm-parameter":
            tags = tag_dict(ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=resource_id)["TagList"])
        elif kind == "instance":
            tags = tag_dict(ec2.describe_instances(InstanceIds=[resource_id])["Reservations"][0]["Instances"][0]
                            .get("Tags"))
        else:
            tags = tag_dict(ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]) \
                if kind != "key-pair" else tag_dict(ec2.describe_key_pairs(KeyNames=[resource_id])["KeyPairs"][0]
                                                    .get("Tags"))
        found[f"{kind} {resource_id}"] = tags.get(TAG_KEEP_UNTIL)
    return found


def parameter_of(ssm, build_id: str) -> str:
    [parameter] = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Option": "BeginsWith",
                                                             "Values": [parameter_folder(build_id)]}])["Parameters"]
    return parameter["Name"]


def retag(ec2, ssm, build_id: str, until: datetime) -> None:
    """keep-until moved (as if the hours had passed), on every kept resource."""
    tag = [{"Key": TAG_KEEP_UNTIL, "Value": until.strftime(KEEP_UNTIL_FORMAT)}]
    for kind, resource_id in builder_resources(ec2, ssm, build_id):
        if kind == "ssm-parameter":
            ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=resource_id, Tags=tag)
        elif kind == "key-pair":
            key_id = ec2.describe_key_pairs(KeyNames=[resource_id])["KeyPairs"][0]["KeyPairId"]
            ec2.create_tags(Resources=[key_id], Tags=tag)
        else:
            ec2.create_tags(Resources=[resource_id], Tags=tag)


def test_a_failed_build_keeps_its_builder_to_log_in_to_until_released_or_swept(
        local_cloud, airflow_home, ec2, ssm, tmp_path):
    roles = tmp_path / "roles"
    (roles / "failing").mkdir(parents=True)
    (roles / "failing" / "10-fail.sh").write_text("echo 'about to fail on purpose'\nexit 1\n")
    write_spec(tmp_path / "specs", SPEC, f"""\
        image:
          name: {SPEC}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          instance_size: small
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          keep_on_failure_hours: 1
          configure:
            tool: shell
            server_role: failing
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"), roles_folder=str(roles))
    started = datetime.now(UTC).replace(microsecond=0)
    result = run_dag(SPEC, env)
    build_id = build_id_for(SPEC, result.run_id)
    try:
        assert result.state == "failed" and result.task_states["configure"] == "failed", result.output[-5000:]
        assert result.task_states["tear_down"] == "success"

        # The builder runs; it and what it needs are tagged keep-until, an hour after the teardown.
        [builder] = instances_of(ec2, build_id)
        assert builder["State"]["Name"] == "running"
        assert tag_dict(builder["Tags"])[TAG_LOGIN] == "ec2-user"
        kept = kept_tags(ec2, ssm, build_id)
        assert {name.split()[0] for name in kept} >= {"instance", "key-pair", "ssm-parameter", "security-group",
                                                       "subnet"}
        [until_text] = set(kept.values())
        until = datetime.strptime(until_text, KEEP_UNTIL_FORMAT).replace(tzinfo=UTC)
        assert started + timedelta(hours=1) <= until <= datetime.now(UTC) + timedelta(hours=1)
        log = result.task_logs["tear_down"]
        assert f"bin/image-factory ssh {build_id}" in log and f"bin/image-factory release {build_id}" in log
        assert f"kept until {until_text}" in log
        assert PRIVATE_KEY_MARKER not in result.output

        # The sweeper keeps it until keep-until, even past its maximum age and with its run failed.
        def swept(now: datetime) -> list[str]:
            return [o.build_id for o in orphans(find_builds(ec2, ssm), now, timedelta(0), lambda spec, run: "failed",
                                                timedelta(minutes=1)) if o.build_id == build_id]

        assert swept(datetime.now(UTC)) == []

        # image-factory ssh BUILD -- COMMAND runs it there, each argument as one word: no shell on either side
        # makes code of it. The key's file lives in a private temporary folder, gone afterwards.
        temporary = tmp_path / "tmp"
        temporary.mkdir()
        cli = cli_env(**local_cloud.env(), TMPDIR=str(temporary))
        read = run_cli("ssh", build_id, "--", "cat", "/etc/os-release", env=cli)
        assert read.returncode == 0, read.stderr
        assert "ID=" in read.stdout
        console_key = host_keys.fingerprint(host_keys.from_console(ec2, builder["InstanceId"])[0])
        assert f"host key (from its console) {console_key}" in read.stderr  # the key ssh was held to
        hostile = ["echo", "a  b", "$(id)", ";", "touch /tmp/kept-injected", "`id`"]
        echoed = run_cli("ssh", build_id, "--", *hostile, env=cli)
        assert echoed.stdout == "a  b $(id) ; touch /tmp/kept-injected `id`\n", echoed.stderr
        assert run_cli("ssh", build_id, "--", "test", "!", "-e", "/tmp/kept-injected", env=cli).returncode == 0
        for answer in (read, echoed):
            assert PRIVATE_KEY_MARKER not in answer.stdout + answer.stderr
        assert list(temporary.iterdir()) == []
        # The command line it runs logs in only to the pinned host key: another key at that address is refused.
        key_file, other = temporary / "key", temporary / "other"
        key_file.write_text(ssm.get_parameter(Name=parameter_of(ssm, build_id), WithDecryption=True)
                            ["Parameter"]["Value"])
        key_file.chmod(0o600)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        known_hosts = temporary / "known_hosts"
        address = builder["PrivateIpAddress"]
        known_hosts.write_text(host_keys.known_hosts_text(address, 22, [other.with_suffix(".pub").read_text()]))
        refused = subprocess.run(ssh_command(address, 22, "ec2-user", key_file, known_hosts, ["true"]),
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
        for made in (key_file, other, other.with_suffix(".pub"), known_hosts):
            made.unlink()

        # With the hours passed the sweeper sweeps it: its dry run says what it deletes, and its sweep (the
        # build's teardown, as `release`'s, which test_lifecycle releases with) leaves nothing of the build.
        retag(ec2, ssm, build_id, datetime.now(UTC) - timedelta(minutes=1))
        assert swept(datetime.now(UTC)) == [build_id]
        [orphan] = [o for o in orphans(find_builds(ec2, ssm), datetime.now(UTC), timedelta(0),
                                       lambda spec, run: "failed", timedelta(minutes=1)) if o.build_id == build_id]
        planned = sweep(ec2, ssm, [orphan], dry_run=True, schedule=1).would_delete[build_id]
        assert sorted(planned) == sorted(kept)
        sweep(ec2, ssm, [orphan], dry_run=False, schedule=1)
        assert builder_resources(ec2, ssm, build_id) == []
        assert [i["State"]["Name"] for i in instances_of(ec2, build_id)] == ["terminated"]
        # A build that kept nothing is not torn down by `release`: it says so.
        again = run_cli("release", build_id, env=cli)
        assert again.returncode == 1 and "kept nothing" in again.stderr
    finally:
        tear_down(ec2, ssm, build_id, schedule=1)
