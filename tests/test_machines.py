"""The local cloud's machines (localcloud/machines.py): real namespaces, a real sshd per instance, real nftables.

Needs root (as `make test` runs here); the origin root filesystem is built once (about 40 s) and cached.
Every namespace, veth and listener a test makes is removed in a finally.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from image_factory.waits.polls import reached
from image_factory.waits.protocol import WaitFailed
from localcloud import base, machines
from localcloud.addresses import RESERVED, Plan
from localcloud.cloud import LocalCloud, LocalCloudError

REGION = "eu-west-1"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
#: the session's local cloud's address plan (its slot: localcloud/addresses.py)
PLAN = Plan(0)

# whole_host: a second local cloud runs beside the session's here, and PLAN is slot 0's: `make test` runs this
# file alone, after the rest (which runs in two workers, each with a cloud in one of the host's two slots).
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the local cloud's machines need root"),
              pytest.mark.whole_host]


def client(cloud: LocalCloud, service: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator


@pytest.fixture(scope="module")
def ec2m(local_cloud):
    assert local_cloud.state().machines, "the session's local cloud runs without machines"
    return client(local_cloud, "ec2")


@pytest.fixture(autouse=True)
def plan(request):
    global PLAN
    if "local_cloud" in request.fixturenames:
        PLAN = request.getfixturevalue("local_cloud").plan
    return PLAN


def provisioner() -> str:
    return f"{PLAN.bridge_address}/32"


def probe_address() -> str:
    """A namespace of the tests' own, on the bridge, outside the groups' ingress."""
    return str(PLAN.probe_network.network_address + 10)


@pytest.fixture(scope="module")
def base_ami(local_cloud) -> str:
    return client(local_cloud, "ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]


@pytest.fixture(scope="module")
def key(local_cloud, ec2m, tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    name = f"machines-{uuid.uuid4().hex[:8]}"
    ec2m.import_key_pair(KeyName=name, PublicKeyMaterial=path.with_suffix(".pub").read_bytes())
    yield name, path
    with contextlib.suppress(Exception):
        ec2m.delete_key_pair(KeyName=name)


def default_vpc(ec2) -> str:
    return ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]


@pytest.fixture
def ssh_group(ec2m):
    """A group letting SSH in from the provisioner (the bridge's address) only."""
    group = ec2m.create_security_group(GroupName=f"ssh-{uuid.uuid4().hex[:8]}", Description="ssh",
                                       VpcId=default_vpc(ec2m))["GroupId"]
    ec2m.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": provisioner()}]}])
    yield group
    with contextlib.suppress(Exception):
        ec2m.delete_security_group(GroupId=group)


class Fleet:
    """Instances a test launched, all terminated at its end."""

    def __init__(self, ec2, key):
        self.ec2, (self.key_name, self.key_path), self.ids = ec2, key, []

    def launch(self, image: str, group: str, timeout: float = 90) -> tuple[str, str, float]:
        started = time.monotonic()
        instance = self.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName=self.key_name,
                                          SecurityGroupIds=[group])["Instances"][0]
        answered = time.monotonic() - started
        self.ids.append(instance["InstanceId"])
        assert answered < 5, f"RunInstances took {answered:.1f} s: the boot is to be asynchronous"
        ip = instance["PrivateIpAddress"]
        self.wait_running(instance["InstanceId"], timeout)
        return instance["InstanceId"], ip, time.monotonic() - started

    def wait_running(self, instance_id: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.state(instance_id) != "running":
            assert time.monotonic() < deadline, f"{instance_id} not running after {timeout} s"
            time.sleep(0.05)

    def wait_stopped(self, instance_id: str, timeout: float = 90) -> None:
        """A stop is the machine's clean shutdown: ``stopping`` until its systemd has powered it off."""
        deadline = time.monotonic() + timeout
        while self.state(instance_id) != "stopped":
            assert time.monotonic() < deadline, f"{instance_id} not stopped after {timeout} s"
            time.sleep(0.05)

    def state(self, instance_id: str) -> str:
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
            "State"]["Name"]

    def ssh(self, ip: str, command: str, netns: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        return subprocess.run([*prefix, "ssh", "-i", str(self.key_path), "-o", "BatchMode=yes", "-o",
                               "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o",
                               "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR",
                               f"ec2-user@{ip}", command], capture_output=True, text=True, timeout=timeout)

    def terminate(self) -> None:
        if self.ids:
            self.ec2.terminate_instances(InstanceIds=self.ids)
            self.ids = []


@pytest.fixture
def fleet(ec2m, key):
    fleet = Fleet(ec2m, key)
    try:
        yield fleet
    finally:
        fleet.terminate()


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}\n{result.stderr}"
    return result.stdout


