"""The local cloud's package mirror: Debian's apt-cacher-ng on the bridge, a caching proxy of Debian's registry.

The machines have no route out of 198.18.0.0/15; the one outside service they reach is Debian's package
registry, through this mirror on their bridge's address, port 80 (a port a security group must let out, as
any HTTP mirror would need). It fetches only from the Debian URIs this host's apt uses
(/etc/apt/sources.list.d/*: ``http://deb.debian.org/debian`` and ``.../debian-security``): each is a remapped
backend and ``ForceManaged`` refuses every other URL (and ``CONNECT``). The machines' apt (localcloud/base.py)
keeps those same sources and reaches them with ``Acquire::http::Proxy "http://<bridge>/"``, written at every
boot (the bridge's address is the slot's).

It runs as a process of the local cloud (in the foreground, in a session of its own, a configuration
directory of its own in the state directory; never through the host's init) and its cache stays across runs
in ``/var/cache/image-factory/apt-cacher-ng/slot-<slot>`` (one per slot: two local clouds never share a
cache directory), so a package is fetched from Debian once, not once per build.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from localcloud.base import CACHE, debian_sources

BINARY = "apt-cacher-ng"
PORT = 80
CACHE_ROOT = CACHE.parent / "apt-cacher-ng"


class MirrorError(Exception):
    pass


def binary() -> str | None:
    return shutil.which(BINARY) or next((p for p in ("/usr/sbin/apt-cacher-ng",) if os.access(p, os.X_OK)), None)


def proxy_url(bridge_address: str) -> str:
    return f"http://{bridge_address}:{PORT}/"


def apt_config(bridge_address: str) -> str:
    """The machines' apt setting that sends their Debian downloads through the mirror."""
    return f'Acquire::http::Proxy "{proxy_url(bridge_address)}";\n'


def config(bridge_address: str, cache_dir: Path, log_dir: Path, run_dir: Path) -> str:
    remaps = []
    for n, uri in enumerate(dict.fromkeys(uri for uri, _, _ in debian_sources())):
        host_path = uri.split("://", 1)[1].rstrip("/")
        path = "/" + host_path.split("/", 1)[1] if "/" in host_path else ""
        # Clients ask either for the registry's own URL through the proxy (host/path) or for the mirror's
        # path (http://<bridge>/debian); both go to that backend only.
        remaps.append(f"Remap-lc{n}: {host_path}{f' {path}' if path else ''} ; {uri}/")
    return "\n".join([
        "# The local cloud's package mirror (localcloud/mirror.py): Debian's registry only.",
        f"CacheDir: {cache_dir}",
        f"LogDir: {log_dir}",
        "SupportDir: /usr/lib/apt-cacher-ng",
        f"Port: {PORT}",
        f"BindAddress: {bridge_address}",
        f"SocketPath: {run_dir / 'socket'}",
        f"PidFile: {run_dir / 'pid'}",
        "ForeGround: 1",
        *remaps,
        # Only the remapped backends above: any other URL is refused, and so is CONNECT.
        "ForceManaged: 1",
        "PassThroughPattern: ^localcloud-never-matches$",
        "RedirMax: 0",
        "ReportPage: ",
        "ExThreshold: 4",
        "FollowIndexFileRemoval: 1",
        "",
    ])


def start(state_dir: Path, bridge_address: str, slot: int, timeout: float = 20) -> subprocess.Popen:
    """apt-cacher-ng on ``bridge_address``:80, answering; a :class:`MirrorError` that says why if it cannot."""
    program = binary()
    if program is None:
        raise MirrorError("apt-cacher-ng is missing (Debian's package apt-cacher-ng; `make setup` installs it): "
                          "the machines get Debian's packages through it, on their bridge")
    folder = state_dir / "apt-cacher-ng"
    conf_dir, log_dir, run_dir = folder / "conf", folder / "log", folder / "run"
    for path in (conf_dir, log_dir, run_dir):
        path.mkdir(parents=True, exist_ok=True)
    cache_dir = CACHE_ROOT / f"slot-{slot}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "acng.conf").write_text(config(bridge_address, cache_dir, log_dir, run_dir))
    log = folder / "apt-cacher-ng.out"
    process = subprocess.Popen([program, "-c", str(conf_dir), "ForeGround=1"], stdin=subprocess.DEVNULL,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                               cwd=folder)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise MirrorError(f"apt-cacher-ng exited ({process.returncode}) at start: "
                              f"{log.read_text(errors='replace')[-1500:]} (see {log} and {log_dir})")
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((bridge_address, PORT)) == 0:
                return process
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise MirrorError(f"apt-cacher-ng does not answer on {bridge_address}:{PORT} after {timeout} s; see "
                              f"{log} and {log_dir}")
        time.sleep(0.1)
