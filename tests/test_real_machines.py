# ruff: noqa: F811 (the fixtures of tests/test_machines.py, imported by name)
"""The local cloud's machines boot as EC2 instances of a cloud image do (issue 28): systemd is PID 1, cloud-init
reads the NoCloud seed the local cloud writes (key pair, user data, a new instance's host keys on the console),
packages come from Debian through the mirror on the bridge as the security group allows, a stop is systemd's
poweroff.

Needs root (as `make test` runs here). Every instance, group and key a test makes is removed at its end (the
fixtures of tests/test_machines.py). ``-s`` prints the timings (measured, not asserted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid

import pytest
import test_machines
from test_machines import (  # noqa: F401 fixtures
    Fleet,
    base_ami,
    default_vpc,
    ec2m,
    fleet,
    key,
    ok,
    plan,
    registry,
    ssh_group,
    wait_image,
)

from image_factory import host_keys
from localcloud import base

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local cloud's machines need root")

USER_DATA = "#!/bin/sh\necho \"ran $(cat /var/lib/cloud/data/instance-id)\" >> /var/lib/user-data-runs\n"
MARKER_UNIT = """\
[Unit]
Description=writes a marker when it stops

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'date +%%s > /var/lib/stopped-cleanly'

[Install]
WantedBy=multi-user.target
"""


def launch(fleet: Fleet, image: str, group: str, user_data: str = "", timeout: float = 120) -> tuple[str, str, float]:
    """RunInstances; returns (id, address, seconds until DescribeInstances shows it running: sshd answers)."""
    started = time.monotonic()
    instance = fleet.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName=fleet.key_name,
                                       SecurityGroupIds=[group], UserData=user_data)["Instances"][0]
    fleet.ids.append(instance["InstanceId"])
    fleet.wait_running(instance["InstanceId"], timeout)
    return instance["InstanceId"], instance["PrivateIpAddress"], time.monotonic() - started


def console_keys(ec2, instance_id: str, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (keys := host_keys.from_console(ec2, instance_id)):
        assert time.monotonic() < deadline, f"no host keys on the console of {instance_id} after {timeout} s"
        time.sleep(0.1)
    return keys


def wait_state(fleet: Fleet, instance_id: str, state: str, timeout: float = 120) -> float:
    started = time.monotonic()
    while fleet.state(instance_id) != state:
        assert time.monotonic() - started < timeout, f"{instance_id} not {state} after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_pid_1_is_systemd_cloud_init_makes_the_host_keys_and_nothing_leads_to_the_metadata_address(
        local_cloud, ec2m, fleet, base_ami, ssh_group):
    started = time.monotonic()
    instance_id, ip, running = launch(fleet, base_ami, ssh_group)
    keys = console_keys(ec2m, instance_id)
    on_console = time.monotonic() - started
    print(f"\nRunInstances to running (sshd answering): {running:.2f} s; to the host keys on the console: "
          f"{on_console:.2f} s (goal 5 s)")
    assert ok(fleet.ssh(ip, "ps -p 1 -o comm=")).strip() == "systemd"
    state = fleet.ssh(ip, "timeout 90 systemctl is-system-running --wait").stdout.strip()
    assert state in ("running", "degraded"), ok(fleet.ssh(ip, "systemctl --failed --no-legend"))
    # The keys on the console are the ones sshd has: cloud-init's block, read as a build reads it.
    console = ec2m.get_console_output(InstanceId=instance_id)["Output"]
    assert host_keys.BEGIN in console and host_keys.END in console
    assert "Cloud-init v." in console  # cloud-init's own output, not an imitation of it
    served = ok(fleet.ssh(ip, "cat /etc/ssh/ssh_host_ed25519_key.pub")).split()[:2]
    assert " ".join(served) in keys
    scanned = subprocess.run(["ssh-keyscan", "-T", "10", "-t", "ed25519", ip], capture_output=True, text=True,
                             timeout=30).stdout.split()
    assert " ".join(scanned[1:3]) == " ".join(served)
    # cloud-init's datasource is the NoCloud seed alone; no network datasource, no way to the metadata address.
    datasources = ok(fleet.ssh(ip, "grep -rh '^datasource_list' /etc/cloud/cloud.cfg /etc/cloud/cloud.cfg.d/ "
                                   "/run/cloud-init/cloud.cfg 2>/dev/null | sort -u"))
    assert {line.replace(" ", "") for line in datasources.splitlines()} <= {"datasource_list:[NoCloud]",
                                                                             "datasource_list:[NoCloud,None]"}
    assert "DataSourceNoCloud" in ok(fleet.ssh(ip, "sudo cat /run/cloud-init/status.json"))
    route = fleet.ssh(ip, "ip route get 169.254.169.254")
    assert route.returncode != 0 and "unreachable" in route.stderr.lower()
    table = ok(fleet.ssh(ip, "ip -4 route show table all; ip -4 rule; ip -4 addr"))
    assert "169.254" not in table
    assert ok(fleet.ssh(ip, "sudo grep -rl '169\\.254' /etc/cloud /etc/network /etc/systemd/network "
                            "2>/dev/null | wc -l")).strip() == "0"


def interface_mac(plan, instance_id: str) -> str:
    return ok(subprocess.run(["ip", "-n", plan.netns(instance_id), "-br", "link", "show", "eth0"],
                             capture_output=True, text=True)).split()[2]


def host_neighbour_mac(plan, ip: str) -> str | None:
    """The MAC this host sends to for ``ip`` on the bridge (its ARP entry), None when it has none."""
    entry = ok(subprocess.run(["ip", "neigh", "show", "to", ip, "dev", plan.bridge], capture_output=True,
                              text=True)).split()
    return entry[entry.index("lladdr") + 1] if "lladdr" in entry else None


def test_user_data_runs_on_the_first_boot_only_and_a_stop_runs_the_units_stop_actions(
        local_cloud, ec2m, fleet, base_ami, ssh_group, plan):
    instance_id, ip, _ = launch(fleet, base_ami, ssh_group, USER_DATA)
    ok(fleet.ssh(ip, "timeout 90 systemctl is-system-running --wait || true"))
    assert ok(fleet.ssh(ip, "cat /var/lib/user-data-runs")).splitlines() == [f"ran {instance_id}"]
    ok(fleet.ssh(ip, f"printf '%s' {shlex_quote(MARKER_UNIT)} | sudo tee /etc/systemd/system/marker.service "
                     ">/dev/null && sudo systemctl daemon-reload && sudo systemctl enable --now marker.service"))

    started = time.monotonic()
    ec2m.stop_instances(InstanceIds=[instance_id])
    assert fleet.state(instance_id) in ("stopping", "stopped")
    stop = wait_state(fleet, instance_id, "stopped")
    print(f"\nclean stop (systemd's poweroff) to stopped: {stop:.2f} s "
          f"(the machine's own count: {registry(local_cloud)['machines'][instance_id].get('stop_seconds')} s)")
    marker = local_cloud.instance_file(instance_id, "/var/lib/stopped-cleanly")
    assert marker is not None and marker.read_text().strip().isdigit()
    assert int(marker.read_text()) >= int(time.time() - (time.monotonic() - started) - 5)

    ec2m.start_instances(InstanceIds=[instance_id])
    wait_state(fleet, instance_id, "running")
    # Its network interface kept its MAC, as an ENI does over a stop and start: the host's ARP entry for the
    # address (if the bridge kept one) stays true. With a new MAC per boot the host sent to the old one for
    # seconds while other machines kept the bridge up, and SSH timed out (seen in a two-worker run).
    assert interface_mac(plan, instance_id) == plan.machine_mac(ip)
    assert host_neighbour_mac(plan, ip) in (None, plan.machine_mac(ip))
    ok(fleet.ssh(ip, "timeout 90 systemctl is-system-running --wait || true"))
    assert ok(fleet.ssh(ip, "cat /var/lib/user-data-runs")).splitlines() == [f"ran {instance_id}"]  # not again
    assert ok(fleet.ssh(ip, "systemctl is-active marker.service")).strip() == "active"  # enabled: every boot


MANY = 20


@pytest.mark.whole_host  # twenty boots on two cores: not beside the other worker's builds (nor they beside it)
def test_twenty_machines_booting_at_once_all_finish_their_boot(local_cloud, ec2m, fleet, base_ami, ssh_group):
    """Every machine's systemd takes inotify instances from the host's one per-user count (root's, 128 by
    Debian's default, about eight a machine): at 16 machines the next ones' systemd stopped with every job
    waiting (sshd never started, or logins refused as "System is booting up" for good)."""
    instances = ec2m.run_instances(ImageId=base_ami, MinCount=MANY, MaxCount=MANY, KeyName=fleet.key_name,
                                   SecurityGroupIds=[ssh_group])["Instances"]
    fleet.ids.extend(instance["InstanceId"] for instance in instances)
    for instance in instances:
        fleet.wait_running(instance["InstanceId"], timeout=120)
    states = {instance["InstanceId"]: system_state(fleet, instance["PrivateIpAddress"]) for instance in instances}
    assert set(states.values()) <= {"running", "degraded"}, states


def system_state(fleet: Fleet, ip: str) -> str:
    """systemd's state once its boot has ended (90 s at most); an SSH connection that failed (exit 255: a 3 s
    connect timeout while twenty machines boot on two cores) is tried again, twice."""
    for _ in range(3):
        answer = fleet.ssh(ip, "timeout 90 systemctl is-system-running --wait")
        if answer.returncode != 255:
            break
    return answer.stdout.strip() or f"exit {answer.returncode}: {answer.stderr.strip()}"


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def host_nginx() -> tuple[bool, bool]:
    return shutil.which("nginx") is not None, os.path.exists("/var/lib/dpkg/info/nginx-light.list")


def test_a_role_installs_a_debian_package_and_an_instance_of_the_image_runs_it(
        local_cloud, ec2m, fleet, base_ami, ssh_group):
    host_before = host_nginx()
    builder, builder_ip, _ = launch(fleet, base_ami, ssh_group)
    builder_keys = console_keys(ec2m, builder)
    install = ("sudo DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && "
               "s=$(date +%s.%N) && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null "
               "&& echo \"$(date +%s.%N) - $s\" | python3 -c 'print(round(eval(input()), 2))'")
    started = time.monotonic()
    first = ok(fleet.ssh(builder_ip, install, timeout=600)).strip()
    first_total = time.monotonic() - started
    ok(fleet.ssh(builder_ip, "sudo systemctl enable --now nginx && systemctl is-active nginx"))
    assert ok(fleet.ssh(builder_ip, "python3 -c 'import urllib.request; print(urllib.request.urlopen("
                                    "\"http://127.0.0.1/\", timeout=10).status)'")).strip() == "200"

    # The origin has neither the package nor the service; nor has this host got them from the machine.
    _fresh, fresh_ip, _ = launch(fleet, base_ami, ssh_group)
    assert fleet.ssh(fresh_ip, "dpkg -s nginx-light").returncode != 0
    assert ok(fleet.ssh(fresh_ip, "systemctl is-active nginx || true")).strip() in ("inactive", "unknown")
    assert not (base.base_dir() / "usr/sbin/nginx").exists()
    assert host_nginx() == host_before
    # The same install again, on another machine: from the mirror's cache.
    started = time.monotonic()
    warm = ok(fleet.ssh(fresh_ip, install, timeout=600)).strip()
    warm_total = time.monotonic() - started
    print(f"\napt-get install nginx-light: first {first} s (with apt-get update {first_total:.1f} s), again on "
          f"another machine {warm} s (with apt-get update {warm_total:.1f} s)")

    ec2m.stop_instances(InstanceIds=[builder])
    wait_state(fleet, builder, "stopped")
    image = ec2m.create_image(InstanceId=builder, Name=f"nginx-{uuid.uuid4().hex[:8]}")["ImageId"]
    wait_image(ec2m, image)
    child, child_ip, _ = launch(fleet, image, ssh_group, USER_DATA)
    child_keys = console_keys(ec2m, child)
    assert not set(child_keys) & set(builder_keys)  # a new instance: cloud-init made new host keys
    assert ok(fleet.ssh(child_ip, "timeout 90 systemctl is-system-running --wait; systemctl is-active nginx")
              ).split()[-1] == "active"
    assert ok(fleet.ssh(child_ip, "cat /var/lib/cloud/data/instance-id; cat /var/lib/user-data-runs")
              ).split() == [child, "ran", child]
    ec2m.deregister_image(ImageId=image)


@contextlib.contextmanager
def group_without_port_80(ec2):
    """SSH in from the provisioner; out: 443 only (no 53, no 80: no package mirror)."""
    group = ec2.create_security_group(GroupName=f"no80-{uuid.uuid4().hex[:8]}", Description="no 80",
                                      VpcId=default_vpc(ec2))["GroupId"]
    try:
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": f"{test_machines.PLAN.bridge_address}/32"}]}])
        ec2.revoke_security_group_egress(GroupId=group, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        ec2.authorize_security_group_egress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        yield group
    finally:
        with contextlib.suppress(Exception):
            ec2.delete_security_group(GroupId=group)


def test_without_egress_to_port_80_apt_get_fails_with_apts_error_and_the_mirror_serves_debian_only(
        local_cloud, ec2m, fleet, base_ami, ssh_group):
    with group_without_port_80(ec2m) as closed:
        _, ip, _ = launch(fleet, base_ami, closed)
        failed = fleet.ssh(ip, "sudo apt-get -o Acquire::http::Timeout=5 -o Acquire::Retries=0 update 2>&1; "
                               "sudo apt-get install -y nginx-light 2>&1", timeout=300)
        assert failed.returncode != 0
        assert f"Could not connect to {test_machines.PLAN.bridge_address}:80" in failed.stdout or "Failed to fetch" in \
            failed.stdout, failed.stdout
        assert "Unable to locate package nginx-light" in failed.stdout, failed.stdout
        fleet.terminate()
    # With port 80 let out (the default egress), the mirror answers for Debian's registry and nothing else.
    _, ip, _ = launch(fleet, base_ami, ssh_group)
    fetch = ("python3 -c 'import sys, urllib.request\nopener = urllib.request.build_opener("
             "urllib.request.ProxyHandler({\"http\": sys.argv[1]}))\ntry:\n print(opener.open(sys.argv[2], "
             "timeout=30).status)\nexcept Exception as e:\n print(getattr(e, \"code\", e))' "
             f"http://{test_machines.PLAN.bridge_address}/ ")
    assert ok(fleet.ssh(ip, fetch + "http://deb.debian.org/debian/dists/bookworm/InRelease")).strip() == "200"
    assert ok(fleet.ssh(ip, fetch + "http://example.com/debian/dists/bookworm/InRelease")).strip() == "403"