def registry(cloud) -> dict:
    return cloud.machines_list()


def test_a_machine_boots_and_ec2_user_logs_in_with_the_key_pair(local_cloud, fleet, base_ami, ssh_group):
    instance_id, ip, seconds = fleet.launch(base_ami, ssh_group)
    assert ipaddress_in_reserved(ip)
    boot = registry(local_cloud)["machines"][instance_id]["boot_seconds"]
    print(f"\nRunInstances to running (sshd answering on {ip}:22): {seconds:.2f} s; boot to sshd answering "
          f"{boot:.2f} s")
    out = ok(fleet.ssh(ip, "id -un; sudo -n true && echo sudo-ok; hostname; cat /proc/1/comm; "
                            "ip -o -4 addr show | awk '{print $2, $4}'"))
    user, sudo, hostname, init, *addresses = out.split("\n")
    assert (user, sudo) == ("ec2-user", "sudo-ok")
    assert hostname == f"ip-{ip.replace('.', '-')}"
    assert init == "systemd"  # its own PID namespace: the image's systemd is its PID 1
    public = fleet.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0].get(
        "PublicIpAddress")
    assert public and ipaddress.ip_address(public) in PLAN.public  # the "public" address is in the range too
    assert sorted(filter(None, addresses)) == sorted([f"eth0 {ip}/32", f"eth0 {public}/32", "lo 127.0.0.1/8"])
    assert ok(fleet.ssh(public, "hostname")).strip() == hostname
    # A key that is not the key pair's is refused.
    stranger = fleet.key_path.parent / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    refused = subprocess.run(["ssh", "-i", str(stranger), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
                              "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", f"ec2-user@{ip}",
                              "true"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


def ipaddress_in_reserved(ip: str) -> bool:
    return ipaddress.ip_address(ip) in RESERVED


def wait_image(ec2, image_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] != "available":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_an_image_holds_what_was_written_on_its_instance_and_nothing_leaks(local_cloud, ec2m, fleet, base_ami,
                                                                         ssh_group):
    mark = uuid.uuid4().hex[:12]
    builder, builder_ip, _ = fleet.launch(base_ami, ssh_group)
    ok(fleet.ssh(builder_ip, f"sudo mkdir -p /etc/shopspinner && echo {mark} | sudo tee /etc/shopspinner/mark "
                             f"&& sudo sh -c 'echo {mark} > /root/{mark} && echo x > /usr/bin/{mark}' "
                             f"&& echo {mark} > ~/home-{mark}"))
    # Nothing of it on the host or in the origin root filesystem.
    for path in ("/etc/shopspinner/mark", f"/root/{mark}", f"/usr/bin/{mark}"):
        assert not Path(path).exists() or mark not in Path(path).read_text(), path
        assert not (base.base_dir() / path.lstrip("/")).exists(), path
    assert (local_cloud.state_dir / "machines" / builder / "upper" / "usr" / "bin" / mark).exists()
    assert local_cloud.instance_file(builder, f"/root/{mark}").read_text().strip() == mark
    assert local_cloud.instance_file(builder, "/etc/passwd") is None  # the base's, not written by the instance

    ec2m.stop_instances(InstanceIds=[builder])
    fleet.wait_stopped(builder)
    started = time.monotonic()
    image = ec2m.create_image(InstanceId=builder, Name=f"machines-{mark}")["ImageId"]
    created = time.monotonic() - started
    wait_image(ec2m, image)
    layers = registry(local_cloud)["images"][image]["layers"]
    layer = local_cloud.state_dir / "layers" / layers[0]
    size = subprocess.run(["du", "-sk", str(layer)], capture_output=True, text=True).stdout.split()[0]
    print(f"\nCreateImage of a stopped instance: {created * 1000:.0f} ms through the front; its layer {size} KiB; "
          f"layers {layers}")
    assert len(layers) == 1 and (layer / "etc" / "shopspinner" / "mark").read_text().strip() == mark

    _child, child_ip, _ = fleet.launch(image, ssh_group)
    _fresh, fresh_ip, _ = fleet.launch(base_ami, ssh_group)
    assert ok(fleet.ssh(child_ip, "cat /etc/shopspinner/mark; sudo cat /root/" + mark)).split() == [mark, mark]
    assert ok(fleet.ssh(fresh_ip, "ls /etc/shopspinner 2>&1 || true")).strip().endswith("No such file or directory")
    # Two instances never see each other's disks (nor does the image see its children's writes).
    ok(fleet.ssh(child_ip, f"echo child | sudo tee /etc/child-{mark}"))
    assert ok(fleet.ssh(fresh_ip, f"test -e /etc/child-{mark} && echo seen || echo unseen")).strip() == "unseen"
    assert ok(fleet.ssh(builder_ip, "true") if fleet.state(builder) == "running" else subprocess.CompletedProcess(
        [], 0, "", "")) == ""
    assert not (layer / "etc" / f"child-{mark}").exists()

    # Deregistered, with its instances gone, the image's layers are freed.
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2m.describe_images(ImageIds=[image])["Images"][0][
        "BlockDeviceMappings"] if "Ebs" in m and m["Ebs"].get("SnapshotId")]
    ec2m.deregister_image(ImageId=image)
    for snapshot in snapshots:
        ec2m.delete_snapshot(SnapshotId=snapshot)
    assert layer.exists()  # the builder (stopped) and the child still stand on it
    fleet.terminate()
    assert not layer.exists()
    assert image not in registry(local_cloud)["images"]


@contextlib.contextmanager
def probe_namespace(address: str | None = None):
    """A namespace of the test's own on the bridge: another host of the reserved range."""
    address = address or probe_address()
    name, veth = f"{PLAN.netns_prefix}test-{os.getpid()}", f"{PLAN.veth_prefix}t{os.getpid() % 100000}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name], check=True)
        subprocess.run(["ip", "link", "set", veth, "master", PLAN.bridge, "up"], check=True)
        for command in (["link", "set", "lo", "up"], ["addr", "add", f"{address}/32", "dev", "eth0"],
                        ["link", "set", "eth0", "up"], ["route", "add", str(RESERVED), "dev", "eth0", "src", address]):
            subprocess.run(["ip", "-n", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def test_the_bridge_keeps_its_mac_when_a_port_with_a_lower_one_joins(local_cloud):
    """Linux gives a bridge the lowest MAC of its ports unless one is set: each machine that joins could move it,
    and every host on the bridge (the deployment's workers, the machines) would send to a MAC that is gone until
    its ARP entry timed out: the api-server looked silent for 39 s in a 100-build run."""
    bridge = Path(f"/sys/class/net/{PLAN.bridge}")
    assert (bridge / "address").read_text().strip() == PLAN.bridge_mac
    veth = f"{PLAN.veth_prefix}m{os.getpid() % 100000}"
    try:
        subprocess.run(["ip", "link", "add", veth, "address", "00:00:00:00:00:01", "type", "veth", "peer", "name",
                        f"{veth}p"], check=True)
        subprocess.run(["ip", "link", "set", veth, "master", PLAN.bridge, "up"], check=True)
        assert (bridge / "address").read_text().strip() == PLAN.bridge_mac
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def connects(host: str, port: int, netns: str | None = None, timeout: float = 2) -> bool:
    code = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), {timeout}).close()\n"
            " print('open')\nexcept OSError as e:\n print('closed', e)")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return result.stdout.startswith("open")


