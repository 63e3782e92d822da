"""SSH to an instance only with the host key its console shows (plugins/image_factory/host_keys.py), against the
local cloud's machines: each prints its sshd's host key on its console at boot, as cloud-init does."""

from __future__ import annotations

import base64
import struct
import time

import boto3
import paramiko
import pytest

from image_factory import host_keys, remote
from image_factory.host_keys import HostKeyError
from image_factory.settings import SettingsError
from image_factory.steps.infrastructure import _new_key
from image_factory.waits.triggers import SshReadyTrigger
from tests.test_triggers import first_event

REGION = "eu-west-1"
#: A first boot's console as cloud-init writes it (keys_to_console), keys shortened to what parsing needs.
CLOUD_INIT_CONSOLE = """\
[   12.3] cloud-init[1012]: Cloud-init v. 22.2.2 finished at Sat, 05 Dec 2026 16:00:00 +0000.
#############################################################
-----BEGIN SSH HOST KEY FINGERPRINTS-----
256 SHA256:n4y0Rr2Vkd3x9d1z1Z2g3h4j5k6l7m8n9o0p1q2r3s4 root@ip-10-0-0-12 (ECDSA)
256 SHA256:u8Cq6G0Zr1aHk0n3T4pW3L2xQ9yJ8sV7bN6mK5jH4gF root@ip-10-0-0-12 (ED25519)
-----END SSH HOST KEY FINGERPRINTS-----
#############################################################
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= root@ip-10-0-0-12
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq0 root@ip-10-0-0-12
-----END SSH HOST KEY KEYS-----
"""


def test_the_console_s_keys_are_read_the_preferred_type_first_and_only_from_the_key_block():
    assert host_keys.parse(CLOUD_INIT_CONSOLE) == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq0",
                                                   "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY="]
    # A second boot prints them again: the last block counts. A block cut off (the console's 64 KiB) counts
    # for nothing, and lines that are not keys are skipped.
    rebooted = CLOUD_INIT_CONSOLE + CLOUD_INIT_CONSOLE.replace("AAAAIOq0", "AAAAIBBB")
    assert host_keys.parse(rebooted)[0] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBB"
    assert host_keys.parse(CLOUD_INIT_CONSOLE.rsplit("-----END", 1)[0]) == []
    assert host_keys.parse("-----BEGIN SSH HOST KEY KEYS-----\nnot a key\nssh-ed25519 %%%\n"
                           "-----END SSH HOST KEY KEYS-----\n") == []


def key_blob(kind: str, size: int = 32) -> str:
    """A public key's base64 as SSH writes it: the type's name, then (here) ``size`` bytes standing for the key."""
    return base64.b64encode(struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", size)
                            + bytes(size)).decode()


def block(*lines: str) -> str:
    return "\n".join([host_keys.BEGIN, *lines, host_keys.END, ""])


def test_a_hostile_console_gives_only_plain_keys_of_known_types():
    """The console is the instance's own output: whatever it prints there, what comes out is ``type base64``
    of a type SSH takes, whose key says it is of that type, a few of them, none huge."""
    ed25519, rsa = key_blob("ssh-ed25519"), key_blob("ssh-rsa", 256)
    # Fields after the key (cloud-init's comment, or anything else) are left out.
    assert host_keys.parse(block(f"ssh-ed25519 {ed25519} root@host \x1b[2J {{{{ x }}}} more")) == [
        f"ssh-ed25519 {ed25519}"]
    # Control characters are no part of a key: such a line is not one.
    assert host_keys.parse(block(f"ssh-ed25519\x1b[31m {ed25519}", f"\x1bssh-rsa {rsa}",
                                 f"ssh-rsa {rsa}\x00AAAA")) == []
    # A key whose own type is another than the line says.
    assert host_keys.parse(block(f"ssh-ed25519 {rsa}", f"ssh-rsa {rsa}")) == [f"ssh-rsa {rsa}"]
    # A key far longer than any SSH host key (a 16384-bit RSA key is under 3,000 characters).
    assert host_keys.parse(block(f"ssh-rsa {key_blob('ssh-rsa', 30000)}", f"ssh-ed25519 {ed25519}")) == [
        f"ssh-ed25519 {ed25519}"]
    # Many keys: the first of each type only.
    many = [f"ssh-ed25519 {key_blob('ssh-ed25519', 32 + n)}" for n in range(1000)]
    assert host_keys.parse(block(*many, f"ssh-rsa {rsa}")) == [many[0], f"ssh-rsa {rsa}"]


