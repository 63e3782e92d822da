"""SSH to the builder instance, through the SSH provider's hook (paramiko underneath).

The key is the build's ephemeral key, handed to the hook in memory: it is never written to disk, logged or
put in a connection. The instance is new for every build, so its host key cannot be known in advance: it is
the one the instance's console shows (host_keys.py), and a login to any other is refused. With
``[image_factory] host_key_check = off`` any host key is taken; SSH is only let in from the provisioner's CIDR.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.host_keys import HostKeyError, fingerprint, pinned

log = logging.getLogger("image_factory")

#: Characters of an output line that are kept (an instance could print one line without end); the rest is cut.
MAX_LINE = 8192


def printable(text: str, keep: str = "\t", limit: int | None = MAX_LINE) -> str:
    """``text`` as data for the log: each character that is not printable (except those of ``keep``) written as
    its escape (``\\x1b``, ``\\u2028``), so that what an instance prints cannot move or colour the log viewer,
    or start a line that looks like the log's own; cut after ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c in keep else ascii(c)[1:-1] for c in text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]} [... {len(text) - limit} characters cut]"
    return text


class _AsData(logging.Filter):
    """paramiko's transport logs what the server sent before the login (its version string, in an error's
    traceback too): written into the record as data, like any output of an instance."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg, record.args = printable(message), None
        return True


logging.getLogger("paramiko.transport").addFilter(_AsData())


class RemoteCommandError(PermanentError):
    def __init__(self, what: str, status: int, tail: list[str]):
        self.status = status
        self.tail = tail
        shown = "\n".join(f"  | {line}" for line in tail)
        super().__init__(f"{what} exited with status {status}; last {len(tail)} lines of its output:\n{shown}")


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom a build logs in to its builder instance (for tools that open SSH themselves, such as
    ansible). The key is kept out of ``repr()``, so that it never shows in a log or a traceback."""

    host: str
    port: int
    username: str
    private_key: str = field(repr=False)
    #: The instance's host keys (``type base64``) from its console; empty: not checked (host_key_check off).
    host_keys: tuple[str, ...] = ()


def connect(host: str, port: int, username: str, private_key: str, *, timeout: float = 10,
            host_keys: Sequence[str] = ()):
    """An SSHHook with an open connection (``hook.get_conn()`` returns it), to the server whose host key is
    the first of ``host_keys`` (none: any host key)."""
    import paramiko
    from airflow.providers.ssh.hooks.ssh import SSHHook

    hook = SSHHook(remote_host=host, port=port, username=username, conn_timeout=int(timeout),
                   conn_retry_attempts=1, banner_timeout=timeout, no_host_key_check=False)
    hook.pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key))
    hook.look_for_keys = False  # use the build's key, never whatever keys the worker has lying around
    if host_keys:
        hook.host_key = pinned(host_keys)  # any other key: paramiko's RejectPolicy refuses the server
    else:
        hook.allow_host_key_change = True  # host_key_check off: the hook warns that nothing is verified
    try:
        hook.get_conn()
    except paramiko.BadHostKeyException as exc:
        expected = _line(exc.expected_key)
        if exc.expected_key != hook.host_key:
            # Not the key pinned here: the hook also loads the worker's known_hosts, and paramiko trusts it first.
            name = host if port == 22 else f"[{host}]:{port}"
            raise HostKeyError(f"SSH to {host}:{port} refused: ~/.ssh/known_hosts of this worker holds another "
                               f"host key for {name} ({fingerprint(expected)}), from an earlier server at that "
                               f"address; remove it (ssh-keygen -R '{name}'): builds check the key the "
                               "instance's console shows") from None
        raise HostKeyError(f"SSH to {host}:{port} refused: the server's host key "
                           f"{fingerprint(_line(exc.key))} is not the one the instance's console shows "
                           f"({fingerprint(expected)}); something else answers at that address") from None
    return hook


def _line(key) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def wait_until_ready(host: str, port: int, username: str, private_key: str, *, timeout: float,
                     interval: float, defer: Callable[[], None] | None = None, stage: str = "ssh",
                     host_keys: Sequence[str] = ()):
    """Poll until SSH accepts the build's key (from the server with ``host_keys``); returns the connected hook.

    ``defer``, when given, is called if the first attempt fails: it hands the wait to the triggerer (raises).
    """
    checkpoint(f"before:{stage}")
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            hook = connect(host, port, username, private_key, host_keys=host_keys)
            break  # logged in: the role's first command is the next thing to run
        except HostKeyError:
            raise  # another server at the address: waiting will not make it the instance
        except Exception as exc:
            reason = printable(f"{type(exc).__name__}: {exc}", limit=500)  # may quote what the server sent
        if defer is not None:
            log.info("SSH not ready yet (%s)", reason)
            defer()
        waited = time.monotonic() - started
        if waited >= timeout:
            raise TimeoutError(f"SSH to {username}@{host}:{port} did not answer within {timeout:.0f} s "
                               f"({attempt} attempts; last: {reason})")
        log.info("SSH not ready yet (attempt %d, %s); retrying in %.0f s", attempt, reason, interval)
        time.sleep(interval)
    log.info("SSH to %s@%s:%d answers (attempt %d, waited %.1f s)", username, host, port, attempt,
             time.monotonic() - started)
    checkpoint(f"after:{stage}")
    return hook


def private_directory(sftp, prefix: str) -> str:
    """A fresh directory only the build's user can enter, made as ``mktemp -d`` would (mkdir fails on any
    existing name, so nothing planted in /tmp is reused), but through the SFTP session: no extra command."""
    for _ in range(5):
        path = f"{prefix}{secrets.token_hex(4)}"
        try:
            sftp.mkdir(path, mode=0o700)
            return path
        except OSError as exc:
            refused = exc  # taken (or not allowed): draw another name
    raise RemoteCommandError(f"making a directory {prefix}* on the instance over SFTP ({refused})", -1, [])


def run(hook, command: str, *, timeout: float, what: str = "remote command", tail_lines: int = 25) -> list[str]:
    """Run ``command`` remotely, each line of its output into the log as it comes; returns the lines, or raises
    with their tail when it fails or is still running after ``timeout`` seconds.

    Read here rather than by the hook's ``exec_ssh_client_command``: that one leaves out of the log whatever
    output came before it looked (all of a quick command's) and splits a line that comes in two pieces.
    The lines are data from a machine that is not trusted: control characters escaped, long lines cut
    (:func:`printable`).
    """
    log.info("running on the instance: %s", command)
    lines: list[str] = []

    def add(raw: bytes) -> None:
        lines.append(printable(raw.decode("utf-8", "replace").rstrip("\r")))
        log.info("%s", lines[-1])

    channel = hook.get_conn().get_transport().open_session(timeout=min(timeout, 60))
    try:
        # One stream, so that the tail shows errors where they happened among the ordinary output.
        channel.exec_command(f"( {command} ) 2>&1")
        channel.shutdown_write()  # no input: a command that reads it sees its end at once
        deadline = time.monotonic() + timeout
        pending = b""
        while True:
            channel.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = channel.recv(65536)
            except TimeoutError:
                raise RemoteCommandError(f"{what} (still running after {timeout:.0f} s: given up)", -1,
                                         list(deque(lines, maxlen=tail_lines))) from None
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                add(raw)
            if len(pending) > 4 * MAX_LINE:  # a line without end: what came so far is a line of its own
                add(pending)
                pending = b""
        if pending:
            add(pending)  # a last line without its newline
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status != 0:
        raise RemoteCommandError(what, status, list(deque(lines, maxlen=tail_lines)))
    return lines
