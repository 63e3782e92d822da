"""A failed build's instance, kept to be looked at (the spec's or the trigger's ``keep_on_failure_hours``).

When ``configure`` or ``test_image`` fails, the teardown keeps the instance it ran on, with what it needs to be
reached (:data:`KEPT_KINDS`: its security group, subnet, key pair and the key's parameter; the build's own VPC
if it made one), and tags each of them ``image-factory:keep-until`` (ISO UTC); the rest of the build goes as
always. Then:

- ``image-factory ssh BUILD_ID [-- COMMAND]`` (:func:`ssh`) logs in to it with OpenSSH's client: the key read
  from its parameter into a private file, the host key pinned from the instance's console as the builds do
  (host_keys.py), both in a temporary folder removed afterwards;
- ``image-factory release BUILD_ID`` (:func:`release`) tears it down now, with the build's own teardown;
- the sweeper tears it down once ``keep-until`` has passed (sweeper.decide).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from image_factory import resources
from image_factory.build import TAG_INSTANCE, TAG_KEEP_UNTIL, TAG_LOGIN
from image_factory.errors import PermanentError

log = logging.getLogger("image_factory")

#: What stays with the kept instance: what it needs to run and to be reached.
KEPT_KINDS = ("key-pair", "ssm-parameter", "security-group", "subnet", "vpc")
KEEP_UNTIL_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: The longest a build keeps anything (the spec's limit): a keep-until further ahead is not one a build made.
MAX_KEEP = timedelta(hours=24)
#: The command line, as the task log prints it.
COMMAND = "bin/image-factory"


class NothingKept(PermanentError):
    pass


@dataclass(frozen=True)
class Keeping:
    """What the teardown keeps: the instance of ``purpose`` (``builder`` or ``test``), until ``until``."""

    purpose: str
    until: datetime
    #: The login the instance is reached with (tagged on it, for ``image-factory ssh``).
    login: str

    @classmethod
    def of(cls, purpose: str, hours: int, login: str) -> Keeping:
        return cls(purpose, datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours), login)

    @property
    def until_text(self) -> str:
        return self.until.strftime(KEEP_UNTIL_FORMAT)

    def hold(self, ec2, ssm, found: list[resources.Resource]) -> list[resources.Resource]:
        """Tag what is kept of ``found`` (the build's resources), log how to reach it; returns the rest (what
        the teardown deletes). No live instance of the purpose: nothing is kept."""
        instances = [r for r in found if r.kind == "instance" and r.tags.get(TAG_INSTANCE) == self.purpose
                     and r.data.get("State", {}).get("Name") == "running"]
        if not instances:
            log.warning("keep_on_failure_hours: no running %s instance to keep: the build is torn down", self.purpose)
            return found
        kept = [*instances[:1], *(r for r in found if r.kind in KEPT_KINDS)]
        tag = {"Key": TAG_KEEP_UNTIL, "Value": self.until_text}
        # (CreateTags names a key pair by its id, not by its name.)
        ec2.create_tags(Resources=[r.data.get("KeyPairId", r.id) if r.kind == "key-pair" else r.id
                                   for r in kept if r.kind != "ssm-parameter"], Tags=[tag])
        ec2.create_tags(Resources=[instances[0].id], Tags=[{"Key": TAG_LOGIN, "Value": self.login}])
        for parameter in (r for r in kept if r.kind == "ssm-parameter"):
            ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=parameter.id, Tags=[tag])
        build_id = instances[0].build_id
        log.info("kept until %s (keep_on_failure_hours), to be looked at: %s", self.until_text,
                 ", ".join(f"{r.kind} {r.id}" for r in kept))
        log.info("log in to it: %s ssh %s", COMMAND, build_id)
        log.info("tear it down now: %s release %s", COMMAND, build_id)
        log.info("(with --region and --aws-conn-id where the CLI's default connection and region are not the "
                 "build's; the sweeper tears it down after %s)", self.until_text)
        return [r for r in found if r not in kept]


def failed(states: Mapping[str, str | None], kept_by: Mapping[str, str]) -> str | None:
    """The purpose of the instance to keep: that of the first task of ``kept_by`` (task id -> purpose) that
    failed, as ``states`` (task id -> state) say; None if none did."""
    return next((purpose for task_id, purpose in kept_by.items() if states.get(task_id) == "failed"), None)


def keep_until(tags: Mapping[str, str]) -> datetime | None:
    """The ``keep-until`` time a resource's tags give (None: none, or not a time)."""
    try:
        return datetime.strptime(tags[TAG_KEEP_UNTIL], KEEP_UNTIL_FORMAT).replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return None