def test_moto_s_own_console_shows_no_host_key(local_cloud):
    """moto answers every GetConsoleOutput with one fixed sample; the front puts the machine's own console there."""
    moto = boto3.client("ec2", endpoint_url=local_cloud.moto_endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
    image = moto.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = moto.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    try:
        output = moto.get_console_output(InstanceId=instance_id)["Output"]
    finally:
        moto.terminate_instances(InstanceIds=[instance_id])
    assert "Linux version" in output and host_keys.parse(output) == []


def served_host_key(host: str, port: int = 22) -> str:
    """The host key the SSH server at host:port presents, read with a bare handshake (no login)."""
    transport = paramiko.Transport((host, port))
    try:
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    return f"{key.get_name()} {key.get_base64()}"


def test_a_machine_s_console_shows_the_host_key_its_sshd_presents(machine, ec2):
    instance_id, address, _ = machine
    keys = host_keys.from_console(ec2, instance_id)
    assert served_host_key(address) in keys  # cloud-init's keys: Ed25519 (preferred), ECDSA, RSA
    assert host_keys.fingerprint(keys[0]).startswith("ssh-ed25519 SHA256:")
    assert keys[0] == served_host_key(address)


def test_ssh_logs_in_to_the_console_s_key_and_refuses_any_other(machine, ec2):
    instance_id, address, private_key = machine
    keys = host_keys.from_console(ec2, instance_id)
    hook = remote.connect(address, 22, "ec2-user", private_key, host_keys=keys)
    try:
        assert remote.run(hook, "hostname", timeout=30) == [f"ip-{address.replace('.', '-')}"]
    finally:
        hook.get_conn().close()
    # Another key than the one the server presents: as if something else answered at the instance's address.
    _, impostor = _new_key()
    expected = " ".join(impostor.split()[:2])
    started = time.monotonic()
    with pytest.raises(HostKeyError) as refused:
        remote.wait_until_ready(address, 22, "ec2-user", private_key, timeout=30, interval=0.5,
                                host_keys=[expected])
    # Refused at the first attempt (waiting cannot change the server), naming both keys.
    assert time.monotonic() - started < 10
    message = str(refused.value)
    assert host_keys.fingerprint(keys[0]) in message and host_keys.fingerprint(expected) in message, message


def test_a_stale_key_in_the_worker_s_known_hosts_is_named_as_the_cause(machine, ec2, tmp_path, monkeypatch):
    """The SSH hook also trusts the worker user's ~/.ssh/known_hosts, and paramiko asks it first: a key left there
    by an earlier server at the address (addresses are reused) refuses the instance; the error says so."""
    instance_id, address, private_key = machine
    keys = host_keys.from_console(ec2, instance_id)
    _, stale = _new_key()
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text(host_keys.known_hosts_text(address, 22, [stale]))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(HostKeyError) as refused:
        remote.connect(address, 22, "ec2-user", private_key, host_keys=keys)
    message = str(refused.value)
    assert f"~/.ssh/known_hosts of this worker holds another host key for {address}" in message, message
    assert host_keys.fingerprint(stale) in message and f"ssh-keygen -R '{address}'" in message


def test_the_ssh_wait_brings_the_console_s_host_keys(machine, ec2, aws_connection):
    instance_id, address, _ = machine
    instance = {"aws_conn_id": aws_connection, "region": REGION, "instance_id": instance_id}
    event = first_event(SshReadyTrigger(address, 22, timeout=30, delay=0.2, instance=instance, console=True))
    assert event.payload["status"] == "success"
    assert event.payload["answer"]["host_keys"] == host_keys.from_console(ec2, instance_id)  # Ed25519, ECDSA, RSA
    assert event.payload["answer"]["host_keys"][0] == served_host_key(address)


def test_a_console_without_host_keys_ends_the_wait_at_its_timeout_saying_what_to_set(machine, ec2, aws_connection):
    """SSH answers, but the console never shows a key (an origin image without cloud-init): here, the console
    of an instance whose machine is gone (moto's own sample, which has none)."""
    _, address, _ = machine
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    gone = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[gone])
    assert host_keys.from_console(ec2, gone) == []
    instance = {"aws_conn_id": aws_connection, "region": REGION, "instance_id": gone}
    event = first_event(SshReadyTrigger(address, 22, timeout=1.5, delay=0.3, instance=instance, console=True))
    assert event.payload["status"] == "timeout"
    assert f"SSH on {address}:22 answers, but the console of instance {gone} showed no SSH host key" in \
        event.payload["message"] and "host_key_check = off" in event.payload["message"]


