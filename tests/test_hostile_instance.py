"""A hostile instance cannot reach the worker (issue 27): whatever a builder or test instance prints is data.

An origin image is not trusted: its programs may print anything. Here a machine of the local cloud is made
hostile (a ``mktemp`` earlier on the PATH that prints an ansible template) and the ansible tool is run against
it: nothing the instance prints may be rendered on the worker. What it prints reaches the task log as data:
no terminal control characters (which would move or colour the log viewer, or start a line that looks like
the log's own), and no line without end.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import socket
import sys
import threading

import pytest

from image_factory import remote
from image_factory.settings import Settings
from image_factory.spec import parse_spec
from image_factory.steps.infrastructure import _new_key
from image_factory.tools import ansible
from tests.test_ansible import FakeBuild, configure_text, make_role

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local cloud's machines need root")


def template_that_touches(marker) -> str:
    """An ansible template that creates ``marker`` on whatever renders it; no '/' in it (the old check
    refused a '/' after the prefix), so the path is spelled with '|' and turned back with '%c' % 47."""
    spelled = str(marker).replace("/", "|")
    return f"{{{{ lookup('pipe', 'touch ' ~ '{spelled}'.replace('|', '%c' % 47)) }}}}"


@pytest.fixture
def hostile(machine, tmp_path):
    """The machine with a ``mktemp`` of its own in /usr/local/bin (before /usr/bin on an SSH session's PATH),
    which prints an ansible template that would create a marker on the worker; removed afterwards."""
    _, address, private_key = machine
    marker = tmp_path / "pwned"
    answer = ansible.REMOTE_TEMP_PREFIX + template_that_touches(marker)
    script = f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(answer)}\n"
    hook = remote.connect(address, 22, "ec2-user", private_key)
    try:
        remote.run(hook, f"printf %s {shlex.quote(script)} | sudo -n tee /usr/local/bin/mktemp >/dev/null && "
                         "sudo -n chmod 0755 /usr/local/bin/mktemp", timeout=30)
        assert remote.run(hook, "mktemp -d /tmp/anything.XXXXXXXX", timeout=30) == [answer]  # it is hostile
        yield hook, remote.SSHTarget(address, 22, "ec2-user", private_key), marker
    finally:
        remote.run(hook, "sudo -n rm -f /usr/local/bin/mktemp; rm -rf /tmp/image-factory-ansible.*", timeout=30)
        hook.get_conn().close()


def apply_role(hook, target, folder, tasks: str = "- ansible.builtin.debug: {msg: hello}\n"):
    """The ansible tool applies a role of ``tasks`` to the machine: (its output lines, the error it raised)."""
    make_role(folder / "ansible" / "site", "web", tasks)
    build = FakeBuild(folder / "ansible")
    build.settings = Settings(ansible_folder=str(folder / "ansible"), configure_timeout=120,
                              ansible_python_interpreter="/usr/bin/python3")
    configure = parse_spec(configure_text(tool="ansible", code_repo="site", server_role="web")).configure
    try:
        return ansible.run_ansible_role(hook, target, configure, build), None
    except Exception as exc:  # the caller checks its marker first, whatever happened
        return [], exc


def test_a_hostile_mktemp_on_the_instance_runs_nothing_on_the_worker(hostile, tmp_path):
    hook, target, marker = hostile
    lines, failure = apply_role(hook, target, tmp_path)
    assert not marker.exists(), "the instance's output was rendered as a template on the worker"
    assert failure is None, failure
    assert any("failed=0" in line for line in lines)  # the role was applied, the hostile mktemp unused
    # Ansible's directory on the instance was made by the worker's name and removed after the run.
    assert remote.run(hook, "ls -d /tmp/image-factory-ansible.* 2>/dev/null || true", timeout=30) == []


def test_facts_a_hostile_instance_reports_are_not_rendered_on_the_worker(machine, tmp_path):
    """What ansible itself reads from the instance (facts; here a local fact, /etc/ansible/facts.d) is marked
    untrusted by ansible-core: a role that shows it shows the text, the template in it is not run."""
    _, address, private_key = machine
    marker = tmp_path / "pwned"
    fact = json.dumps({"motto": template_that_touches(marker)})
    hook = remote.connect(address, 22, "ec2-user", private_key)
    try:
        remote.run(hook, f"sudo -n mkdir -p /etc/ansible/facts.d && printf %s {shlex.quote(fact)} | "
                         "sudo -n tee /etc/ansible/facts.d/hostile.fact >/dev/null", timeout=30)
        lines, failure = apply_role(hook, remote.SSHTarget(address, 22, "ec2-user", private_key), tmp_path,
                                    "- ansible.builtin.debug: {msg: 'motto: {{ ansible_local.hostile.motto }}'}\n")
    finally:
        remote.run(hook, "sudo -n rm -rf /etc/ansible", timeout=30)
        hook.get_conn().close()
    assert not marker.exists(), "a fact of the instance's was rendered as a template on the worker"
    assert failure is None, failure
    assert any("motto: {{ lookup('pipe'" in line for line in lines)


@pytest.mark.parametrize("path", [
    ansible.REMOTE_TEMP_PREFIX + "{{ lookup('pipe', 'id') }}",
    ansible.REMOTE_TEMP_PREFIX + "{% raw %}x",
    ansible.REMOTE_TEMP_PREFIX + "ab\ncd",
    ansible.REMOTE_TEMP_PREFIX + "ab/../../etc",
    ansible.REMOTE_TEMP_PREFIX + "\x1b[31mred",
    ansible.REMOTE_TEMP_PREFIX + "٣",  # a digit, but not one of [0-9]
    ansible.REMOTE_TEMP_PREFIX,
    "/etc/" + "a" * 500,
])
def test_a_remote_path_that_is_not_plain_never_reaches_the_inventory(path, tmp_path):
    target = remote.SSHTarget("198.18.0.9", 22, "ec2-user", "k")
    with pytest.raises(ansible.AnsibleError) as refused:
        ansible.inventory(target, tmp_path / "key", path)
    message = str(refused.value)
    assert "{" not in message and "}" not in message and "\n" not in message and "\x1b" not in message
    assert len(message) < 300  # the refused text is cut
    assert list(tmp_path.iterdir()) == []  # nothing made on the worker


def test_a_plain_remote_path_goes_into_the_inventory_as_it_is(tmp_path):
    path = ansible.REMOTE_TEMP_PREFIX + "0123abcd.x_y-z"
    target = remote.SSHTarget("198.18.0.9", 22, "ec2-user", "k")
    assert ansible.inventory(target, tmp_path / "key", path)["all"]["hosts"]["builder"]["ansible_remote_tmp"] == path


# What an instance prints, in the task log


@pytest.fixture(scope="module")
def hook(machine):
    _, address, private_key = machine
    hook = remote.connect(address, 22, "ec2-user", private_key)
    yield hook
    hook.get_conn().close()


def printing(data: bytes) -> str:
    """A command that prints ``data`` exactly."""
    return f"echo {base64.b64encode(data).decode()} | base64 -d"


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "image_factory"]


def test_control_characters_an_instance_prints_are_logged_escaped(hook, caplog):
    caplog.set_level(logging.INFO, logger="image_factory")
    hostile = ("tab\tstays \x1b[2J\x1b[31mred\rINFO forged line\x00nul\x7fdel\u2028sep\u202eevil\x85 é\r\n"
               "second\n").encode()
    lines = remote.run(hook, printing(hostile), timeout=30)
    assert lines == ["tab\tstays \\x1b[2J\\x1b[31mred\\rINFO forged line\\x00nul\\x7fdel\\u2028sep\\u202eevil"
                     "\\x85 é", "second"]
    assert messages(caplog)[1:] == lines
    # The tail of a failing command is the same data.
    with pytest.raises(remote.RemoteCommandError) as failed:
        remote.run(hook, printing(b"\x1b]0;title\x07\n") + "; exit 3", timeout=30)
    assert failed.value.tail == ["\\x1b]0;title\\x07"] and "\x1b" not in str(failed.value)


def test_a_line_without_end_is_cut(hook, caplog):
    caplog.set_level(logging.INFO, logger="image_factory")
    lines = remote.run(hook, "head -c 1000000 /dev/zero | tr '\\0' a; echo; echo after", timeout=60)
    assert lines[-1] == "after"
    assert max(len(line) for line in lines) <= remote.MAX_LINE + 50
    assert "a" * 100 in lines[0] and "cut" in lines[0]
    assert len(lines) < 100
    assert all(len(message) <= remote.MAX_LINE + 50 for message in messages(caplog))


@pytest.mark.parametrize("banner", [b"SSH-\x1b[2J\x1b[31mforged\x1b[0m-x\r\n",
                                    b"SSH-2.0-\x1b[2J\x1b[31mforged\x1b[0m\r\n"], ids=["bad-version", "bad-client"])
def test_a_hostile_ssh_banner_is_logged_escaped(caplog, banner):
    """Before the login: paramiko puts the server's version string into its error, which is logged, and logs a
    well-formed one's client part itself."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def answer():
        while not done.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            with client:
                client.sendall(banner)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO, logger="image_factory")
    paramiko_log = logging.getLogger("paramiko.transport")
    seen: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.DEBUG)
    catcher.emit = seen.append
    paramiko_log.addHandler(catcher)
    try:
        with pytest.raises(TimeoutError) as waited:
            remote.wait_until_ready("127.0.0.1", server.getsockname()[1], "ec2-user", _new_key()[0],
                                    timeout=0.5, interval=0.1)
    finally:
        done.set()
        thread.join()
        server.close()
        paramiko_log.removeHandler(catcher)
    assert "\x1b" not in str(waited.value)
    records = [*caplog.records, *seen]
    assert any("forged" in record.getMessage() for record in seen)  # paramiko logs it, escaped
    assert not any("\x1b" in record.getMessage() for record in records)


def test_ansible_output_is_logged_escaped_and_cut(tmp_path, caplog):
    """ansible-playbook's output quotes what the instance printed (a failed command's output, a message)."""
    script = ("import sys; sys.stdout.buffer.write(b'ok \\x1b[31mred\\rforged\\xe2\\x80\\xa8x\\r\\n' + b'b' * 100000 + "
              "b'\\nlast\\n')")
    with caplog.at_level("INFO", logger="image_factory"):
        status, lines, stopped = ansible.run_playbook([sys.executable, "-c", script], cwd=tmp_path, env={},
                                                      timeout=30, hide=str(tmp_path))
    assert (status, stopped) == (0, False)
    assert lines[0] == "ok \\x1b[31mred\\rforged\\u2028x"
    assert lines[-1] == "last"
    assert all(len(line) <= remote.MAX_LINE + 50 for line in lines) and "cut" in lines[1]
    assert not any("\x1b" in message for message in messages(caplog))