@contextlib.contextmanager
def listeners(*ports: int):
    """TCP listeners on the bridge's address (the host side of the machines' network), accepting for ever."""
    sockets = []
    stop = threading.Event()
    try:
        for port in ports:
            server = socket.create_server((str(PLAN.bridge_address), port))
            server.settimeout(0.2)
            sockets.append(server)

        def serve(server):
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    server.accept()[0].close()

        for server in sockets:
            threading.Thread(target=serve, args=(server,), daemon=True).start()
        yield
    finally:
        stop.set()
        for server in sockets:
            server.close()


def test_security_groups_are_enforced_and_changes_apply_at_once(ec2m, fleet, base_ami, ssh_group):
    ec2m.revoke_security_group_egress(GroupId=ssh_group, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2m.authorize_security_group_egress(GroupId=ssh_group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 18080, "ToPort": 18080, "IpRanges": [{"CidrIp": provisioner()}]}])
    _instance_id, ip, _ = fleet.launch(base_ami, ssh_group)
    with probe_namespace() as other, listeners(18080, 18081):
        # Ingress: SSH from the provisioner's address, not from another address of the range.
        assert connects(ip, 22)
        assert not connects(ip, 22, netns=other)
        assert fleet.ssh(ip, "true", netns=other).returncode != 0
        ec2m.authorize_security_group_ingress(GroupId=ssh_group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": f"{probe_address()}/32"}]}])
        ok(fleet.ssh(ip, "true", netns=other))  # at once
        ec2m.revoke_security_group_ingress(GroupId=ssh_group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": f"{probe_address()}/32"}]}])
        assert not connects(ip, 22, netns=other)

        # Egress: out to the allowed port only.
        check = ("python3 -c 'import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
                 ".close(); print(\"open\")\nexcept OSError: print(\"closed\")' {} {}")
        assert ok(fleet.ssh(ip, check.format(PLAN.bridge_address, 18080))).strip() == "open"
        assert ok(fleet.ssh(ip, check.format(PLAN.bridge_address, 18081))).strip() == "closed"
        ec2m.authorize_security_group_egress(GroupId=ssh_group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 18081, "ToPort": 18081, "IpRanges": [{"CidrIp": provisioner()}]}])
        assert ok(fleet.ssh(ip, check.format(PLAN.bridge_address, 18081))).strip() == "open"


