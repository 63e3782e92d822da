"""Start, stop and describe the local cloud. ``python -m localcloud up|down|status|env|stats|shell``.

Processes each in a session of its own and on 127.0.0.1: moto (the AWS emulator, through
localcloud/moto_server.py with the fixes of localcloud/moto_fixes.py, so that every VPC is in 198.18.0.0/15) and
the front before it (localcloud/proxy.py: every AWS client goes through it; its chain of hooks counts API calls,
keeps a journal of them and can throttle a share of them).

Two models of the instances:

* ``machines=True`` (the default): every instance is a real, isolated Linux machine made by the front
  (localcloud/machines.py): its network namespace, an overlay disk on the images' layers, its own address in
  198.18.0.0/15, security groups as nftables; it boots its image's systemd (systemd-nspawn) and cloud-init,
  and gets Debian's packages through the local cloud's mirror on the bridge (apt-cacher-ng,
  localcloud/mirror.py). ``init="sshd"`` (or ``IMAGE_FACTORY_LOCAL_CLOUD_INIT=sshd``) is the light model: sshd
  alone is a machine's PID 1, for runs of many machines at once. Needs root, network namespaces, overlayfs,
  nftables, systemd-nspawn, apt-cacher-ng (and mmdebstrap once, for the origin root filesystem); ``up`` names
  what is missing.
* ``machines=False``: instances are moto's records only and one sshd on 127.0.0.1 stands in for all of them
  (roles run on the host, as the host's user). The Docker Compose profile's model (its own containers).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = PROJECT / ".local-cloud"
DEFAULT_REGIONS = "eu-west-1,us-east-1,us-west-2,eu-central-1"
SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"
#: The S3 bucket of the images' SBOMs, made at `up` (its builds' [image_factory] sbom_bucket).
SBOM_BUCKET = "image-factory-sboms"


class LocalCloudError(Exception):
    pass


def free_port(*taken: int) -> int:
    """A port free now on loopback, other than ``taken`` (ports chosen but not bound yet)."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until something listens on ``port`` on loopback; ``process`` exiting first is an error (with ``log``'s end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalCloudError(f"exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise LocalCloudError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s; see {log}")


@dataclass
class State:
    ec2_port: int  # the front's port: the one endpoint every AWS client uses
    ssh_port: int
    moto_pid: int
    sshd_pid: int
    user: str
    regions: str
    # Defaults keep a state file written before the front existed readable (it then reads as not running).
    moto_port: int = 0
    proxy_pid: int = 0
    host: str = LOOPBACK
    machines: bool = False
    #: region -> the builder VPC made at up (machines only)
    builder_vpcs: dict | None = None
    blackhole_made: bool = False
    slot: int = 0  # the machines' address slot (localcloud/addresses.py)
    init: str = "sshd"  # a machine's PID 1 (localcloud/machines.py INITS); older state files: the sshd model
    mirror_pid: int = 0  # the package mirror on the bridge (localcloud/mirror.py)


def default_init() -> str:
    """A machine's PID 1 unless told otherwise: ``IMAGE_FACTORY_LOCAL_CLOUD_INIT`` (``systemd``, the default, or
    ``sshd``, the light model)."""
    return os.environ.get("IMAGE_FACTORY_LOCAL_CLOUD_INIT", "").strip() or "systemd"


