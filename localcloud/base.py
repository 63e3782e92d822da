"""The local cloud's origin root filesystem: Debian bookworm made once by mmdebstrap, cached outside the repository.

Every image the local cloud did not make itself (moto's built-in AMIs, the ones the SSM public parameters
such as ``/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`` resolve to) boots from it.
It is a cloud image: systemd is its init (``systemd-sysv``) and Debian's ``cloud-init`` reads a NoCloud seed
on its own disk (``datasource_list: [ NoCloud ]`` and nothing else: no network datasource, no network
configuration), with ``ec2-user`` (passwordless sudo, as Amazon Linux has) as cloud-init's default user. It
has no SSH host keys: cloud-init makes them at each new instance's first boot and prints them on the console.
apt's sources are the Debian ones this machine's apt uses; packages come through the local cloud's caching
mirror on its bridge (an HTTP proxy setting the local cloud writes at every boot: localcloud/mirror.py).

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
PACKAGES = "openssh-server,python3,sudo,iproute2,systemd-sysv,dbus,cloud-init,procps"
#: the cache directory's name: a new one whenever what the base holds changes (the older stays for the code
#: that uses it)
NAME = f"{SUITE}-cloud-base"
USER = "ec2-user"
MARKER = ".complete"
SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class BaseError(Exception):
    pass


def base_dir(cache: Path | None = None) -> Path:
    return (cache or CACHE) / NAME


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def debian_mirror(sources=SOURCES) -> str:
    """The Debian mirror this machine's apt uses for the suite itself (the first of :func:`debian_sources`)."""
    for uri, suite, _ in debian_sources(sources):
        if suite == SUITE:
            return uri
    raise BaseError(f"no apt source for Debian {SUITE} in /etc/apt/sources.list*: the origin root filesystem is "
                    "made from the mirror this machine's apt uses")


def debian_sources(sources=SOURCES) -> list[tuple[str, str, str]]:
    """Every ``(URI, suite, components)`` of this machine's apt for Debian's ``bookworm*`` suites (deb822 or
    one-line): the origin's apt sources, and the only backends the local cloud's mirror fetches from."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources"))
        elif source.is_file():
            files.append(source)
    found: list[tuple[str, str, str]] = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" not in fields.get("Types", "").split():
                    continue
                for uri in fields.get("URIs", "").split():
                    for suite in fields.get("Suites", "").split():
                        found.append((uri.rstrip("/"), suite, fields.get("Components", "main")))
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    found.append((parts[1].rstrip("/"), parts[2], " ".join(parts[3:]) or "main"))
    found = [entry for entry in found if entry[1].startswith(SUITE) and entry[0].startswith("http://")]
    if not found:
        raise BaseError(f"no http apt source for Debian {SUITE} in /etc/apt/sources.list*: the origin root "
                        "filesystem and the local cloud's package mirror use the mirror this machine's apt uses")
    return list(dict.fromkeys(found))


#: cloud-init as on a cloud image, with the local cloud's datasource only (the NoCloud seed the local cloud
#: writes on the machine's disk at every boot). No network datasource (never EC2's metadata address), no
#: network configuration (the local cloud gives the machine its address), apt's sources kept as they are.
CLOUD_CFG = f"""\
# The local cloud (localcloud/base.py): a NoCloud seed on the machine's own disk, nothing else.
datasource_list: [ NoCloud ]
network:
  config: disabled
manage_etc_hosts: false
preserve_hostname: true
apt:
  preserve_sources_list: true
growpart:
  mode: "off"
resize_rootfs: false
disable_root: true
ssh_deletekeys: true
ssh_genkeytypes: [ed25519, ecdsa, rsa]
system_info:
  default_user:
    name: {USER}
    lock_passwd: true
    gecos: EC2 Default User
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
cloud_init_modules:
  - seed_random
  - bootcmd
  - write_files
  - users_groups
  - ssh
cloud_config_modules:
  - apt_configure
  - timezone
  - runcmd
cloud_final_modules:
  - package_update_upgrade_install
  - write_files_deferred
  - scripts_vendor
  - scripts_per_once
  - scripts_per_boot
  - scripts_per_instance
  - scripts_user
  - ssh_authkey_fingerprints
  - keys_to_console
  - final_message
