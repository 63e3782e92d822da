"""The local cloud's origin root filesystem: Debian bookworm made once by mmdebstrap, cached outside the repository.

Every image the local cloud did not make itself (moto's built-in AMIs, the ones the SSM public parameters
such as ``/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`` resolve to) boots from it.
It has a login user ``ec2-user`` with passwordless sudo, as Amazon Linux has, and no SSH host keys (each
instance gets its own at boot).

The cache is built into a fresh directory beside it and renamed into place only once complete, so a
half-made cache (an interrupted build) is never used; ``.complete`` in it records how it was made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("IMAGE_FACTORY_LOCAL_CLOUD_CACHE", "/var/cache/image-factory/local-cloud"))
SUITE = "bookworm"
PACKAGES = "openssh-server,python3,sudo,iproute2"
USER = "ec2-user"
MARKER = ".complete"
SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class BaseError(Exception):
    pass


def base_dir(cache: Path | None = None) -> Path:
    return (cache or CACHE) / f"{SUITE}-base"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def debian_mirror(sources=SOURCES) -> str:
    """The Debian mirror this machine's apt uses for the suite (deb822 ``.sources`` or one-line ``.list``)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources"))
        elif source.is_file():
            files.append(source)
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    raise BaseError(f"no apt source for Debian {SUITE} in /etc/apt/sources.list*: the origin root filesystem is "
                    "made from the mirror this machine's apt uses")


def ensure_base(cache: Path | None = None, log=print) -> Path:
    """The origin root filesystem, built first if the cache has none (about 40 s, 240 MB)."""
    cache = cache or CACHE
    target = base_dir(cache)
    if is_complete(target):
        return target
    if shutil.which("mmdebstrap") is None:
        raise BaseError("mmdebstrap is missing (Debian's package mmdebstrap; `make setup` installs it): the "
                        f"origin root filesystem {target} is not built yet")
    cache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    building = cache / f".{target.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    hooks = [
        f'chroot "$1" useradd --create-home --shell /bin/bash {USER}',
        f'chroot "$1" usermod --password "*" {USER}',  # no password, but not locked: key logins work
        f'echo "{USER} ALL=(ALL) NOPASSWD:ALL" > "$1/etc/sudoers.d/90-cloud-init-users"',
        'chmod 0440 "$1/etc/sudoers.d/90-cloud-init-users"',
        'rm -f "$1"/etc/ssh/ssh_host_*',  # each instance has keys of its own
        'echo localcloud > "$1/etc/hostname"',
    ]
    command = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={PACKAGES}", "--mode=root",
               *[f"--customize-hook={hook}" for hook in hooks], SUITE, str(building), f"deb {mirror} {SUITE} main"]
    log(f"local cloud: building the origin root filesystem {target} with mmdebstrap from {mirror} "
        "(once; about a minute)")
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise BaseError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-3000:]}")
        (building / MARKER).write_text(json.dumps({
            "suite": SUITE, "packages": PACKAGES, "mirror": mirror, "user": USER,
            "seconds": round(time.monotonic() - started, 1), "made": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}) + "\n")
        if is_complete(target):  # someone else finished first
            shutil.rmtree(building, ignore_errors=True)
            return target
        if target.exists():  # a half-made or broken one: never used
            shutil.rmtree(target)
        building.rename(target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    log(f"local cloud: origin root filesystem ready in {time.monotonic() - started:.0f} s")
    return target
