"""The SSH host keys of an instance, as it prints them on its console, so that SSH to it can be checked.

An instance is new for every build, so no ``known_hosts`` file can hold its host key in advance. AWS's way to
verify it is the instance's console output (``GetConsoleOutput``): at first boot cloud-init writes the host
keys it made between ``-----BEGIN SSH HOST KEY KEYS-----`` and ``-----END SSH HOST KEY KEYS-----``. The console is
written by the hypervisor, not over the network, so a machine in the middle of the SSH connection cannot
change it. Public keys only: nothing here is a secret.

``[image_factory] host_key_check``: ``console`` (the default) logs in only to the host key the console shows;
``off`` accepts any host key (for origin images without cloud-init, whose console shows none).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from image_factory.errors import PermanentError

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
#: The key types SSH clients take, the preferred first (every OpenSSH since 6.5 has an Ed25519 key).
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
#: A key's base64 longer than this is not an SSH host key (a 16384-bit RSA key's is under 3,000 characters).
MAX_KEY_CHARS = 4096
CHECKS = ("console", "off")
#: How EC2 may refuse ``Latest`` (instances not on the Nitro system): then the buffered output is read.
LATEST_UNSUPPORTED = ("UnsupportedOperation", "InvalidParameterValue", "InvalidParameterCombination")
ACCESS_DENIED = ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException")


class HostKeyError(PermanentError):
    pass


def parse(console: str) -> list[str]:
    """The host keys (``type base64``, preferred type first) of the console's last key block; [] if none.

    The console is the instance's own output: only lines that are a key of a known type, as its own data says,
    and of a key's size count, and the first key of each type (what else the line holds is left out)."""
    start = console.rfind(BEGIN)
    end = console.find(END, start)
    if start < 0 or end < 0:
        return []
    keys: dict[str, str] = {}
    for line in console[start + len(BEGIN):end].splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in KEY_TYPES and fields[0] not in keys and _is_key(*fields[:2]):
            keys[fields[0]] = f"{fields[0]} {fields[1]}"
    return [keys[kind] for kind in KEY_TYPES if kind in keys]


def from_console(ec2, instance_id: str) -> list[str]:
    """The host keys on the instance's console now ([] while its first boot has not printed them yet)."""
    from botocore.exceptions import ClientError

    from image_factory.aws import error_code

    try:
        try:  # the latest output (instances on the Nitro system); others answer with what was buffered
            answer = ec2.get_console_output(InstanceId=instance_id, Latest=True)
        except ClientError as exc:
            if error_code(exc) not in LATEST_UNSUPPORTED:
                raise
            answer = ec2.get_console_output(InstanceId=instance_id)
    except ClientError as exc:
        if error_code(exc) in ACCESS_DENIED:
            raise HostKeyError(f"reading the console of instance {instance_id}, to check its SSH host key, was "
                               f"refused ({error_code(exc)}): grant ec2:GetConsoleOutput (include/iam/image-factory-"
                               "policy.json does), or set [image_factory] host_key_check = off") from None
        raise
    return parse(answer.get("Output") or "")


def pinned(keys: Sequence[str]):
    """The paramiko key SSH must meet: the preferred one of ``keys``."""
    import paramiko

    kind, data = keys[0].split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def fingerprint(key: str) -> str:
    """``ssh-ed25519 SHA256:...``, as ``ssh-keygen -l`` writes it."""
    kind, data = key.split()[:2]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(data)).digest()).decode().rstrip("=")
    return f"{kind} SHA256:{digest}"


def known_hosts_text(host: str, port: int, keys: Sequence[str]) -> str:
    """The ``known_hosts`` lines for ``keys`` of ``host:port`` (OpenSSH's ``[host]:port`` form off port 22)."""
    name = host if port == 22 else f"[{host}]:{port}"
    return "".join(f"{name} {key}\n" for key in keys)


def _is_key(kind: str, text: str) -> bool:
    """Whether ``text`` is base64 of no more than a key's size, of SSH's key format (a key of type ``kind``)."""
    if len(text) > MAX_KEY_CHARS:
        return False
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        return False
    # SSH's public key format: the type's name (a 4-byte length, then the name), then the key's numbers.
    name = kind.encode()
    return data[:4 + len(name)] == len(name).to_bytes(4, "big") + name
