"""A hostile instance cannot reach the worker (issue 27): whatever a builder or test instance prints is data.

An origin image is not trusted: its programs may print anything. Here a machine of the local cloud is made
hostile (a ``mktemp`` earlier on the PATH that prints an ansible template) and the ansible tool is run against
it: nothing the instance prints may be rendered on the worker.
"""

from __future__ import annotations

import os
import shlex

import pytest

from image_factory import remote
from image_factory.settings import Settings
from image_factory.spec import parse_spec
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


def test_a_hostile_mktemp_on_the_instance_runs_nothing_on_the_worker(hostile, tmp_path):
    hook, target, marker = hostile
    make_role(tmp_path / "ansible" / "site", "web")
    build = FakeBuild(tmp_path / "ansible")
    build.settings = Settings(ansible_folder=str(tmp_path / "ansible"), configure_timeout=120,
                              ansible_python_interpreter="/usr/bin/python3")
    configure = parse_spec(configure_text(tool="ansible", code_repo="site", server_role="web")).configure
    try:
        lines, failure = ansible.run_ansible_role(hook, target, configure, build), None
    except Exception as exc:  # the marker is checked first, whatever happened
        lines, failure = [], exc
    assert not marker.exists(), "the instance's output was rendered as a template on the worker"
    assert failure is None, failure
    assert any("failed=0" in line for line in lines)  # the role was applied, the hostile mktemp unused
    # Ansible's directory on the instance was made by the worker's name and removed after the run.
    assert remote.run(hook, "ls -d /tmp/image-factory-ansible.* 2>/dev/null || true", timeout=30) == []


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