# --- the command line ---------------------------------------------------------------------------------------

def kept(ec2, ssm, build_id: str) -> list[resources.Resource]:
    """What the build kept: its resources, if one of them carries ``keep-until`` (else NothingKept)."""
    found = resources.find(ec2, ssm, build_id)
    if not any(TAG_KEEP_UNTIL in r.tags for r in found):
        raise NothingKept(f"build {build_id} kept nothing here (no resource of it is tagged {TAG_KEEP_UNTIL}; "
                          "only a failed build whose spec or trigger sets keep_on_failure_hours keeps its "
                          "instance; is this its region?)")
    return found


def _instance(found: Iterable[resources.Resource], build_id: str) -> resources.Resource:
    running = [r for r in found if r.kind == "instance" and TAG_KEEP_UNTIL in r.tags
               and r.data.get("State", {}).get("Name") == "running"]
    if not running:
        raise NothingKept(f"build {build_id} has no running kept instance")
    return running[0]


def _address(instance: dict, ssh_host: str, emulated: bool) -> str:
    """Where SSH reaches it: the deployment's ssh_host, else its public address, else its private one; an IP
    address (what reaches ssh's command line is never a name or an option), on an emulated cloud only one of
    its machines' range."""
    from image_factory.steps.instance import EMULATED_RANGE

    host = ssh_host or instance.get("PublicIpAddress") or instance.get("PrivateIpAddress") or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NothingKept(f"instance {instance['InstanceId']}: no IP address to reach it by") from None
    if emulated and not ssh_host and address not in EMULATED_RANGE:
        raise NothingKept(f"instance {instance['InstanceId']}'s address {host} is outside {EMULATED_RANGE}, the "
                          "range of an emulated cloud's machines: not connecting there")
    return str(address)


def ssh_command(host: str, port: int, login: str, key_file: Path, known_hosts: Path | None,
                command: Sequence[str]) -> list[str]:
    """OpenSSH's command line: only the key given, only the pinned host key (``known_hosts``; None: any, as
    ``host_key_check = off`` says). ``command``: run on the instance, each argument quoted for its shell."""
    checks = (["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
               "-o", "GlobalKnownHostsFile=/dev/null"] if known_hosts else
              ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
    return ["ssh", "-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", *checks,
            "-o", "LogLevel=ERROR", "-p", str(port), "-l", login, *([] if command else ["-t"]), "--", host,
            *([shlex.join(command)] if command else [])]


def ssh(ec2, ssm, build_id: str, command: Sequence[str], settings, emulated: bool, login: str | None = None) -> int:
    """Log in to the build's kept instance (or run ``command`` on it); returns ssh's exit code. The private key
    and the host key are written to a temporary folder only this user may read, removed when ssh ends (also
    on an error, ctrl-C or SIGTERM); the key is never printed."""
    from image_factory import host_keys

    found = kept(ec2, ssm, build_id)
    instance = _instance(found, build_id)
    host = _address(instance.data, settings.ssh_host, emulated)
    login = login or instance.tags.get(TAG_LOGIN) or "ec2-user"
    keys = host_keys.from_console(ec2, instance.id) if settings.checks_host_key() else []
    if settings.checks_host_key() and not keys:
        raise NothingKept(f"instance {instance.id}: its console shows no SSH host key to check it by")
    parameter = next((r.id for r in found if r.kind == "ssm-parameter"), None)
    if parameter is None:
        raise NothingKept(f"build {build_id}: the parameter of its private key is gone")
    private = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="image-factory-ssh-") as folder:  # (mode 0700)
            key_file = Path(folder) / "key"
            with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(private if private.endswith("\n") else private + "\n")
            known_hosts = None
            if keys:
                known_hosts = Path(folder) / "known_hosts"
                known_hosts.write_text(host_keys.known_hosts_text(host, settings.ssh_port, keys))
                print(f"{instance.id} at {host}: host key (from its console) {host_keys.fingerprint(keys[0])}",
                      file=sys.stderr)
            return subprocess.run(ssh_command(host, settings.ssh_port, login, key_file, known_hosts, command),
                                  check=False).returncode
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds: the temporary folder is removed
