"""The ``ansible`` tool, in push mode: ``ansible-playbook`` runs on the worker and reaches the builder instance
over SSH with the build's ephemeral key.

``configure.code_repo`` names the playbook source: a folder under the ansible folder (``[image_factory]
ansible_folder``, default ``include/ansible`` of this project); left out, the ansible folder itself. Absolute
paths, URLs and anything that leads outside the ansible folder (``..``, symbolic links) are refused.
``configure.server_role`` is a role of that source, ``<code_repo>/roles/<server_role>/``. A generated
playbook applies that role, and only it, to the one host of a generated inventory, ``builder``, with the
variables ``image_factory_server_role``, ``image_factory_image_name`` and ``image_factory_build_id``.

What the run needs on the worker (inventory, playbook, the private key, ansible's local temporary files)
lives in a private temporary folder (mode 0700, the key file 0600) that is deleted afterwards, whatever
happened; the key's path and content are never logged. On the instance, ansible's temporary files go to a
fresh directory that is removed after the run, so that they do not end up in the image; the worker names it
(ansible renders the inventory's ``{{ }}`` on the worker, so nothing the instance prints goes there). ssh
accepts only the host key the instance's console showed (a ``known_hosts`` file of the private folder; see
host_keys.py), or any with ``host_key_check = off``. Ansible's output is streamed into the task log as it
runs; a non-zero exit, or the configure timeout, fails the task with the tail of the output.

A role is code that partly runs on the worker (lookups, templates, ``delegate_to: localhost``): review it as
you review DAG code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

import yaml

from image_factory import host_keys, remote
from image_factory.errors import PermanentError
from image_factory.spec import ANSIBLE_SOURCE, ROLE_NAME

log = logging.getLogger("image_factory")

ANSIBLE_DIR = Path(__file__).resolve().parents[3] / "include" / "ansible"
#: Never prompt, never use other keys, ignore the worker's ssh_config (as remote.py's paramiko does), and share
#: one connection between the tasks (its socket is in the private folder; it is closed after the run).
SSH_ARGS = "-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o ControlMaster=auto -o ControlPersist=60s"
#: host_key_check off: any host key.
UNCHECKED_SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
REMOTE_TEMP_PREFIX = "/tmp/image-factory-ansible."
#: A path on the instance that may go into the inventory, where ansible renders ``{{ }}`` on the worker.
SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
TAIL_LINES = 25
#: Shown in the log instead of the private folder's path.
HIDDEN = "<private folder>"


class AnsibleError(PermanentError):
    pass


def playbook_source(code_repo: str | None, folder: Path = ANSIBLE_DIR) -> Path:
    """The folder ``code_repo`` names under ``folder`` (``folder`` itself when it is absent), resolved.

    Refuses absolute paths, URLs, ``..``, hidden names, and folders or links that lead outside ``folder``.
    """
    base = folder.resolve()
    if code_repo is None:
        source = base
    else:
        if not ANSIBLE_SOURCE.match(code_repo):
            raise AnsibleError(f"configure.code_repo {code_repo!r}: expected a folder under {folder}, written as "
                               "a relative path of names made of letters, digits, '.', '_' or '-', none "
                               "starting with '.'")
        source = (base / code_repo).resolve()
        if not source.is_relative_to(base):
            raise AnsibleError(f"configure.code_repo {code_repo!r} leads outside {folder}")
    if not source.is_dir():
        known = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise AnsibleError(f"configure.code_repo {code_repo!r}: no folder {source} "
                           f"(folders in {folder}: {', '.join(known) or 'none'})")
    for directory, subdirectories, files in os.walk(source):  # os.walk does not follow links
        for name in subdirectories + files:
            path = Path(directory, name)
            if path.is_symlink() and not path.resolve().is_relative_to(source):
                raise AnsibleError(f"{path.relative_to(source)} in {source} is a symbolic link that leads "
                                   "outside the playbook source")
    return source


def role_folder(source: Path, role: str) -> Path:
    """The role's folder, ``<source>/roles/<role>``; refuses names that lead outside it and roles without tasks."""
    if not ROLE_NAME.match(role):
        raise AnsibleError(f"configure.server_role {role!r}: expected a role name: letters, digits, '.', '_' "
                           "or '-', not starting with '.'")
    roles = source / "roles"
    folder = (roles / role).resolve()
    if not folder.is_relative_to(roles) or folder == roles:
        raise AnsibleError(f"configure.server_role {role!r} leads outside {roles}")
    if not folder.is_dir():
        known = sorted(p.name for p in roles.iterdir() if p.is_dir()) if roles.is_dir() else []
        raise AnsibleError(f"configure.server_role {role!r}: no folder {folder} "
                           f"(roles: {', '.join(known) or 'none'})")
    if not any((folder / "tasks" / name).is_file() for name in ("main.yml", "main.yaml")):
        raise AnsibleError(f"role {role!r} has no tasks/main.yml in {folder}")
    return folder