def host_traces(instance_id: str, state_dir: Path, pid_namespace: int | None) -> list[str]:
    """What of a machine is left on the host: namespace, veth, processes, mounts, its disk."""
    traces = []
    if PLAN.netns(instance_id) in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                          text=True).stdout:
        traces.append("netns")
    if subprocess.run(["ip", "link", "show", PLAN.veth(instance_id)], capture_output=True).returncode == 0:
        traces.append("veth")
    if pid_namespace and machines.namespace_pids(None, pid_namespace):
        traces.append(f"processes {machines.namespace_pids(None, pid_namespace)}")
    disk = str(state_dir / "machines" / instance_id)
    if disk in Path("/proc/mounts").read_text():
        traces.append("mounts")
    for entry in Path("/proc").iterdir():  # the machine's outer processes name its disk (boot.sh)
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and disk.encode() in (entry / "cmdline").read_bytes():
                traces.append(f"process {entry.name}")
    return traces


def test_stop_keeps_the_disk_and_terminate_leaves_nothing(local_cloud, ec2m, fleet, base_ami, ssh_group):
    instance_id, ip, _ = fleet.launch(base_ami, ssh_group)
    ok(fleet.ssh(ip, "echo kept > ~/kept"))
    pid_namespace = registry(local_cloud)["machines"][instance_id]["pid_namespace"]
    assert machines.namespace_pids(None, pid_namespace)
    assert {"netns", "veth"} <= set(host_traces(instance_id, local_cloud.state_dir, pid_namespace))

    ec2m.stop_instances(InstanceIds=[instance_id])
    fleet.wait_stopped(instance_id)
    assert host_traces(instance_id, local_cloud.state_dir, pid_namespace) == []
    assert not connects(ip, 22)
    ec2m.start_instances(InstanceIds=[instance_id])
    fleet.wait_running(instance_id)
    assert ok(fleet.ssh(ip, "cat ~/kept")).strip() == "kept"
    pid_namespace = registry(local_cloud)["machines"][instance_id]["pid_namespace"]

    fleet.terminate()
    assert host_traces(instance_id, local_cloud.state_dir, pid_namespace) == []
    assert not (local_cloud.state_dir / "machines" / instance_id).exists()
    assert instance_id not in registry(local_cloud)["machines"]
    assert "localcloud" not in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def test_a_stopped_machine_names_no_pid_namespace_another_may_have_now(local_cloud, ec2m, fleet, base_ami,
                                                                       ssh_group):
    """The kernel gives a freed PID namespace's number to the next namespace made: terminating a builder
    stopped for its image must not kill a machine that has its old number now (most likely what killed a test
    instance in a 50-build benchmark)."""
    first, _, _ = fleet.launch(base_ami, ssh_group)
    second, second_ip, _ = fleet.launch(base_ami, ssh_group)
    before = registry(local_cloud)["machines"]
    second_namespace = before[second]["pid_namespace"]
    assert second_namespace is not None
    assert machines.machine_pid_namespace(before[second]) == second_namespace
    ec2m.stop_instances(InstanceIds=[first])
    fleet.wait_stopped(first)
    assert registry(local_cloud)["machines"][first]["pid_namespace"] is None
    # The first machine's record from before its stop, as if its number had gone to the second's namespace:
    # its unshare has ended, so the record names no namespace.
    assert machines.machine_pid_namespace({**before[first], "pid_namespace": second_namespace}) is None
    ec2m.terminate_instances(InstanceIds=[first])
    assert ok(fleet.ssh(second_ip, "echo alive")).strip() == "alive"
    assert machines.namespace_pids(None, second_namespace)