class LocalCloud:
    def __init__(self, state_dir: Path = DEFAULT_STATE, machines: bool = True, init: str | None = None):
        self.state_dir = state_dir.resolve()
        self.state_file = self.state_dir / "state.json"
        self.machines = machines
        self.init = init or default_init()
        if self.init not in ("systemd", "sshd"):
            raise LocalCloudError(f"init {self.init!r}: a machine's PID 1 is systemd (the default) or sshd (the "
                                  "light model)")

    # --- state ------------------------------------------------------------------------------------

    def state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def running(self) -> bool:
        state = self.state()
        if state is None:
            return False
        pids = (state.moto_pid, state.proxy_pid) + (() if state.machines else (state.sshd_pid,))
        return all(pid > 0 and _alive(pid) for pid in pids) and (state.mirror_pid <= 0 or _alive(state.mirror_pid))

    @property
    def endpoint(self) -> str:
        """The AWS endpoint of every client: the front, which forwards to moto."""
        state = self._require()
        return f"http://{LOOPBACK}:{state.ec2_port}"

    @property
    def bridge_endpoint(self) -> str:
        """The same front on the bridge's address (machines only): where other hosts of the bridge reach it."""
        state = self._require()
        if not state.machines:
            raise LocalCloudError("a local cloud without machines has no bridge")
        return f"http://{self.plan.bridge_address}:{state.ec2_port}"

    @property
    def moto_endpoint(self) -> str:
        """moto itself, behind the front: neither counted nor throttled (sshd's key lookup uses it)."""
        state = self._require()
        return f"http://{LOOPBACK}:{state.moto_port}"

    # --- the front's counters and throttling -------------------------------------------------------

    def stats(self) -> dict:
        """``{"calls": {"ec2:DescribeVpcs": 2, ...}, "throttled": {...}, "errors": {...}, "config": {...}}`` since
        the last reset.

        ``calls`` counts every AWS API call the front received, throttled ones included; ``errors``, the error
        answers of the cloud behind it by call and error code (``{"ec2:DeleteVpc": {"DependencyViolation": 1}}``).
        """
        return self._control("GET", "stats")

    def calls(self) -> list[dict]:
        """Every AWS API call the front received since the last reset, in order: ``[{"call": "ec2:CreateSubnet",
        "region": "eu-west-1", "params": {"VpcId": "vpc-...", "TagSpecification.1.Tag.1.Key": "Name", ...}}]``.

        ``params`` are a query-protocol call's (EC2's) flat parameters, or a JSON-protocol call's (SSM's) body;
        secrets (EC2's ``UserData``, SSM PutParameter's ``Value``) show ``<redacted>``.
        """
        return self._control("GET", "calls")

    def reset_stats(self) -> dict:
        """Zero the counters and clear the journal of calls (the throttling settings stay)."""
        return self._control("POST", "reset")

    def configure(self, throttle_rate: float | None = None, throttle_seed: int | None = None,
                  latency: dict[str, float] | None = None, fail_copies_to: list[str] | None = None,
                  deny: list[str] | None = None, insufficient_capacity: list[str] | None = None,
                  fail_instance_refreshes: list[str] | None = None) -> dict:
        """Answer a share of EC2 and SSM calls with AWS's throttling error (0 turns it off); returns the settings.

        The choice is made by ``random.Random(throttle_seed)``, seeded afresh by every call of this method.
        ``latency`` emulates state-change times in seconds (0: instant, the default), any of
        ``{"instance_running": 20, "instance_stopped": 5, "image_available": 30, "instance_terminated": 5}``;
        see localcloud/proxy.py. ``fail_copies_to``: copies of images into these regions fail (``[]``: none do).
        ``deny``: calls ("ssm:PutParameter@us-west-2") answered access denied (``[]``: none are).
        ``insufficient_capacity``: instance types RunInstances is refused for, as EC2 refuses them when a zone has
        no capacity (``[]``: none are). ``fail_instance_refreshes``: these Auto Scaling groups' instance refreshes
        end Failed (``[]``: none do; localcloud/instance_refresh.py).
        """
        settings = {"throttle_rate": throttle_rate, "throttle_seed": throttle_seed, "latency": latency,
                    "fail_copies_to": fail_copies_to, "deny": deny, "insufficient_capacity": insufficient_capacity,
                    "fail_instance_refreshes": fail_instance_refreshes}
        return self._control("POST", "config", {k: v for k, v in settings.items() if v is not None})

    def backdate_images(self, dates: dict[str, datetime]) -> None:
        """From now on DescribeImages shows each image's CreationDate as given: an image "made days ago"."""
        self._control("POST", "creation-dates",
                      {image_id: when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                       for image_id, when in dates.items()})

    def _control(self, method: str, name: str, document: dict | None = None):
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(f"{self.endpoint}/_localcloud/{name}", data=data, method=method,  # noqa: S310
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 http://127.0.0.1 only
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise LocalCloudError(f"{method} /_localcloud/{name}: {exc.code} {exc.read().decode(errors='replace')}"
                                  ) from exc
        except OSError as exc:
            raise LocalCloudError(f"the local cloud's front at {self.endpoint} does not answer: {exc}") from exc

    @property
    def plan(self):
        """The machines' addresses and host names (localcloud/addresses.py): the slot this cloud runs in."""
        from localcloud.addresses import Plan

        return Plan(self._require().slot)

    def summary(self) -> str:
        """One line for people: the endpoint, and where builds SSH to."""
        state = self._require()
        if state.machines:
            return (f"EC2 emulator {self.endpoint}, instances are machines on bridge {self.plan.bridge} "
                    f"({self.plan.bridge_address}; SSH to their private addresses)")
        return f"EC2 emulator {self.endpoint}, SSH server 127.0.0.1:{state.ssh_port} (no machines)"

    def instance_file(self, instance_id: str, path: str) -> Path | None:
        """Where, on this host, a file the instance wrote (``/tmp/x`` -> ``.../upper/tmp/x``) is: its disk,
        then the layers under it; None when the instance did not write it (for tests; read-only use: write into
        a machine over SSH, never into its disk from here while it runs)."""
        machine = self.machines_list()["machines"].get(instance_id)
        if machine is None:
            return None
        relative = path.lstrip("/")
        for folder in [self.state_dir / "machines" / instance_id / "upper",
                       *(self.state_dir / "layers" / layer for layer in machine["layers"])]:
            if (folder / relative).exists() or (folder / relative).is_symlink():
                return folder / relative
        return None

    def machines_list(self) -> dict:
        """The front's registry: ``{"images": {ami: {"layers": [...]}}, "machines": {instance: {...}}}``."""
        return self._control("GET", "machines")

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The settings that point Airflow (and any AWS client) at this local cloud (at ``endpoint``, default
        :attr:`endpoint`; other hosts of the bridge use :attr:`bridge_endpoint`)."""
        state = self._require()
        region = state.regions.split(",")[0]
        connection = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint or self.endpoint, "region_name": region},
        }
        if state.machines:
            # Builds SSH to the instance's own private address, as on AWS, from the bridge's address.
            plan = self.plan
            return {
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
                "AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR": f"{plan.bridge_address}/32",
                "AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_ID": (state.builder_vpcs or {}).get(region, ""),
                "AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_CIDR": str(plan.own_vpc),
                "AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL": "1",
                "AIRFLOW__IMAGE_FACTORY__SBOM_BUCKET": SBOM_BUCKET,
            }
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AIRFLOW__IMAGE_FACTORY__SSH_HOST": LOOPBACK,
            "AIRFLOW__IMAGE_FACTORY__SSH_PORT": str(state.ssh_port),
            "AIRFLOW__IMAGE_FACTORY__SSH_USERNAME": state.user,
            "AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR": f"{LOOPBACK}/32",
            "AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL": "1",
            "AIRFLOW__IMAGE_FACTORY__SBOM_BUCKET": SBOM_BUCKET,
        }

    def shell(self, image: str | None = None, region: str | None = None, command: list[str] | None = None,
              boot_timeout: float = 120) -> int:
        """Boot an instance of ``image`` through the front with a temporary key pair and a group letting SSH in
        from this host, open an interactive ssh session in it (or run ``command``), terminate it at the end;
        returns ssh's exit code."""
        import tempfile

        import boto3

        state = self._require()
        if not state.machines:
            raise LocalCloudError("this local cloud runs without machines (--no-machines): nothing to log in to")
        region = region or state.regions.split(",")[0]
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",  # noqa: S106
                                        region_name=region)
        ec2 = session.client("ec2", endpoint_url=self.endpoint)
        if not image:
            image = session.client("ssm", endpoint_url=self.endpoint).get_parameter(
                Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")["Parameter"]["Value"]
        name = f"localcloud-shell-{os.getpid()}-{int(time.time())}"
        env = self.env()
        with tempfile.TemporaryDirectory(prefix="localcloud-shell-") as folder:
            key = Path(folder) / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            ec2.import_key_pair(KeyName=name, PublicKeyMaterial=key.with_suffix(".pub").read_bytes())
            group = instance_id = None
            try:
                vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
                group = ec2.create_security_group(GroupName=name, Description="localcloud shell: SSH from the host",
                                                  VpcId=vpc)["GroupId"]
                ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
                    "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                    "IpRanges": [{"CidrIp": env["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"]}]}])
                instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName=name,
                                             SecurityGroupIds=[group])["Instances"][0]
                instance_id, address = instance["InstanceId"], instance["PrivateIpAddress"]
                print(f"local cloud: {instance_id} of {image} booting at {address}", file=sys.stderr)
                deadline = time.monotonic() + boot_timeout
                while ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
                        "State"]["Name"] != "running":
                    if time.monotonic() > deadline:
                        raise LocalCloudError(f"{instance_id} not running after {boot_timeout} s "
                                              "(python -m localcloud machines shows why)")
                    time.sleep(0.1)
                ssh = ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                       "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                       *([] if command else ["-t"]), f"ec2-user@{address}", *(command or [])]
                return subprocess.run(ssh).returncode
            finally:
                if instance_id:
                    ec2.terminate_instances(InstanceIds=[instance_id])
                    print(f"local cloud: {instance_id} terminated", file=sys.stderr)
                if group:
                    ec2.delete_security_group(GroupId=group)
                ec2.delete_key_pair(KeyName=name)

    def _require(self) -> State:
        state = self.state()
        if state is None:
            raise LocalCloudError(f"the local cloud is not running (no {self.state_file}); start it with "
                                  "`python -m localcloud up`")
        return state

    # --- up / down --------------------------------------------------------------------------------

    def up(self, regions: str = DEFAULT_REGIONS, ec2_port: int = 0, ssh_port: int = 0) -> State:
        if self.running():
            return self._require()
        self.down()
        base, slot = None, 0
        if self.machines:
            base, slot = self._machines_preflight()
        elif not Path(SSHD).exists():
            raise LocalCloudError(f"{SSHD} is missing: install Debian's openssh-server (make setup does)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ec2_port = ec2_port or free_port()
        ssh_port = 0 if self.machines else (ssh_port or free_port(ec2_port))
        moto_port = free_port(ec2_port, ssh_port)
        started: list[tuple[int, str]] = []
        blackhole_made, mirror_pid = False, 0
        try:
            if self.machines:
                from localcloud import machines
                from localcloud.addresses import Plan

                # The blackhole route first: nothing for 198.18.0.0/15 leaves this host, before any machine.
                blackhole_made = machines.host_network_up(Plan(slot))
                # Written before anything else can fail: `down` then knows what to remove.
                self.state_file.write_text(json.dumps(asdict(State(
                    0, 0, 0, 0, getpass.getuser(), regions, machines=True, blackhole_made=blackhole_made,
                    slot=slot, init=self.init))))
                mirror_pid = self._start_mirror(slot)
                started.append((mirror_pid, "apt-cacher-ng"))
                self.state_file.write_text(json.dumps(asdict(State(
                    0, 0, 0, 0, getpass.getuser(), regions, machines=True, blackhole_made=blackhole_made,
                    slot=slot, init=self.init, mirror_pid=mirror_pid))))
            moto = self._start_moto(moto_port, regions, slot)
            started.append((moto.pid, "moto_server"))
            proxy = self._start_proxy(ec2_port, moto_port, base, slot)
            started.append((proxy.pid, "localcloud.proxy"))
            sshd_pid = 0
            if not self.machines:
                # sshd's key lookup stands in for the cloud's own plumbing, not for a client: it asks moto
                # directly, so it is neither throttled nor counted.
                sshd_pid = self._start_sshd(ssh_port, moto_port, regions).pid
            # moto sets a region up on its first request there (a second or so): do it now, in the order of
            # `regions` (each region's address block follows from it), not in the first build.
            from localcloud.authorized_keys import public_keys

            for region in regions.split(","):
                public_keys(f"http://{LOOPBACK}:{moto_port}", region)
            builder_vpcs = self._make_builder_vpcs(moto_port, regions) if self.machines else None
            self._make_sbom_bucket(moto_port, regions.split(",")[0])
        except BaseException:
            for pid, marker in reversed(started):
                _terminate(pid, marker)
            if self.machines:
                self._machines_down(slot)
            raise
        state = State(ec2_port, ssh_port, moto.pid, sshd_pid, getpass.getuser(), regions, moto_port, proxy.pid,
                      machines=self.machines, builder_vpcs=builder_vpcs, blackhole_made=blackhole_made, slot=slot,
                      init=self.init, mirror_pid=mirror_pid)
        self.state_file.write_text(json.dumps(asdict(state)))
        return state

    def _machines_preflight(self) -> tuple[Path, int]:
        """Root, the commands and the kernel features the machines need, and the origin root filesystem."""
        from localcloud import base, machines

        missing = machines.missing_features(need_mmdebstrap=not base.is_complete(base.base_dir()), init=self.init)
        if missing:
            raise LocalCloudError("the local cloud's machines cannot run here: missing " + "; ".join(missing)
                                  + ". (LocalCloud(machines=False) is the single-sshd model, which runs roles "
                                  "on this host: the Docker Compose profile's.)")
        slot = self._claim_slot()
        try:
            return base.ensure_base(log=lambda message: print(message, file=sys.stderr, flush=True)), slot
        except base.BaseError as exc:
            self._release_slot(slot)
            raise LocalCloudError(str(exc)) from None

    def _claim_slot(self) -> int:
        """A free address slot (localcloud/addresses.py): one whose owner is gone (its leftovers removed first)."""
        from localcloud import machines
        from localcloud.addresses import SLOTS, Plan

        machines.RUN_DIR.mkdir(parents=True, exist_ok=True)
        busy = []
        legacy = machines.RUN_DIR / "machines.owner"  # a local cloud of before the slots: lcbr0, lc-*, lch*
        if legacy.exists() and LocalCloud(Path(legacy.read_text().strip() or "/nonexistent")).running():
            busy.append(legacy.read_text().strip())
        for slot in range(SLOTS):
            if slot == 0 and busy:
                continue
            owner = machines.owner_file(slot)
            try:  # made atomically: two clouds starting at once never take the same slot
                descriptor = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                state_dir, _, claimer = owner.read_text().strip().partition("\n")
                other = Path(state_dir or "/nonexistent")
                # A cloud still starting has no state yet: while the process that claimed the slot lives, it is
                # taken (else a second cloud took it over and removed the first one's bridge).
                starting = claimer.isdigit() and int(claimer) != os.getpid() and _alive(int(claimer))
                if other != self.state_dir and (starting or LocalCloud(other).running()):
                    busy.append(str(other))
                    continue
                if other != self.state_dir:  # a dead one's leftovers (machines, bridge) first
                    LocalCloud(other).down()
                    machines.host_network_down(Plan(slot))
                owner.write_text(f"{self.state_dir}\n{os.getpid()}")
                return slot
            with os.fdopen(descriptor, "w") as file:
                file.write(f"{self.state_dir}\n{os.getpid()}")
            return slot
        raise LocalCloudError(f"{SLOTS} local clouds with machines run on this host already (state in "
                              f"{', '.join(busy)}): stop one (`python -m localcloud down --state-dir DIR`)")

    def _release_slot(self, slot: int) -> None:
        from localcloud import machines

        owner = machines.owner_file(slot)
        if owner.exists() and owner.read_text().strip().partition("\n")[0] == str(self.state_dir):
            owner.unlink()

    def _make_builder_vpcs(self, moto_port: int, regions: str) -> dict[str, str]:
        """In each region a VPC of the reserved range for the builds' subnets (made in moto directly)."""
        from localcloud.addresses import builder_vpc_cidr
        from localcloud.machines import Moto

        moto, made = Moto(moto_port), {}
        for region in regions.split(","):
            default = moto.query(region, "DescribeVpcs", {"Filter.1.Name": "is-default", "Filter.1.Value.1": "true"})
            cidr = builder_vpc_cidr(default.find("vpcSet/item/cidrBlock").text)
            vpc = moto.query(region, "CreateVpc", {
                "CidrBlock": cidr, "TagSpecification.1.ResourceType": "vpc",
                "TagSpecification.1.Tag.1.Key": "Name", "TagSpecification.1.Tag.1.Value": "image-factory-builders"})
            made[region] = vpc.find("vpc/vpcId").text
        return made

    def _make_sbom_bucket(self, moto_port: int, region: str) -> None:
        """The SBOMs' bucket, in the first region (made in moto directly: not a call of the builds)."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{moto_port}", region_name=region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
        s3.create_bucket(Bucket=SBOM_BUCKET, CreateBucketConfiguration={"LocationConstraint": region})

    def _machines_down(self, slot: int) -> None:
        from localcloud import machines
        from localcloud.addresses import Plan

        self._release_slot(slot)  # first: the blackhole route goes with the last slot
        machines.teardown(self.state_dir, Plan(slot))

    def down(self) -> None:
        state = self.state()
        if state:
            _terminate(state.sshd_pid, "sshd")
            _terminate(state.proxy_pid, "localcloud.proxy")
            _terminate(state.mirror_pid, "apt-cacher-ng")
            _terminate(state.moto_pid, "moto_server")
            if state.machines:
                self._machines_down(state.slot)
            self.state_file.unlink()
        shutil.rmtree(self._command_dir(), ignore_errors=True)

    def _start_mirror(self, slot: int) -> int:
        """Debian's apt-cacher-ng on the bridge's address, port 80 (localcloud/mirror.py): the machines' packages."""
        from localcloud import mirror
        from localcloud.addresses import Plan

        try:
            return mirror.start(self.state_dir, str(Plan(slot).bridge_address), slot).pid
        except mirror.MirrorError as exc:
            raise LocalCloudError(f"the package mirror of the machines cannot run: {exc}") from None

    def _start_moto(self, port: int, regions: str, slot: int) -> subprocess.Popen:
        log = self.state_dir / "moto.log"
        # moto listens on every address unless told otherwise: keep the emulator on loopback.
        process = subprocess.Popen([sys.executable, "-m", "localcloud.moto_server", "--slot", str(slot),
                                    "--regions", regions,
                                    "-H", LOOPBACK, "-p", str(port)], cwd=PROJECT,
                                   stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(port, process, log)
        urllib.request.urlopen(f"http://{LOOPBACK}:{port}/moto-api/", timeout=10).close()
        return process

    def _start_proxy(self, port: int, moto_port: int, base: Path | None, slot: int) -> subprocess.Popen:
        from localcloud.addresses import Plan

        log = self.state_dir / "proxy.log"
        process = subprocess.Popen([sys.executable, "-m", "localcloud.proxy", "--listen-port", str(port),
                                    "--upstream-port", str(moto_port), "--state-dir", str(self.state_dir),
                                    # The bridge's address too: the Celery deployment's worker hosts (their own
                                    # network namespaces) reach the cloud API there, as other machines would.
                                    *(["--machines", str(base), "--slot", str(slot), "--init", self.init,
                                       "--also-listen", str(Plan(slot).bridge_address)] if base else
                                      ["--console-host-key", str(self._shared_host_key()) + ".pub"])],
                                   cwd=PROJECT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        wait_for_port(port, process, log)
        urllib.request.urlopen(f"http://{LOOPBACK}:{port}/_localcloud/stats", timeout=10).close()
        return process

    def _command_dir(self) -> Path:
        # sshd refuses an AuthorizedKeysCommand below a directory others may write to (such as /tmp), so
        # the command lives in a root-owned directory of its own, one per local cloud.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/run/image-factory-local-cloud") / digest

    def _shared_host_key(self) -> Path:
        """The host key of the one sshd (no machines): every instance's console shows it."""
        host_key = self.state_dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        return host_key

    def _start_sshd(self, port: int, moto_port: int, regions: str) -> subprocess.Popen:
        host_key = self._shared_host_key()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        command_dir = self._command_dir()
        command_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        command = command_dir / "authorized-keys"
        script = PROJECT / "localcloud" / "authorized_keys.py"
        command.write_text("#!/bin/sh\n" + shlex.join([
            "exec", sys.executable, "-I", "-S", str(script), "--endpoint", f"http://{LOOPBACK}:{moto_port}",
            "--regions", regions]) + ' "$@"\n')
        command.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        user = getpass.getuser()
        config = self.state_dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {host_key}",
            f"PidFile {self.state_dir / 'sshd.pid'}",
            "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand {command} %u",
            f"AuthorizedKeysCommandUser {user}",
            f"AllowUsers {user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "Subsystem sftp internal-sftp",
            # This one sshd stands in for every builder instance's own: its default of 10 logins in progress
            # (then it drops new ones at random) would be one instance's limit shared by all the builds.
            "MaxStartups 200",
            "LogLevel INFO",
            "",
        ]))
        checked = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise LocalCloudError(f"sshd rejects {config}: {checked.stderr.strip()}")
        log = self.state_dir / "sshd.log"
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log.open("w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(port, process, log)
        return process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _terminate(pid: int, marker: str, timeout: float = 10) -> None:
    """End a process this local cloud started (its own session), by id, if it is still that process."""
    if pid <= 0:  # never a process group of ours (0) or everything (-1)
        return
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if marker not in command_line or not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


#: ``--latency`` names: ``boot=20,stop=5,image=30,terminate=5`` (the settings' own names are accepted too).
LATENCY_NAMES = {"boot": "instance_running", "stop": "instance_stopped", "image": "image_available",
                 "terminate": "instance_terminated"}


def parse_latency(text: str) -> dict[str, float]:
    """``boot=20,stop=5,image=30,terminate=5`` as the front's latency settings."""
    latency = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        key = LATENCY_NAMES.get(name.strip(), name.strip())
        if not sep or key not in LATENCY_NAMES.values():
            raise LocalCloudError(f"bad latency {part!r}: use {','.join(f'{n}=SECONDS' for n in LATENCY_NAMES)}")
        try:
            latency[key] = float(value)
        except ValueError:
            raise LocalCloudError(f"bad latency {part!r}: {value!r} is not a number of seconds") from None
    return latency