def ansible_playbook() -> str:
    """The ``ansible-playbook`` of this Python environment, else the one on the PATH."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise AnsibleError("ansible-playbook is not installed on the worker (pip install ansible-core)")
    return found


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` (it must not exist) readable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def ssh_common_args(known_hosts: Path | None) -> str:
    """ssh's host key options: only the keys of ``known_hosts`` (None: any key)."""
    if known_hosts is None:
        return UNCHECKED_SSH_ARGS
    return (f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={shlex.quote(str(known_hosts))} "
            "-o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR")


def checked_remote_path(path: str) -> str:
    """``path`` if it is one of our temporary directories on the instance (``REMOTE_TEMP_PREFIX`` then a name of
    letters, digits, '.', '_' or '-'), else AnsibleError; the refused text is shown quoted and cut, as data."""
    name = path.removeprefix(REMOTE_TEMP_PREFIX)
    if not (path.startswith(REMOTE_TEMP_PREFIX) and SAFE_PATH.fullmatch(path) and SAFE_NAME.fullmatch(name)):
        # Shown as data: quoted, cut, and without a brace that a template engine down the line could render.
        shown = repr(path[:80]).replace("{", "\\x7b").replace("}", "\\x7d")
        raise AnsibleError(f"the temporary directory on the instance, {shown}, is not a plain path "
                           f"{REMOTE_TEMP_PREFIX}<letters, digits, '.', '_' or '-'>: refused (ansible would "
                           "render it on the worker)")
    return path


def inventory(target: remote.SSHTarget, key_file: Path, remote_temp: str, python: str = "auto_silent",
              known_hosts: Path | None = None) -> dict:
    return {"all": {"hosts": {"builder": {
        "ansible_connection": "ssh",
        "ansible_host": target.host,
        "ansible_port": target.port,
        "ansible_user": target.username,
        "ansible_ssh_private_key_file": str(key_file),
        "ansible_ssh_args": SSH_ARGS,
        "ansible_ssh_common_args": ssh_common_args(known_hosts),
        "ansible_python_interpreter": python,
        "ansible_remote_tmp": checked_remote_path(remote_temp),
    }}}}


def playbook(role: str, folder: Path, build) -> list[dict]:
    """One play: the role, named by the folder that was checked (never looked up again, e.g. in collections)."""
    return [{
        "name": f"Image Factory: role {role} for {build.spec.name}",
        "hosts": "builder",
        "vars": {
            "image_factory_server_role": role,
            "image_factory_image_name": build.spec.name,
            "image_factory_build_id": build.build_id,
        },
        "roles": [{"role": str(folder)}],
    }]