"""

#: Each boot's sshd takes many logins at once (builds and their tests); keys only, as cloud-init's ssh_pwauth
#: would set, but here from the start: cloud-init then never restarts sshd in the middle of a boot (a login
#: that comes then is refused). The rest is Debian's default.
SSHD_DROP_IN = "MaxStartups 100\nUseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"


def _hook_script(sources: list[tuple[str, str, str]]) -> str:
    import shlex

    lines = "".join(f"deb {uri} {suite} {components}\n" for uri, suite, components in sources)
    return "\n".join([
        "set -eu", 'R="$1"',
        f"chroot \"$R\" useradd --create-home --shell /bin/bash {USER}",
        f"chroot \"$R\" usermod --password '*' {USER}",  # no password, but not locked: key logins work
        f"echo '{USER} ALL=(ALL) NOPASSWD:ALL' > \"$R/etc/sudoers.d/90-cloud-init-users\"",
        'chmod 0440 "$R/etc/sudoers.d/90-cloud-init-users"',
        'rm -f "$R"/etc/ssh/ssh_host_*',  # each instance has keys of its own (cloud-init makes them)
        'echo localcloud > "$R/etc/hostname"',
        ': > "$R/etc/machine-id"',  # each machine its own (systemd-nspawn gives one); no first-boot presets
        # Debian's cloud-init package lists every datasource: NoCloud alone here.
        "printf '# The local cloud: NoCloud only (localcloud/base.py)\\ndatasource_list: [ NoCloud ]\\n' "
        '> "$R/etc/cloud/cloud.cfg.d/90_dpkg.cfg"',
        f"printf '%s' {shlex.quote(CLOUD_CFG)} > \"$R/etc/cloud/cloud.cfg.d/99_localcloud.cfg\"",
        f"printf '%s' {shlex.quote(SSHD_DROP_IN)} > \"$R/etc/ssh/sshd_config.d/50-localcloud.conf\"",
        f"printf '%s' {shlex.quote(lines)} > \"$R/etc/apt/sources.list\"",
        # Written again at every boot with the machine's own bridge (localcloud/mirror.py).
        "printf 'Acquire::http::Proxy \"http://198.18.0.1/\";\\n' > \"$R/etc/apt/apt.conf.d/01localcloud-mirror\"",
        'rm -rf "$R"/var/lib/cloud/*',
        # No name server: a machine reaches its bridge and the other machines only (apt goes through the proxy).
        "printf '# the local cloud: no name server (apt reaches Debian through the mirror on the bridge)\\n' "
        '> "$R/etc/resolv.conf"',
        # apt's daily timers would hold apt's lock while a role installs its packages: off (a role may enable them).
        'for timer in apt-daily.timer apt-daily-upgrade.timer; do ln -sf /dev/null "$R/etc/systemd/system/$timer"; '
        'done',
        "",
    ])


def ensure_base(cache: Path | None = None, log=print) -> Path:
    """The origin root filesystem, built first if the cache has none (a minute or two, about 330 MB)."""
    cache = cache or CACHE
    target = base_dir(cache)
    if is_complete(target):
        return target
    if shutil.which("mmdebstrap") is None:
        raise BaseError("mmdebstrap is missing (Debian's package mmdebstrap; `make setup` installs it): the "
                        f"origin root filesystem {target} is not built yet")
    cache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    sources = debian_sources()
    building = cache / f".{target.name}.building-{os.getpid()}"
    hook = cache / f".{target.name}.hook-{os.getpid()}.sh"
    shutil.rmtree(building, ignore_errors=True)
    hook.write_text(_hook_script(sources))
    command = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={PACKAGES}", "--mode=root",
               f'--customize-hook=sh {hook} "$1"', SUITE, str(building), f"deb {mirror} {SUITE} main"]
    log(f"local cloud: building the origin root filesystem {target} with mmdebstrap from {mirror} "
        "(once; a minute or two)")
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise BaseError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-3000:]}")
        (building / MARKER).write_text(json.dumps({
            "suite": SUITE, "packages": PACKAGES, "mirror": mirror, "user": USER,
            "sources": [" ".join(source) for source in sources],
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
    finally:
        hook.unlink(missing_ok=True)
    log(f"local cloud: origin root filesystem ready in {time.monotonic() - started:.0f} s")
    return target