def test_a_machine_ended_while_it_boots_leaves_nothing(local_cloud, ec2m, fleet, base_ami, ssh_group):
    ids = [i["InstanceId"] for i in ec2m.run_instances(ImageId=base_ami, MinCount=3, MaxCount=3,
                                                       KeyName=fleet.key_name, SecurityGroupIds=[ssh_group])[
        "Instances"]]
    ec2m.stop_instances(InstanceIds=ids[:1])
    ec2m.terminate_instances(InstanceIds=ids[1:])
    deadline = time.monotonic() + 90  # boots that were under way end (the stop: once powered off)
    while registry(local_cloud)["machines"].get(ids[0], {}).get("state") != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for instance_id in ids:
        assert host_traces(instance_id, local_cloud.state_dir, None) == [], instance_id
    assert set(registry(local_cloud)["machines"]) & set(ids) == {ids[0]}
    assert registry(local_cloud)["machines"][ids[0]]["state"] == "stopped"
    fleet.ids += ids[:1]


def test_up_names_a_missing_feature_instead_of_falling_back(tmp_path, monkeypatch):
    # A PATH with every command the machines need but nft.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in machines.HOST_BINARIES:
        if command != "nft":
            (bin_dir / command).symlink_to(subprocess.run(["which", command], capture_output=True, text=True,
                                                          check=True).stdout.strip())
    monkeypatch.setenv("PATH", str(bin_dir))
    cloud = LocalCloud(tmp_path / "cloud")
    with pytest.raises(LocalCloudError, match=r"missing the command nft \(Debian's nftables"):
        cloud.up()
    assert not cloud.running() and not (tmp_path / "cloud" / "state.json").exists()
    # No origin root filesystem cached and no mmdebstrap: said so too.
    monkeypatch.setattr(base, "CACHE", tmp_path / "empty-cache")
    with pytest.raises(LocalCloudError, match="mmdebstrap"):
        cloud.up()