def environment(private: Path, source: Path, host_key_checking: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_FORCE_COLOR"}
    # ANSIBLE_HOME moves to the private folder (below), which would hide the worker's own collections.
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.pathsep.join([
        str(source / "collections"), str(Path("~/.ansible/collections").expanduser()),
        "/usr/share/ansible/collections"]))
    env.update({
        "ANSIBLE_ROLES_PATH": str(source / "roles"),
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_HOST_KEY_CHECKING": str(host_key_checking),
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        # Nothing of the run stays on the worker: ansible's home and temporary files go to the private folder.
        "ANSIBLE_HOME": str(private / "home"),
        "ANSIBLE_LOCAL_TEMP": str(private / "local-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private / "cp"),
        "PYTHONUNBUFFERED": "1",
    })
    locale = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    if "utf-8" not in locale.lower().replace("utf8", "utf-8"):
        env["LC_ALL"] = "C.UTF-8"  # ansible refuses to run without a UTF-8 locale
    return env


def run_playbook(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                 hide: str) -> tuple[int, list[str], bool]:
    """Run ``command``, logging each line of its output as it comes (``hide`` replaced); stop it at ``timeout``.

    Returns the exit status, the output lines and whether it was stopped.
    """
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    stopped = threading.Event()

    def stop() -> None:
        # ansible-playbook leads a process group of its own (its ssh children included): end that group only.
        if process.poll() is None:
            stopped.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, stop)
    watchdog.daemon = True
    watchdog.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        # Bytes, read in bounded pieces: the output quotes what the instance printed, which is data (its control
        # characters escaped by remote.printable, a line without end cut). Ends when the pipe is closed.
        for raw in iter(lambda: process.stdout.readline(4 * remote.MAX_LINE), b""):
            line = remote.printable(raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r").replace(hide, HIDDEN))
            lines.append(line)
            if line.strip():
                log.info("%s", line)
        status = process.wait(timeout=60)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            stop()
            process.wait(timeout=60)
        process.stdout.close()
    return status, lines, stopped.is_set()


def close_connections(control_dir: Path, host: str) -> None:
    """End the shared SSH connections ansible left running (they would otherwise linger up to ControlPersist)."""
    if not control_dir.is_dir():
        return
    for socket in sorted(control_dir.iterdir()):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket}", "-O", "exit", host],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)


def run_ansible_role(hook, target: remote.SSHTarget, configure, build) -> list[str]:
    role = configure.server_role
    base = Path(build.settings.ansible_folder) if build.settings.ansible_folder else ANSIBLE_DIR
    source = playbook_source(configure.code_repo, base)
    folder = role_folder(source, role)
    executable = ansible_playbook()
    timeout = build.settings.configure_timeout
    # Ansible's temporary files on the instance: a fresh directory, removed afterwards (as the shell tool does).
    # Named here, not by the instance (its mktemp could print a template that ansible renders on the worker);
    # mkdir fails on a name that exists, so nothing planted in /tmp is reused.
    remote_temp = f"{REMOTE_TEMP_PREFIX}{secrets.token_hex(8)}"
    remote.run(hook, f"mkdir -m 700 -- {shlex.quote(remote_temp)}", timeout=60,
               what="making ansible's temporary directory on the instance")
    private = Path(tempfile.mkdtemp(prefix="image-factory-ansible-")).resolve()  # mode 0700
    try:
        key_file = private / "key"
        _write_private(key_file, target.private_key if target.private_key.endswith("\n")
                       else target.private_key + "\n")
        known_hosts = private / "known_hosts" if target.host_keys else None
        if known_hosts:
            _write_private(known_hosts, host_keys.known_hosts_text(target.host, target.port, target.host_keys))
        inventory_file = private / "inventory.yml"
        _write_private(inventory_file, yaml.safe_dump(inventory(target, key_file, remote_temp,
                                                                build.settings.ansible_python_interpreter,
                                                                known_hosts)))
        playbook_file = private / "playbook.yml"
        _write_private(playbook_file, yaml.safe_dump(playbook(role, folder, build), sort_keys=False))
        log.info("configure: ansible-playbook applies role %r of %s to %s@%s:%d", role, source,
                 target.username, target.host, target.port)
        status, lines, stopped = run_playbook([executable, "-i", str(inventory_file), str(playbook_file)],
                                              cwd=private, env=environment(private, source, bool(known_hosts)),
                                              timeout=timeout, hide=str(private))
    finally:
        close_connections(private / "cp", target.host)
        shutil.rmtree(private, ignore_errors=True)
        remote.run(hook, f"rm -rf -- {shlex.quote(remote_temp)}", timeout=60)
    if status != 0 or stopped:
        what = (f"ansible-playbook (role {role!r}, stopped at the {timeout:.0f} s configure timeout)" if stopped
                else f"ansible-playbook (role {role!r})")
        raise remote.RemoteCommandError(what, status, list(deque((line for line in lines if line.strip()),
                                                                 maxlen=TAIL_LINES)))
    return lines
