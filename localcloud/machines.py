"""The local cloud's instances as real Linux machines, its images as real disks.

The front's ``Machines`` hook (localcloud/hooks.py) calls :class:`Machines` for the EC2 calls that change a
machine, once moto has answered them:

* RunInstances, StartInstances: a machine boots, asynchronously. It is a network namespace
  ``lc<slot>-<instance>`` holding exactly the private address moto gave the instance (a veth pair onto the host
  bridge ``lcbr<slot>``, whose address, 198.18.0.1 in slot 0, is the provisioner's; see localcloud/addresses.py),
  a mount namespace whose root is an overlay (lower: the image's layers, then the origin root filesystem of
  localcloud/base.py; upper: the instance's own disk in the state directory), PID, UTS and IPC namespaces of
  its own, and its own sshd on the instance's address, port 22. The key pair's public key goes into ec2-user's
  authorized_keys at boot, as cloud-init does. The front shows the instance ``pending`` until that sshd answers.
* StopInstances: every process of the machine is killed (by PID, checked until none is left), its network
  namespace removed; the disk stays. TerminateInstances: also the disk.
* CreateImage: the instance's upper directory becomes a read-only layer; the image is its origin's layers
  plus that one. CopyImage: the copy (in any region) is its source's layers, shared. DeregisterImage,
  DeleteSnapshot: layers no image and no instance uses are removed.
* Authorize/RevokeSecurityGroupIngress/Egress, ModifyInstanceAttribute: the nftables rulesets of the region's
  machines are built again from moto's security groups (asked directly, not through the counted front).

Every address is inside 198.18.0.0/15; the host keeps a blackhole route for that range, routes the VPC
ranges onto the bridge only, and forwards nothing (a machine has no default route: it reaches the bridge
and the other machines, nothing else). The registry (``machines.json`` in the state directory) maps images
to layers and instances to machines, so that ``down`` can remove everything even without the front.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from localcloud.addresses import RESERVED, SLOTS, Plan

RUN_DIR = Path("/run/image-factory-local-cloud")
#: made when a local cloud added the blackhole route: the last one down removes it
BLACKHOLE_MARK = RUN_DIR / "blackhole.made"
#: The host's limit of inotify instances per user. A machine's systemd, logind, dbus and getty take about eight of
#: root's (the machines do not map users), and Debian's default is 128: at 16 machines the next ones' systemd
#: stopped with every boot job waiting. Raised while a local cloud runs; the value it had is kept in
#: INOTIFY_MARK and put back by the last local cloud down.
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_NEEDED = 8192
INOTIFY_MARK = RUN_DIR / "inotify-instances.before"
HOST_BINARIES = ("ip", "nft", "unshare", "mount", "chroot", "ssh-keygen")
#: What a machine's PID 1 is: ``systemd`` (the default: the image's own systemd, booted by systemd-nspawn, with
#: cloud-init) or ``sshd`` (the light model: sshd alone, for runs that need many machines at once).
INITS = ("systemd", "sshd")
INIT_BINARIES = {"systemd": ("systemd-nspawn",), "sshd": ()}
BOOT_TIMEOUT = 120
#: In the state folder: each boot that failed, and why (the end of its console among it).
FAILED_BOOTS = "failed-boots.log"
#: A clean stop (systemd's poweroff) that has not ended the machine by then is cut short, as EC2 forces a stop.
STOP_TIMEOUT = 60
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")
#: What GetConsoleOutput gives of a console: its last 64 KiB, as AWS does.
CONSOLE_BYTES = 64 * 1024
USER = "ec2-user"
MACHINE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class MachinesError(Exception):
    pass


def run(*command: str, check: bool = True, input: str | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise MachinesError(f"{shlex.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


# --- what the host must have ---------------------------------------------------------------------------

def missing_features(need_mmdebstrap: bool, init: str = "systemd") -> list[str]:
    """What this host lacks for machines: rights, binaries (looked up on PATH) and kernel features."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root rights (the machines need network and mount namespaces, overlay mounts, nftables)")
    binaries = [*HOST_BINARIES, *INIT_BINARIES[init], *(("mmdebstrap",) if need_mmdebstrap else ())]
    packages = {"ip": "iproute2", "nft": "nftables", "unshare": "util-linux", "mount": "mount",
                "chroot": "coreutils", "ssh-keygen": "openssh-client", "mmdebstrap": "mmdebstrap",
                "systemd-nspawn": "systemd-container"}
    for binary in binaries:
        if shutil.which(binary) is None:
            missing.append(f"the command {binary} (Debian's {packages[binary]}; `make setup` installs it)")
    if missing:
        return missing  # the kernel probes below need those
    if not Path("/proc/self/ns/net").exists():
        missing.append("network namespaces (no /proc/self/ns/net)")
    filesystems = Path("/proc/filesystems").read_text()
    if "overlay" not in filesystems:
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            missing.append("the overlay filesystem (not in /proc/filesystems; modprobe overlay failed)")
    if missing:
        return missing
    probe = f"lcprobe-{os.getpid()}"
    scratch = Path(f"/tmp/lc-probe-{os.getpid()}")
    try:
        if run("ip", "netns", "add", probe, check=False).returncode != 0:
            missing.append("network namespaces (`ip netns add` failed)")
            return missing
        nft = run("ip", "netns", "exec", probe, "nft", "add table inet localcloud_probe", check=False)
        if nft.returncode != 0:
            missing.append(f"nftables in a network namespace (`nft add table` failed: {nft.stderr.strip()})")
        for name in ("lower", "upper", "work", "root"):
            (scratch / name).mkdir(parents=True, exist_ok=True)
        mount = run("unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--", "mount", "-t", "overlay",
                    "overlay", "-o", f"lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work",
                    str(scratch / "root"), check=False)
        if mount.returncode != 0:
            missing.append(f"overlay mounts in a mount namespace ({mount.stderr.strip()})")
    finally:
        run("ip", "netns", "del", probe, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return missing


# --- the host's side of the network ------------------------------------------------------------------

def owner_file(slot: int) -> Path:
    return RUN_DIR / f"slot-{slot}.owner"


def ensure_blackhole() -> bool:
    """The blackhole route for 198.18.0.0/15 (nothing for it leaves this host); True when made now."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if _blackhole_present():
        return False
    BLACKHOLE_MARK.write_text("made by a local cloud\n")
    added = run("ip", "route", "add", "blackhole", str(RESERVED), check=False)
    if added.returncode != 0:
        if _blackhole_present():  # another local cloud starting at the same moment made it
            return False
        raise MachinesError(f"ip route add blackhole {RESERVED} failed ({added.returncode}): {added.stderr.strip()}")
    return True


def _blackhole_present() -> bool:
    return bool(run("ip", "route", "show", "exact", str(RESERVED), "type", "blackhole").stdout.strip())


def ensure_inotify_instances() -> None:
    """Root's inotify instances enough for many machines (INOTIFY_INSTANCES); the value before kept once."""
    current = int(INOTIFY_INSTANCES.read_text())
    if current < INOTIFY_NEEDED:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        if not INOTIFY_MARK.exists():
            INOTIFY_MARK.write_text(f"{current}\n")
        INOTIFY_INSTANCES.write_text(f"{INOTIFY_NEEDED}\n")


def restore_inotify_instances() -> None:
    """The limit as it was before the first local cloud raised it (unless someone changed it since)."""
    if INOTIFY_MARK.exists():
        if int(INOTIFY_INSTANCES.read_text()) == INOTIFY_NEEDED:
            INOTIFY_INSTANCES.write_text(INOTIFY_MARK.read_text())
        INOTIFY_MARK.unlink(missing_ok=True)


def host_network_up(plan: Plan) -> bool:
    """The blackhole route for 198.18.0.0/15 (first), the slot's bridge with the host's address, the inotify
    limit the machines need; True when the blackhole route was made here."""
    made = ensure_blackhole()
    ensure_inotify_instances()
    if run("ip", "link", "show", plan.bridge, check=False).returncode != 0:
        run("ip", "link", "add", plan.bridge, "type", "bridge")
    run("ip", "link", "set", plan.bridge, "address", plan.bridge_mac)  # (see Plan.bridge_mac)
    disable_ipv6 = Path(f"/proc/sys/net/ipv6/conf/{plan.bridge}/disable_ipv6")
    if disable_ipv6.exists():
        disable_ipv6.write_text("1\n")
    run("ip", "addr", "replace", f"{plan.bridge_address}/32", "dev", plan.bridge)
    run("ip", "link", "set", plan.bridge, "up")
    for network in (plan.host_block, plan.public):
        run("ip", "route", "replace", str(network), "dev", plan.bridge, "src", str(plan.bridge_address))
    return made


def plug_host(plan: Plan, netns: str, veth: str, addresses: list[str]) -> None:
    """A host on the slot's bridge (a machine, a deployment's worker): a network namespace whose eth0, the end of
    a veth, has ``addresses`` and the first one's MAC (Plan.machine_mac); a route to the reserved range only, on
    the link (the bridge, the other hosts), no default route."""
    run("ip", "netns", "add", netns)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "address", plan.machine_mac(addresses[0]),
        "netns", netns)
    run("ip", "link", "set", veth, "master", plan.bridge, "up")
    run("ip", "netns", "exec", netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6")
    run("ip", "-n", netns, "link", "set", "lo", "up")
    for address in addresses:
        run("ip", "-n", netns, "addr", "add", f"{address}/32", "dev", "eth0")
    run("ip", "-n", netns, "link", "set", "eth0", "up")
    run("ip", "-n", netns, "route", "add", str(RESERVED), "dev", "eth0", "src", addresses[0])


def route_vpc(plan: Plan, cidr: str) -> None:
    network = ipaddress.ip_network(cidr)
    if not network.subnet_of(plan.private):
        raise MachinesError(f"VPC range {cidr} is outside {plan.private}, this local cloud's part of {RESERVED}: "
                            "its machines live only there")
    run("ip", "route", "replace", str(network), "dev", plan.bridge, "src", str(plan.bridge_address))


def host_network_down(plan: Plan, pid_namespaces: tuple[int, ...] = ()) -> None:
    """The slot's machines, namespaces, veths and bridge; the blackhole route and the inotify limit too when no
    other local cloud with machines is left (each as it was before a local cloud changed it)."""
    for pid_inode in pid_namespaces:
        kill_namespace_processes("", pid_inode)
    for name in run("ip", "netns", "list", check=False).stdout.split("\n"):
        name = name.split(" ")[0]
        if name.startswith(plan.netns_prefix):
            kill_namespace_processes(name)
            run("ip", "netns", "del", name, check=False)
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(plan.veth_prefix) or name == plan.bridge:
            run("ip", "link", "del", name, check=False)
    others = [slot for slot in range(SLOTS) if slot != plan.slot and owner_file(slot).exists()]
    if not others:
        if BLACKHOLE_MARK.exists():
            run("ip", "route", "del", "blackhole", str(RESERVED), check=False)
            BLACKHOLE_MARK.unlink(missing_ok=True)
        restore_inotify_instances()


# --- processes of a machine --------------------------------------------------------------------------

def _namespace_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def machine_pid_namespace(machine: dict) -> int | None:
    """The machine's PID namespace while it is still the one its record names: the namespace of a child of
    the machine's ``unshare`` (its ``pid``). The kernel frees a namespace's number when its last process ends
    and gives it to the next namespace made: a stopped machine's old number may be another machine's now (most
    likely what killed a test instance in a 50-build benchmark, when another build's stopped builder was
    terminated)."""
    pid, inode = machine.get("pid"), machine.get("pid_namespace")
    if not pid or not inode:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    if inode in (_namespace_inode("/proc/self/ns/pid"), _namespace_inode("/proc/1/ns/pid")):
        return None  # never the host's own
    return inode if any(_namespace_inode(f"/proc/{child}/ns/pid") == inode for child in children) else None


def namespace_pids(net_inode: int | None, pid_inode: int | None = None) -> list[int]:
    """Every process in the network namespace ``net_inode`` or the PID namespace ``pid_inode``."""
    host = {_namespace_inode("/proc/self/ns/net"), _namespace_inode("/proc/self/ns/pid"),
            _namespace_inode("/proc/1/ns/net"), _namespace_inode("/proc/1/ns/pid")}
    net_inode = None if net_inode in host else net_inode  # never the host's own namespaces
    pid_inode = None if pid_inode in host else pid_inode
    wanted = {f"net:[{net_inode}]" if net_inode else None, f"pid:[{pid_inode}]" if pid_inode else None} - {None}
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:  # a zombie has ended already (its parent has yet to reap it)
            if Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
        except (OSError, IndexError):
            continue
        for kind in ("net", "pid"):
            try:
                if os.readlink(f"/proc/{entry.name}/ns/{kind}") in wanted:
                    pids.append(int(entry.name))
                    break
            except OSError:
                pass
    return pids


def kill_namespace_processes(netns: str, pid_inode: int | None = None, timeout: float = 10) -> None:
    """SIGKILL every process of the machine, by PID, until none is left (a PID namespace's init may outlive a
    SIGTERM, and its outer ``unshare`` then waits for ever)."""
    net_inode = _namespace_inode(f"/run/netns/{netns}") if netns else None
    deadline = time.monotonic() + timeout
    while True:
        pids = namespace_pids(net_inode, pid_inode)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise MachinesError(f"processes {pids} of machine {netns} survive SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


# --- moto, asked directly (neither counted nor throttled) --------------------------------------------

class Moto:
    def __init__(self, port: int):
        self.port = port

    def query(self, region: str, action: str, params: dict[str, str] | None = None) -> ET.Element:
        from urllib.parse import urlencode

        body = urlencode({"Action": action, "Version": "2016-11-15", **(params or {})}).encode()
        request = (f"POST / HTTP/1.0\r\nHost: 127.0.0.1:{self.port}\r\n"
                   "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
                   f"Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, "
                   "SignedHeaders=host, Signature=0\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as connection:
            connection.sendall(request)
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        if head.split(b" ")[1:2] != [b"200"]:
            raise MachinesError(f"{action} in {region}: {_moto_error(payload)}")
        return strip_namespace(ET.fromstring(payload))  # noqa: S314 moto's own answer, on loopback


def _moto_error(payload: bytes) -> str:
    """An EC2 error answer as ``Code: Message`` (what it is, on one line); its first 300 bytes if not one."""
    try:
        error = strip_namespace(ET.fromstring(payload)).find("Errors/Error")  # noqa: S314 moto's, on loopback
    except ET.ParseError:
        error = None
    if error is None or not error.findtext("Code"):
        return f"moto answered {payload[:300].decode(errors='replace')}"
    return f"{error.findtext('Code')}: {error.findtext('Message') or ''}".strip()


def strip_namespace(root: ET.Element) -> ET.Element:
    for element in root.iter():
        if element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return root


def instances_of(root: ET.Element) -> list[dict]:
    """The instances of a RunInstances or DescribeInstances answer (namespace stripped)."""
    found = []
    for item in root.iter("item"):
        instance_id = item.findtext("instanceId")
        if not instance_id or item.find("imageId") is None:
            continue
        found.append({
            "id": instance_id, "image": item.findtext("imageId"), "ip": item.findtext("privateIpAddress"),
            "public_ip": item.findtext("ipAddress") or "",
            "key_name": item.findtext("keyName") or "", "vpc": item.findtext("vpcId") or "",
            "subnet": item.findtext("subnetId") or "",
            # An instance launched with NetworkInterfaces has its groups on the interfaces only.
            "groups": list(dict.fromkeys(
                g.findtext("groupId") for g in [*item.findall("groupSet/item"),
                                                *item.findall("networkInterfaceSet/item/groupSet/item")]
                if g.findtext("groupId"))),
        })
    return found


# --- security groups as nftables ------------------------------------------------------------------------

PROTOCOLS = {"6": "tcp", "17": "udp", "1": "icmp", "tcp": "tcp", "udp": "udp", "icmp": "icmp"}


def _rule(permission: ET.Element, direction: str, members) -> list[str]:
    """nft rules of one IpPermission: ``direction`` is ``saddr`` (ingress) or ``daddr`` (egress)."""
    protocol = (permission.findtext("ipProtocol") or "-1").lower()
    sources = [r.findtext("cidrIp") for r in permission.findall("ipRanges/item") if r.findtext("cidrIp")]
    for pair in permission.findall("groups/item"):
        sources += [f"{ip}/32" for ip in members(pair.findtext("groupId"))]
    if not sources:
        return []
    if "0.0.0.0/0" in sources:
        address = "meta nfproto ipv4"
    else:
        address = f"ip {direction} {{ {', '.join(sorted(set(sources)))} }}"
    name = PROTOCOLS.get(protocol)
    if protocol in ("-1", "all"):
        return [f"{address} accept"]
    if name is None:
        return [f"{address} meta l4proto {int(protocol)} accept"]
    low, high = permission.findtext("fromPort"), permission.findtext("toPort")
    if name == "icmp":
        if low in (None, "-1"):
            return [f"{address} meta l4proto icmp accept"]
        return [f"{address} icmp type {int(low)} accept"]
    if low in (None, "-1") or (low == "0" and high == "65535"):
        return [f"{address} meta l4proto {name} accept"]
    ports = low if low == high or high is None else f"{low}-{high}"
    return [f"{address} {name} dport {ports} accept"]


def ruleset(groups: list[ET.Element], members) -> str:
    """The nftables ruleset of a machine in ``groups`` (DescribeSecurityGroups items)."""
    ingress, egress = [], []
    for group in groups:
        for permission in group.findall("ipPermissions/item"):
            ingress += _rule(permission, "saddr", members)
        for permission in group.findall("ipPermissionsEgress/item"):
            egress += _rule(permission, "daddr", members)
    lines = ["table inet localcloud", "delete table inet localcloud", "table inet localcloud {",
             "  chain input {", "    type filter hook input priority 0; policy drop;",
             "    ct state established,related accept", "    iif lo accept",
             *[f"    {rule}" for rule in ingress], "  }",
             "  chain output {", "    type filter hook output priority 0; policy drop;",
             "    ct state established,related accept", "    oif lo accept",
             *[f"    {rule}" for rule in egress], "  }", "}", ""]
    return "\n".join(lines)


# --- the machines ----------------------------------------------------------------------------------------

BOOT_SCRIPT = r"""
set -eu
R={root}
# The layers by their names, from their folder: the mount options' page (4 KiB) then holds a hundred of them.
cd {layers}
mount -t overlay overlay -o {overlay} "$R"
cd /
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o mode=0755,nosuid,size=64m run "$R/run"
mount -t tmpfs -o mode=0755,nosuid,size=1m dev "$R/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name major minor <<EOF
$node
EOF
  mknod -m 0666 "$R/dev/$name" c "$major" "$minor"
done
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/run/sshd" "$R/run/localcloud"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=64m shm "$R/dev/shm"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
chmod 0755 "$R/run/sshd" "$R/run/localcloud"
cp {host_key} "$R/run/localcloud/ssh_host_ed25519_key"
chmod 0600 "$R/run/localcloud/ssh_host_ed25519_key"
cp {sshd_config} "$R/run/localcloud/sshd_config"
cp {authorized_keys} "$R/run/localcloud/authorized_keys"
hostname {hostname}
echo {hostname} > "$R/etc/hostname"
printf '127.0.0.1 localhost\n{ip} {hostname}\n' > "$R/etc/hosts"
if [ -d "$R/etc/apt/apt.conf.d" ]; then cp {apt_conf} "$R/etc/apt/apt.conf.d/01localcloud-mirror"; fi
# As cloud-init does: the key pair's public key is ec2-user's.
chroot "$R" /bin/sh -c 'install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh &&
  install -m 0600 -o {user} -g {user} /run/localcloud/authorized_keys /home/{user}/.ssh/authorized_keys'
echo "localcloud: booted {instance_id}, sshd on {ip}:22"
# The light model has no cloud-init: its console shows its sshd's key in cloud-init's format, where a client
# reads it to check SSH (the systemd model's console is cloud-init's own).
echo "-----BEGIN SSH HOST KEY KEYS-----"
cat {host_key}.pub
echo "-----END SSH HOST KEY KEYS-----"
exec chroot "$R" /usr/sbin/sshd -D -e -f /run/localcloud/sshd_config
"""

#: A machine as a cloud image boots: its own systemd as PID 1 (systemd-nspawn, in the machine's network namespace;
#: mount, PID, UTS, IPC and cgroup namespaces of nspawn's), cloud-init reading the NoCloud seed the local cloud
#: writes on the disk at every boot. Its console (nspawn's pty) is this script's output.
SYSTEMD_BOOT_SCRIPT = r"""
set -eu
R={root}
# The layers by their names, from their folder: the mount options' page (4 KiB) then holds a hundred of them.
cd {layers}
mount -t overlay overlay -o {overlay} "$R"
cd /
# The cloud's side of the disk, as a hypervisor's seed disk and DHCP would give it: the NoCloud seed (instance
# id, host name, the key pair's public key, the user data), the host name, the mirror of Debian's packages.
install -d -m 0755 "$R/var/lib/cloud" "$R/var/lib/cloud/seed"
install -d -m 0700 "$R/var/lib/cloud/seed/nocloud"
install -m 0600 {seed}/meta-data {seed}/user-data "$R/var/lib/cloud/seed/nocloud/"
echo {hostname} > "$R/etc/hostname"
printf '127.0.0.1 localhost\n{ip} {hostname}\n' > "$R/etc/hosts"
if [ -d "$R/etc/apt/apt.conf.d" ]; then install -m 0644 {apt_conf} "$R/etc/apt/apt.conf.d/01localcloud-mirror"; fi
exec systemd-nspawn --quiet --boot --directory="$R" --machine={instance_id} --hostname={hostname} \
  --register=no --keep-unit --network-namespace-path=/run/netns/{netns} --console=read-only \
  --kill-signal=SIGRTMIN+4 --resolv-conf=off --timezone=off --link-journal=no
"""

SSHD_CONFIG = """\
ListenAddress {ip}:22
HostKey /run/localcloud/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
MaxStartups 100
LogLevel INFO
"""

PROBE = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with socket.create_connection((sys.argv[1], 22), timeout=2) as s:
            s.settimeout(5)
            if s.recv(64).startswith(b"SSH-"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.02)
sys.exit(1)
"""


class Machines:
    """The machines and image layers of one local cloud (used by its front, one process)."""

    def __init__(self, state_dir: Path, base: Path, moto: Moto, plan: Plan, log=None, init: str = "systemd"):
        if init not in INITS:
            raise MachinesError(f"init {init!r} is not one of {', '.join(INITS)}")
        self.init = init
        self.plan = plan
        self.state_dir = state_dir
        self.base = base
        self.moto = moto
        self.registry_file = state_dir / "machines.json"
        self.failed_boots = state_dir / FAILED_BOOTS
        self.layers_dir = state_dir / "layers"
        self.disks_dir = state_dir / "machines"
        self.lock = threading.RLock()
        self.boots = threading.Semaphore(2)  # two cores: boots beyond that only wait for each other
        self.processes: dict[str, subprocess.Popen] = {}
        self.machine_locks: dict[str, threading.Lock] = {}
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.registry = self._load()

    # --- registry ------------------------------------------------------------------------------------

    def machine_lock(self, instance_id: str) -> threading.Lock:
        """Serializes making, ending and imaging one machine."""
        with self.lock:
            return self.machine_locks.setdefault(instance_id, threading.Lock())

    def _load(self) -> dict:
        if self.registry_file.exists():
            return json.loads(self.registry_file.read_text())
        return {"images": {}, "machines": {}}

    def _save(self) -> None:
        with self.lock:
            temporary = self.registry_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.registry, indent=1, sort_keys=True))
            temporary.replace(self.registry_file)

    def snapshot(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self.registry))

    def console(self, instance_id: str) -> str | None:
        """The machine's console output as GetConsoleOutput gives it (its last 64 KiB); None: no such machine."""
        try:
            with (self.disks_dir / instance_id / "console.log").open("rb") as log:
                log.seek(max(0, log.seek(0, 2) - CONSOLE_BYTES))
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    def not_ready(self) -> set[str]:
        """Instances moto shows running whose machine does not answer SSH yet."""
        with self.lock:
            return {iid for iid, m in self.registry["machines"].items() if m["state"] == "booting"}

    def failures(self) -> dict[str, str]:
        """Why each machine that failed to boot did (its instance terminated, as EC2 ends a failed launch)."""
        with self.lock:
            return {iid: m["error"].splitlines()[0][:300] for iid, m in self.registry["machines"].items()
                    if m["state"] == "failed"}

    def stopping(self) -> set[str]:
        """Instances moto shows stopped whose machine is still shutting down (systemd's poweroff)."""
        with self.lock:
            return {iid for iid, m in self.registry["machines"].items() if m["state"] == "stopping"}

    # --- EC2 calls ----------------------------------------------------------------------------------

    def ran(self, region: str, answer: bytes) -> None:
        """RunInstances answered: make a machine of each instance and boot it."""
        for instance in instances_of(strip_namespace(ET.fromstring(answer))):  # noqa: S314 moto's answer
            with self.lock:
                image = self.registry["images"].get(instance["image"], {})
                self.registry["machines"][instance["id"]] = {
                    **instance, "region": region, "layers": list(image.get("layers", [])), "state": "booting",
                    "boots": 0}
                self._save()
            self._boot_async(instance["id"])

    def started(self, region: str, instance_ids: list[str]) -> None:
        for instance_id in instance_ids:
            with self.lock:
                machine = self.registry["machines"].get(instance_id)
                if machine is not None and machine["state"] in ("booting", "running"):
                    continue
                if machine is None:  # made before this front: describe it
                    described = instances_of(self.moto.query(region, "DescribeInstances",
                                                             {"InstanceId.1": instance_id}))
                    if not described:
                        continue
                    image = self.registry["images"].get(described[0]["image"], {})
                    machine = {**described[0], "region": region, "layers": list(image.get("layers", [])),
                               "boots": 0}
                    self.registry["machines"][instance_id] = machine
                machine["state"] = "booting"
                self._save()
            self._boot_async(instance_id)

    def stopped(self, instance_ids: list[str]) -> None:
        """StopInstances: a clean shutdown (systemd's poweroff), in the background: DescribeInstances shows the
        instance ``stopping`` until its machine has ended (cut short after STOP_TIMEOUT, as EC2 forces a stop).
        The light model (sshd) is ended at once."""
        for instance_id in instance_ids:
            with self.lock:
                machine = self.registry["machines"].get(instance_id)
                if machine is None or machine["state"] in ("stopped", "stopping"):
                    continue
                machine["state"] = "stopping"
                self._save()
            if self.init == "systemd":
                threading.Thread(target=self._stop, args=(instance_id,), name=f"stop-{instance_id}",
                                 daemon=True).start()
            else:
                self._stop(instance_id)

    def _stop(self, instance_id: str) -> None:
        with self.machine_lock(instance_id):
            with self.lock:
                machine = self.registry["machines"].get(instance_id)
                if machine is None or machine["state"] != "stopping":
                    return  # started again (or terminated) meanwhile
            started = time.monotonic()
            try:
                self._halt(instance_id, clean=True)
            except Exception as exc:
                self.log(f"localcloud machines: stopping {instance_id}: {exc}")
            with self.lock:
                machine = self.registry["machines"].get(instance_id)
                if machine is not None and machine["state"] == "stopping":
                    machine["state"], machine["stop_seconds"] = "stopped", round(time.monotonic() - started, 3)
                    self._save()

    def terminated(self, instance_ids: list[str]) -> None:
        for instance_id in instance_ids:
            with self.lock:
                machine = self.registry["machines"].get(instance_id)
            if machine is None:
                continue
            with self.lock:
                machine["state"] = "terminating"
                self._save()
            with self.machine_lock(instance_id):
                self._halt(instance_id)
                shutil.rmtree(self.disks_dir / instance_id, ignore_errors=True)
                with self.lock:
                    self.registry["machines"].pop(instance_id, None)
                    self.machine_locks.pop(instance_id, None)
                    self._save()
            self.collect_layers()

    def image_created(self, region: str, instance_id: str, image_id: str) -> None:
        """The instance's upper directory frozen as a new layer; the image = its origin's layers + it. An instance
        still shutting down (StopInstances just before) is imaged once it has stopped."""
        deadline = time.monotonic() + STOP_TIMEOUT + 30
        while time.monotonic() < deadline:
            with self.lock:
                if (self.registry["machines"].get(instance_id) or {}).get("state") != "stopping":
                    break
            time.sleep(0.05)
        with self.machine_lock(instance_id), self.lock:
            machine = self.registry["machines"].get(instance_id)
            if machine is None:
                return
            layer = f"{image_id}-{uuid.uuid4().hex[:8]}"
            upper = self.disks_dir / instance_id / "upper"
            target = self.layers_dir / layer
            self.layers_dir.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            if machine["state"] == "stopped" or not upper.exists():
                # A stopped disk is frozen as it is: the layer is the old upper directory, the instance's disk
                # goes on as that layer plus a fresh upper one (the same files, no copy).
                if upper.exists():
                    upper.rename(target)
                else:
                    target.mkdir()
                upper.mkdir(parents=True, exist_ok=True)
                machine["layers"] = [layer, *machine["layers"]]
                layers = list(machine["layers"])
            else:  # running: a copy (AWS would reboot it first; this one is not)
                run("cp", "-a", "--reflink=auto", str(upper), str(target), timeout=1800)
                layers = [layer, *machine["layers"]]
            self.registry["images"][image_id] = {"layers": layers, "region": region, "from": instance_id,
                                                 "seconds": round(time.monotonic() - started, 3)}
            self._save()
        self.log(f"localcloud machines: image {image_id} of {instance_id}: layers {layers}")

    def image_copied(self, region: str, source_id: str, image_id: str) -> None:
        """A copy (CopyImage, into any region): the source's layers, shared (layers are read-only); an instance
        of the copy boots the same files. A source without layers (moto's own images) is the base alone."""
        with self.lock:
            source = self.registry["images"].get(source_id, {})
            layers = list(source.get("layers", []))
            self.registry["images"][image_id] = {"layers": layers, "region": region, "from": source_id,
                                                 "seconds": 0.0}
            self._save()
        self.log(f"localcloud machines: image {image_id} in {region}, a copy of {source_id}: layers {layers}")

    def image_deregistered(self, image_id: str) -> None:
        with self.lock:
            self.registry["images"].pop(image_id, None)
            self._save()
        self.collect_layers()

    def groups_changed(self, region: str) -> None:
        """A security group of the region changed: every live machine's ruleset is built again, at once."""
        with self.lock:
            live = [iid for iid, m in self.registry["machines"].items()
                    if m["region"] == region and m["state"] in ("booting", "running")]
        for instance_id in live:
            try:
                self._firewall(instance_id)
            except MachinesError as exc:
                self.log(f"localcloud machines: firewall of {instance_id}: {exc}")

    def instance_groups_changed(self, region: str, instance_id: str) -> None:
        described = instances_of(self.moto.query(region, "DescribeInstances", {"InstanceId.1": instance_id}))
        with self.lock:
            machine = self.registry["machines"].get(instance_id)
            if machine is None or not described:
                return
            machine["groups"] = described[0]["groups"]
            self._save()
        self.groups_changed(region)

    # --- boot and halt --------------------------------------------------------------------------------

    def _boot_async(self, instance_id: str) -> None:
        threading.Thread(target=self._boot, args=(instance_id,), name=f"boot-{instance_id}", daemon=True).start()

    def _boot(self, instance_id: str) -> None:
        with self.boots:
            started = time.monotonic()
            try:
                # A stop or terminate that comes while the machine is being made waits until it is made (then
                # ends it); one that came before leaves nothing to boot.
                with self.machine_lock(instance_id):
                    with self.lock:
                        machine = self.registry["machines"].get(instance_id)
                        if machine is None or machine["state"] != "booting":
                            return
                    started_machine = self._boot_machine(instance_id)
                self._await_sshd(*started_machine)
            except Exception as exc:
                with self.lock:
                    machine = self.registry["machines"].get(instance_id)
                    if machine is None or machine["state"] != "booting":  # stopped or terminated meanwhile
                        self.log(f"localcloud machines: {instance_id} ended while it booted")
                        return
                self.log(f"localcloud machines: {instance_id} failed to boot: {exc}")
                self._fail(instance_id, str(exc))
                return
            seconds = time.monotonic() - started
            with self.lock:
                machine = self.registry["machines"].get(instance_id)
                if machine is not None and machine["state"] == "booting":
                    machine["state"], machine["boot_seconds"] = "running", round(seconds, 3)
                    machine["boots"] += 1
                    machine.pop("error", None)
                    self._save()
            self.log(f"localcloud machines: {instance_id} answers SSH on {machine and machine['ip']}:22 "
                     f"{seconds:.2f} s after its boot began")

    def _fail(self, instance_id: str, error: str) -> None:
        """A boot that failed ends as EC2 ends a launch that failed: the instance terminated, its state reason
        Server.InternalError with the cause (hooks.Latency shows it), not pending for ever. The console stays."""
        with self.lock:
            machine = self.registry["machines"].get(instance_id)
            if machine is None or machine["state"] != "booting":
                return
            machine["state"], machine["error"] = "failed", error or "unknown"
            self._save()
            with self.failed_boots.open("a") as record:  # outlives the instance (its disk, its console)
                record.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {instance_id} {machine['ip']}: {error}\n")
        try:
            with self.machine_lock(instance_id):
                self._halt(instance_id)
            self.moto.query(machine["region"], "TerminateInstances", {"InstanceId.1": instance_id})
        except Exception as exc:
            self.log(f"localcloud machines: ending {instance_id}, which failed to boot: {exc}")

    def _boot_machine(self, instance_id: str) -> tuple[subprocess.Popen, str, str, Path]:
        with self.lock:
            machine = dict(self.registry["machines"][instance_id])
            others = {m["ip"] for iid, m in self.registry["machines"].items()
                      if iid != instance_id and m["state"] in ("booting", "running")}
        ip = machine["ip"]
        if not ip or ipaddress.ip_address(ip) not in self.plan.private:
            raise MachinesError(f"address {ip} is outside {self.plan.private}")
        if ip in others:
            raise MachinesError(f"address {ip} is another live machine's (two VPCs of the same range)")
        ensure_blackhole()  # still there (another local cloud's down may have taken it) before any route
        ensure_inotify_instances()
        vpcs = self.moto.query(machine["region"], "DescribeVpcs", {"VpcId.1": machine["vpc"]})
        for cidr in vpcs.iter("cidrBlock"):
            route_vpc(self.plan, cidr.text)
        disk = self.disks_dir / instance_id
        for name in ("upper", "work", "root"):
            (disk / name).mkdir(parents=True, exist_ok=True)
        if self.init == "systemd":
            return self._boot_systemd(instance_id, machine, disk)
        host_key = disk / "ssh_host_ed25519_key"
        if not host_key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", instance_id, "-f", str(host_key))
        (disk / "authorized_keys").write_text(self._public_key(machine))
        public = machine.get("public_ip") if machine.get("public_ip") and ipaddress.ip_address(
            machine["public_ip"]) in self.plan.public else ""
        config = SSHD_CONFIG.format(ip=ip) + (f"ListenAddress {public}:22\n" if public else "")
        (disk / "sshd_config").write_text(config)
        from localcloud.mirror import apt_config

        (disk / "apt-mirror.conf").write_text(apt_config(str(self.plan.bridge_address)))
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        lower = ":".join([*machine["layers"], str(self.base)])
        overlay = f"lowerdir={lower},upperdir={disk / 'upper'},workdir={disk / 'work'}"
        script = BOOT_SCRIPT.format(
            root=shlex.quote(str(disk / "root")), layers=shlex.quote(str(self.layers_dir)),
            overlay=shlex.quote(overlay), host_key=shlex.quote(str(host_key)),
            sshd_config=shlex.quote(str(disk / "sshd_config")),
            authorized_keys=shlex.quote(str(disk / "authorized_keys")), user=USER, instance_id=instance_id, ip=ip,
            apt_conf=shlex.quote(str(disk / "apt-mirror.conf")),
            hostname="ip-" + ip.replace(".", "-"))
        (disk / "boot.sh").write_text(script)
        netns = self._plug(instance_id, ip, public)
        console = (disk / "console.log").open("a")
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--pid", "--fork", "--uts", "--ipc",
             "--propagation", "private", "--", "/bin/sh", str(disk / "boot.sh")],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": MACHINE_PATH, "LANG": "C.UTF-8"})
        console.close()
        pid_inode = None
        for _ in range(200):  # the PID namespace's init: the child of unshare
            try:
                child = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
                if child:
                    pid_inode = _namespace_inode(f"/proc/{child[0]}/ns/pid")
                    break
            except OSError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.005)
        with self.lock:
            self.processes[instance_id] = process
            self.registry["machines"][instance_id]["pid"] = process.pid
            self.registry["machines"][instance_id]["pid_namespace"] = pid_inode
            self._save()
        return process, netns, ip, disk

    def _plug(self, instance_id: str, ip: str, public: str) -> str:
        """The machine's network namespace: its addresses on a veth onto the bridge, the reserved range only,
        its security groups; returns the namespace's name."""
        netns = self.plan.netns(instance_id)
        self._unplug(instance_id)
        # the public address too, as AWS's NAT would: it reaches the machine
        plug_host(self.plan, netns, self.plan.veth(instance_id), [ip, *([public] if public else [])])
        self._firewall(instance_id)
        return netns

    def _seed(self, instance_id: str, machine: dict, ip: str, folder: Path) -> None:
        """The NoCloud seed of this boot (meta-data, user-data), as a cloud's metadata service would answer."""
        import base64

        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = [line for line in self._public_key(machine).splitlines() if line.strip()]
        meta = {"instance-id": instance_id, "local-hostname": "ip-" + ip.replace(".", "-"),
                "public-keys": keys}
        # JSON is YAML: no quoting of our own to get wrong.
        (folder / "meta-data").write_text(json.dumps(meta, indent=1) + "\n")
        user_data = b""
        answer = self.moto.query(machine["region"], "DescribeInstanceAttribute",
                                 {"InstanceId": instance_id, "Attribute": "userData"})
        encoded = answer.findtext("userData/value")
        if encoded:
            user_data = base64.b64decode(encoded)
        descriptor = os.open(folder / "user-data", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(user_data)

    def _boot_systemd(self, instance_id: str, machine: dict, disk: Path
                      ) -> tuple[subprocess.Popen, str, str, Path]:
        from localcloud.mirror import apt_config

        ip = machine["ip"]
        public = machine.get("public_ip") if machine.get("public_ip") and ipaddress.ip_address(
            machine["public_ip"]) in self.plan.public else ""
        self._seed(instance_id, machine, ip, disk / "seed")
        (disk / "apt-mirror.conf").write_text(apt_config(str(self.plan.bridge_address)))
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        lower = ":".join([*machine["layers"], str(self.base)])
        overlay = f"lowerdir={lower},upperdir={disk / 'upper'},workdir={disk / 'work'}"
        netns = self.plan.netns(instance_id)
        script = SYSTEMD_BOOT_SCRIPT.format(
            root=shlex.quote(str(disk / "root")), layers=shlex.quote(str(self.layers_dir)),
            overlay=shlex.quote(overlay), seed=shlex.quote(str(disk / "seed")),
            apt_conf=shlex.quote(str(disk / "apt-mirror.conf")), instance_id=instance_id, ip=ip, netns=netns,
            hostname="ip-" + ip.replace(".", "-"))
        (disk / "boot.sh").write_text(script)
        self._plug(instance_id, ip, public)
        console = (disk / "console.log").open("a")
        # unshare (no fork): the overlay in a mount namespace of the machine's own; the script then becomes
        # systemd-nspawn (same PID): SIGTERM to it is the machine's poweroff (--kill-signal).
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", str(disk / "boot.sh")],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": MACHINE_PATH, "LANG": "C.UTF-8"})
        console.close()
        pid_inode = self._await_pid_namespace(process, timeout=30)
        with self.lock:
            self.processes[instance_id] = process
            self.registry["machines"][instance_id]["pid"] = process.pid
            self.registry["machines"][instance_id]["pid_namespace"] = pid_inode
            self.registry["machines"][instance_id]["init"] = "systemd"
            self._save()
        return process, netns, ip, disk

    @staticmethod
    def _await_pid_namespace(process: subprocess.Popen, timeout: float) -> int | None:
        """The PID namespace of the machine's init (the child of ``process`` in a PID namespace that is not
        this host's); None if the process ends first."""
        own = {_namespace_inode("/proc/self/ns/pid"), _namespace_inode("/proc/1/ns/pid")}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split():
                    inode = _namespace_inode(f"/proc/{child}/ns/pid")
                    if inode and inode not in own:
                        return inode
            time.sleep(0.01)
        return None

    def _await_sshd(self, process: subprocess.Popen, netns: str, ip: str, disk: Path) -> None:
        probe = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", PROBE, ip,
                                  str(BOOT_TIMEOUT)])
        while probe.poll() is None:
            if process.poll() is not None:
                probe.kill()
                probe.wait()
                raise MachinesError(f"the machine exited ({process.returncode}): "
                                    f"{(disk / 'console.log').read_text()[-1500:]}")
            time.sleep(0.02)
        if probe.returncode != 0:
            console = (disk / "console.log").read_text(errors="replace")[-2000:]
            raise MachinesError(f"sshd on {ip}:22 did not answer in {BOOT_TIMEOUT} s; the end of its console "
                                f"({disk / 'console.log'}):\n{console}")

    def _public_key(self, machine: dict) -> str:
        if not machine.get("key_name"):
            return ""
        answer = self.moto.query(machine["region"], "DescribeKeyPairs",
                                 {"KeyName.1": machine["key_name"], "IncludePublicKey": "true"})
        return "".join(f"{key.text.strip()}\n" for key in answer.iter("publicKey") if key.text)

    def _firewall(self, instance_id: str) -> None:
        with self.lock:
            machine = dict(self.registry["machines"].get(instance_id) or {})
        if not machine or not machine["groups"]:
            groups = []
        else:
            params = {f"GroupId.{n}": group for n, group in enumerate(machine["groups"], 1)}
            groups = list(self.moto.query(machine["region"], "DescribeSecurityGroups", params).findall(
                "securityGroupInfo/item"))

        def members(group_id: str) -> list[str]:
            with self.lock:
                return [m["ip"] for m in self.registry["machines"].values()
                        if group_id in m["groups"] and m["region"] == machine["region"]]

        run("ip", "netns", "exec", self.plan.netns(instance_id), "nft", "-f", "-", input=ruleset(groups, members))

    def _unplug(self, instance_id: str) -> None:
        """Remove the machine's processes, network namespace and veth (each if there)."""
        netns = self.plan.netns(instance_id)
        with self.lock:
            pid_inode = machine_pid_namespace(self.registry["machines"].get(instance_id) or {})
        if Path(f"/run/netns/{netns}").exists() or pid_inode:
            kill_namespace_processes(netns, pid_inode)
            run("ip", "netns", "del", netns, check=False)
        run("ip", "link", "del", self.plan.veth(instance_id), check=False)

    def _halt(self, instance_id: str, clean: bool = False) -> None:
        """End the machine: with ``clean``, a systemd machine's poweroff first (SIGTERM to its nspawn, which
        sends systemd SIGRTMIN+4), up to STOP_TIMEOUT; then whatever is left is killed."""
        with self.lock:
            process = self.processes.pop(instance_id, None)
        if clean and process is not None and process.poll() is None and self.init == "systemd":
            # Again every 2 s: a systemd that has not set up its signal handlers yet (early in its boot) does
            # not see the first one (a PID namespace's init ignores signals it does not handle).
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=2)
            if process.poll() is None:
                self.log(f"localcloud machines: {instance_id} did not power off in {STOP_TIMEOUT} s: killed")
        self._unplug(instance_id)
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # systemd-nspawn's folder for the machine's mount propagation (it leaves it when /run is no tmpfs)
        shutil.rmtree(NSPAWN_PROPAGATE / instance_id, ignore_errors=True)
        with self.lock:  # its namespace is gone (the unplug killed until none was left): the kernel may give
            # the number to another machine's
            if instance_id in self.registry["machines"]:
                self.registry["machines"][instance_id]["pid_namespace"] = None
        if run("ip", "link", "show", self.plan.veth(instance_id), check=False).returncode == 0:
            raise MachinesError(f"machine {instance_id} left its veth {self.plan.veth(instance_id)}")

    def collect_layers(self) -> None:
        """Remove the layers that no image and no instance uses."""
        with self.lock:
            used = {layer for kind in ("images", "machines") for item in self.registry[kind].values()
                    for layer in item.get("layers", [])}
            if not self.layers_dir.exists():
                return
            for path in self.layers_dir.iterdir():
                if path.name not in used:
                    shutil.rmtree(path, ignore_errors=True)

    def halt_all(self) -> None:
        with self.lock:
            ids = list(self.registry["machines"])
        for instance_id in ids:
            self._halt(instance_id)


def teardown(state_dir: Path, plan: Plan) -> None:
    """Everything the machines made on the host (also without the front): processes, namespaces, veths, the
    bridge, the blackhole route (when made here), the disks and layers, the registry."""
    registry = state_dir / "machines.json"
    known = json.loads(registry.read_text()).get("machines", {}) if registry.exists() else {}
    host_network_down(plan, tuple(inode for m in known.values() if (inode := machine_pid_namespace(m))))
    for name in ("machines", "layers"):
        shutil.rmtree(state_dir / name, ignore_errors=True)
    (state_dir / "machines.json").unlink(missing_ok=True)