def test_the_appserver_role_leaves_its_files_in_the_image(local_cloud, ec2m, fleet, base_ami, ssh_group):
    """As the shell tool runs it (plugins/image_factory/tools/shell.py): copied to a private /tmp directory,
    its scripts run there in name order as ec2-user, the directory removed; then the image is made."""
    instance_id, ip, _ = fleet.launch(base_ami, ssh_group)
    role = Path(__file__).resolve().parents[1] / "include" / "roles" / "appserver"
    staging = f"/tmp/image-factory-role.{uuid.uuid4().hex[:8]}"
    ok(fleet.ssh(ip, f"mkdir -m 0700 {staging}"))
    copy = subprocess.run(["scp", "-q", "-i", str(fleet.key_path), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           *map(str, sorted(role.glob("*.sh"))), f"ec2-user@{ip}:{staging}/"],
                          capture_output=True, text=True, timeout=60)
    ok(copy)
    output = ok(fleet.ssh(ip, f"trap 'cd / && rm -rf -- {staging}' EXIT; cd {staging} && "
                              "export IMAGE_FACTORY_SERVER_ROLE=appserver IMAGE_FACTORY_IMAGE_NAME=machines-test "
                              "IMAGE_FACTORY_BUILD_ID=b-123 && for s in ./*.sh; do bash $s || exit $?; done",
                          timeout=600))
    assert output.strip().splitlines()[-1] == "appserver role: done"
    assert not Path("/etc/shopspinner/appserver.conf").exists() or "machines-test" not in Path(
        "/etc/shopspinner/build-info").read_text()
    ec2m.stop_instances(InstanceIds=[instance_id])  # CreateImage waits for the stop
    image = ec2m.create_image(InstanceId=instance_id, Name=f"appserver-{uuid.uuid4().hex[:8]}")["ImageId"]
    wait_image(ec2m, image)
    _, child_ip, _ = fleet.launch(image, ssh_group)
    seen = ok(fleet.ssh(child_ip, "cat /etc/shopspinner/build-info; test -x /opt/shopspinner/appserver/start.sh && "
                                  "grep -c listen_port /etc/shopspinner/appserver.conf && "
                                  "grep ExecStart /etc/systemd/system/shopspinner-appserver.service; "
                                  "timeout 60 systemctl is-system-running --wait >/dev/null; "
                                  "systemctl is-active shopspinner-appserver; "
                                  "ls -d /tmp/image-factory-role.* 2>/dev/null | wc -l"))
    assert seen.split("\n")[:3] == ["build b-123", "image machines-test", "role appserver"]
    assert "ExecStart=/opt/shopspinner/appserver/start.sh" in seen
    assert seen.strip().splitlines()[-2] == "active"  # nginx, installed from Debian by the role, runs
    assert seen.strip().splitlines()[-1] == "0"  # the role's own files are not in the image
    ec2m.deregister_image(ImageId=image)


def test_running_shows_only_once_sshd_answers_and_the_latency_has_passed(local_cloud, ec2m, fleet, base_ami,
                                                                        ssh_group, plan):
    try:
        local_cloud.configure(latency={"instance_running": 12})
        instance_id, _, seconds = fleet.launch(base_ami, ssh_group)
    finally:
        local_cloud.configure(latency={"instance_running": 0})
    assert seconds >= 12
    assert registry(local_cloud)["machines"][instance_id]["boot_seconds"] < 12
    # A machine that cannot boot (its key pair is not there) never shows running: its instance ends as EC2 ends
    # a launch that failed, terminated with the state reason Server.InternalError, which says why; a wait for it
    # to run fails at once with that reason (it waited for ever, pending, before).
    broken = ec2m.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1, KeyName=f"missing-{uuid.uuid4().hex[:6]}",
                                SecurityGroupIds=[ssh_group])["Instances"][0]["InstanceId"]
    fleet.ids.append(broken)
    deadline = time.monotonic() + 60
    while fleet.state(broken) in ("pending", "shutting-down"):
        assert time.monotonic() < deadline, "the instance of a machine that failed to boot is not terminated"
        time.sleep(0.2)
    instance = ec2m.describe_instances(InstanceIds=[broken])["Reservations"][0]["Instances"][0]
    assert instance["State"]["Name"] == "terminated"
    assert instance["StateReason"]["Code"] == "Server.InternalError"
    assert instance["StateReason"]["Message"].startswith("Server.InternalError: the machine did not boot: "
                                                         "DescribeKeyPairs in eu-west-1: InvalidKeyPair.NotFound: ")
    with pytest.raises(WaitFailed, match="the machine did not boot: DescribeKeyPairs in eu-west-1: InvalidKeyPair"):
        reached(ec2m, "instance_running", {"InstanceIds": [broken]})
    machine = registry(local_cloud)["machines"][broken]
    assert machine["state"] == "failed" and "InvalidKeyPair.NotFound" in machine["error"]
    assert not Path(f"/run/netns/{plan.netns(broken)}").exists()  # its processes and network are gone
    record = (local_cloud.state_dir / machines.FAILED_BOOTS).read_text()  # what a failed test's report shows
    assert f" {broken} " in record and "InvalidKeyPair.NotFound" in record


