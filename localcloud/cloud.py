"""Start, stop and describe the local cloud. ``python -m localcloud up|down|status|env``."""

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
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = PROJECT / ".local-cloud"
DEFAULT_REGIONS = "eu-west-1,us-east-1,us-west-2,eu-central-1"
SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"


class LocalCloudError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
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
    ec2_port: int
    ssh_port: int
    moto_pid: int
    sshd_pid: int
    user: str
    regions: str


class LocalCloud:
    def __init__(self, state_dir: Path = DEFAULT_STATE):
        self.state_dir = state_dir.resolve()
        self.state_file = self.state_dir / "state.json"

    # --- state ------------------------------------------------------------------------------------

    def state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def running(self) -> bool:
        state = self.state()
        return bool(state) and all(_alive(pid) for pid in (state.moto_pid, state.sshd_pid))

    @property
    def endpoint(self) -> str:
        state = self._require()
        return f"http://{LOOPBACK}:{state.ec2_port}"

    def env(self) -> dict[str, str]:
        """The settings that point Airflow (and any AWS client) at this local cloud."""
        state = self._require()
        connection = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": self.endpoint, "region_name": state.regions.split(",")[0]},
        }
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AIRFLOW__IMAGE_FACTORY__SSH_HOST": LOOPBACK,
            "AIRFLOW__IMAGE_FACTORY__SSH_PORT": str(state.ssh_port),
            "AIRFLOW__IMAGE_FACTORY__SSH_USERNAME": state.user,
            "AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR": f"{LOOPBACK}/32",
            "AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL": "1",
        }

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
        if not Path(SSHD).exists():
            raise LocalCloudError(f"{SSHD} is missing: install Debian's openssh-server (make setup does)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ec2_port = ec2_port or free_port()
        ssh_port = ssh_port or free_port()
        moto = self._start_moto(ec2_port)
        try:
            sshd = self._start_sshd(ssh_port, ec2_port, regions)
        except BaseException:
            _terminate(moto.pid, "moto.server")
            raise
        state = State(ec2_port, ssh_port, moto.pid, sshd.pid, getpass.getuser(), regions)
        self.state_file.write_text(json.dumps(asdict(state)))
        return state

    def down(self) -> None:
        state = self.state()
        if state:
            _terminate(state.sshd_pid, "sshd")
            _terminate(state.moto_pid, "moto.server")
            self.state_file.unlink()
        shutil.rmtree(self._command_dir(), ignore_errors=True)

    def _start_moto(self, port: int) -> subprocess.Popen:
        log = self.state_dir / "moto.log"
        # moto binds 0.0.0.0 unless told otherwise: keep the emulator on loopback.
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                                   stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(port, process, log)
        urllib.request.urlopen(f"http://{LOOPBACK}:{port}/moto-api/", timeout=10).close()
        return process

    def _command_dir(self) -> Path:
        # sshd refuses an AuthorizedKeysCommand below a directory others may write to (such as /tmp), so
        # the command lives in a root-owned directory of its own, one per local cloud.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/run/image-factory-local-cloud") / digest

    def _start_sshd(self, port: int, ec2_port: int, regions: str) -> subprocess.Popen:
        host_key = self.state_dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        command_dir = self._command_dir()
        command_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        command = command_dir / "authorized-keys"
        script = PROJECT / "localcloud" / "authorized_keys.py"
        command.write_text("#!/bin/sh\n" + shlex.join([
            "exec", sys.executable, str(script), "--endpoint", f"http://{LOOPBACK}:{ec2_port}",
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
            "LogLevel INFO",
            "",
        ]))
        checked = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise LocalCloudError(f"sshd rejects {config}: {checked.stderr.strip()}")
        log = self.state_dir / "sshd.log"
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log.open("w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(port, process, log)
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