def test_a_console_the_builds_may_not_read_fails_the_wait_with_what_to_grant(machine, local_cloud, aws_connection):
    instance_id, address, _ = machine
    instance = {"aws_conn_id": aws_connection, "region": REGION, "instance_id": instance_id}
    local_cloud.configure(deny=[f"ec2:GetConsoleOutput@{REGION}"])
    try:
        event = first_event(SshReadyTrigger(address, 22, timeout=30, delay=0.2, instance=instance, console=True))
    finally:
        local_cloud.configure(deny=[])
    assert event.payload["status"] == "failed"
    assert "grant ec2:GetConsoleOutput" in event.payload["message"] and instance_id in event.payload["message"]
    assert "host_key_check = off" in event.payload["message"]


def test_an_unknown_host_key_check_setting_is_refused(monkeypatch):
    from image_factory import settings

    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__HOST_KEY_CHECK", "yes")
    with pytest.raises(SettingsError, match="host_key_check 'yes': expected one of console, off"):
        settings.load().checks_host_key()
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__HOST_KEY_CHECK", "off")
    assert settings.load().checks_host_key() is False
    monkeypatch.delenv("AIRFLOW__IMAGE_FACTORY__HOST_KEY_CHECK")
    assert settings.load().checks_host_key() is True


def test_a_build_that_may_not_read_the_console_fails_in_configure_and_leaves_nothing(
        local_cloud, airflow_home, ec2, ssm, tmp_path):
    from image_factory.build import build_id_for
    from image_factory.inventory import builder_resources
    from localcloud.runner import airflow_env, run_dag
    from tests.test_build_e2e import AL2023, write_spec

    write_spec(tmp_path / "specs", "console-denied-image", f"""\
        image:
          name: console-denied-image
          platform: aws
          origin: resolve:ssm:{AL2023}
          region: {REGION}
          instance_size: small
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure:
            tool: shell
            server_role: appserver
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"))
    local_cloud.configure(deny=[f"ec2:GetConsoleOutput@{REGION}"])
    try:
        result = run_dag("console-denied-image", env)
    finally:
        local_cloud.configure(deny=[])
    assert result.state == "failed" and result.task_states["configure"] == "failed", result.task_states
    assert "grant ec2:GetConsoleOutput" in result.task_logs["configure"]
    assert "appserver role: configuring" not in result.task_logs["configure"]  # no login, no role
    assert result.task_states["tear_down"] == "success"
    assert builder_resources(ec2, ssm, build_id_for("console-denied-image", result.run_id)) == []