def test_an_instance_launched_as_builds_launch_it_is_reachable_in_the_builder_vpc(local_cloud, ec2m, fleet, base_ami):
    """As plugins/image_factory/steps/instance.py launches: NetworkInterfaces with the group, a /28 of the
    builder VPC that LocalCloud.env() names."""
    vpc = local_cloud.env()["AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_ID"]
    network = ipaddress.ip_network(ec2m.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"])
    assert network.subnet_of(RESERVED)
    taken = [ipaddress.ip_network(s["CidrBlock"]) for s in ec2m.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    cidr = next(c for c in network.subnets(new_prefix=28) if not any(c.overlaps(t) for t in taken))
    subnet = ec2m.create_subnet(VpcId=vpc, CidrBlock=str(cidr))["Subnet"]["SubnetId"]
    group = ec2m.create_security_group(GroupName=f"b-{uuid.uuid4().hex[:8]}", Description="b", VpcId=vpc)["GroupId"]
    ec2m.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": provisioner()}]}])
    try:
        instance = ec2m.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1, KeyName=fleet.key_name,
                                      NetworkInterfaces=[{"DeviceIndex": 0, "Groups": [group], "SubnetId": subnet,
                                                          "AssociatePublicIpAddress": False}])["Instances"][0]
        fleet.ids.append(instance["InstanceId"])
        assert ipaddress.ip_address(instance["PrivateIpAddress"]) in cidr
        fleet.wait_running(instance["InstanceId"])
        assert ok(fleet.ssh(instance["PrivateIpAddress"], "id -un")).strip() == "ec2-user"
    finally:
        fleet.terminate()
        ec2m.delete_security_group(GroupId=group)
        ec2m.delete_subnet(SubnetId=subnet)


def test_builds_in_vpcs_of_one_range_each_get_a_machine_of_their_own(local_cloud, ec2m, fleet, base_ami):
    """Builds that make their own VPC all make it of the builder range, and may pick the same /28 in it: on
    AWS their instances may have one address. Here every machine is on one bridge, so the second instance gets
    another address of its subnet, and both boot and answer (it failed to boot: the address was taken)."""
    cidr = local_cloud.env()["AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_CIDR"]
    block = str(next(ipaddress.ip_network(cidr).subnets(new_prefix=28)))
    made: list[tuple[str, str, str]] = []  # (vpc, subnet, group) of each
    try:
        addresses = []
        for _ in range(2):
            vpc = ec2m.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
            subnet = ec2m.create_subnet(VpcId=vpc, CidrBlock=block)["Subnet"]["SubnetId"]
            group = ec2m.create_security_group(GroupName="ssh", Description="ssh", VpcId=vpc)["GroupId"]
            made.append((vpc, subnet, group))
            ec2m.authorize_security_group_ingress(GroupId=group, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": provisioner()}]}])
            instance = ec2m.run_instances(
                ImageId=base_ami, MinCount=1, MaxCount=1, KeyName=fleet.key_name,
                NetworkInterfaces=[{"DeviceIndex": 0, "Groups": [group], "SubnetId": subnet}])["Instances"][0]
            fleet.ids.append(instance["InstanceId"])
            addresses.append(instance["PrivateIpAddress"])
        assert addresses[0] != addresses[1]
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network(block) for a in addresses)
        for instance_id, address in zip(fleet.ids, addresses, strict=True):
            fleet.wait_running(instance_id)
            assert ok(fleet.ssh(address, "hostname")).strip() == f"ip-{address.replace('.', '-')}"
    finally:
        fleet.terminate()
        for vpc, subnet, group in made:
            ec2m.delete_security_group(GroupId=group)
            ec2m.delete_subnet(SubnetId=subnet)
            ec2m.delete_vpc(VpcId=vpc)


def test_a_second_local_cloud_runs_beside_in_a_slot_of_its_own(local_cloud, ec2m, fleet, base_ami, ssh_group,
                                                               tmp_path):
    instance_id, ip, _ = fleet.launch(base_ami, ssh_group)
    second = LocalCloud(tmp_path / "second")
    second_bridge = None
    try:
        second.up("eu-west-1")
        second_bridge = second.plan.bridge
        assert second.plan.slot != local_cloud.plan.slot and second.plan.bridge != local_cloud.plan.bridge
        assert not second.plan.private.overlaps(local_cloud.plan.private)
        other_ec2 = client(second, "ec2")
        group = other_ec2.create_security_group(GroupName="ssh", Description="ssh", VpcId=default_vpc(other_ec2))[
            "GroupId"]
        other_ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": f"{second.plan.bridge_address}/32"}]}])
        other = Fleet(other_ec2, fleet_key(second, fleet.key_path))
        _, other_ip, _ = other.launch(base_ami, group)
        assert other_ip != ip and ipaddress.ip_address(other_ip) in second.plan.private
        assert ok(other.ssh(other_ip, "hostname")).strip() == f"ip-{other_ip.replace('.', '-')}"
    finally:
        second.down()
    # The first cloud's machine, the blackhole route and the inotify limit its machines need are untouched.
    assert ok(fleet.ssh(ip, "true")) == ""
    assert int(machines.INOTIFY_INSTANCES.read_text()) >= machines.INOTIFY_NEEDED
    assert str(RESERVED) in subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True,
                                           text=True).stdout
    assert second_bridge and f" {second_bridge}:" not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                                                          text=True).stdout
    assert registry(local_cloud)["machines"][instance_id]["state"] == "running"


def fleet_key(cloud: LocalCloud, path: Path) -> tuple[str, Path]:
    name = f"second-{uuid.uuid4().hex[:6]}"
    client(cloud, "ec2").import_key_pair(KeyName=name, PublicKeyMaterial=path.with_suffix(".pub").read_bytes())
    return name, path


# Last: it takes the session's local cloud down and brings it up again (moto's records start afresh).
def test_down_removes_every_machine_and_the_hosts_network(local_cloud, ec2m, key, base_ami, ssh_group):
    fleet = Fleet(ec2m, key)
    instance_id, _, _ = fleet.launch(base_ami, ssh_group)
    pid_namespace = registry(local_cloud)["machines"][instance_id]["pid_namespace"]
    state = local_cloud.state()
    assert int(machines.INOTIFY_INSTANCES.read_text()) >= machines.INOTIFY_NEEDED
    limit_before = machines.INOTIFY_MARK.read_text() if machines.INOTIFY_MARK.exists() else None
    try:
        local_cloud.down()
        assert host_traces(instance_id, local_cloud.state_dir, pid_namespace) == []
        assert [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith(PLAN.netns_prefix)] == []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f" {PLAN.bridge}:" not in links and f" {PLAN.veth_prefix}" not in links
        others = [slot for slot in range(4) if machines.owner_file(slot).exists()]
        if not others and state.blackhole_made:  # the last local cloud with machines takes the route along
            assert str(RESERVED) not in subprocess.run(["ip", "route", "show", "type", "blackhole"],
                                                       capture_output=True, text=True).stdout
        if not others and limit_before:  # and puts the host's inotify limit back as it found it
            assert machines.INOTIFY_INSTANCES.read_text() == limit_before
            assert not machines.INOTIFY_MARK.exists()
        assert str(local_cloud.state_dir) not in Path("/proc/mounts").read_text()
        assert not (local_cloud.state_dir / "machines").exists()
    finally:
        # The session's other tests go on with a local cloud on the same endpoint (moto's records start afresh).
        local_cloud.up(state.regions, ec2_port=state.ec2_port)
