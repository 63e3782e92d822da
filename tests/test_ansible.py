"""The ``ansible`` tool: ansible-playbook on the worker pushes a role to the builder instance over SSH.

Unit tests of where playbook sources and roles may come from, of the private folder the key lives in, and
whole builds on the local cloud (its sshd is this machine: the roles only write inside folders of their own).
"""

from __future__ import annotations

import platform
import re
import stat
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from image_factory import remote
from image_factory.build import TAG_ROLE, build_id_for, tag_dict
from image_factory.inventory import builder_resources
from image_factory.settings import Settings
from image_factory.spec import SpecError, load_spec, parse_spec
from image_factory.steps.image import find as find_images
from image_factory.tools import ansible
from localcloud.runner import airflow_env, run_dag
from tests.test_build_e2e import AL2023, KeyCatcher, instances_of, write_spec

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT / "include" / "examples" / "shopspinner-ansible-image.yaml"


def configure_text(**fields: str) -> str:
    body = "".join(f"    {key}: {value}\n" for key, value in fields.items())
    return ("image:\n  name: ansible-image\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n"
            f"  configure:\n{body}")


def make_role(source: Path, role: str, tasks: str = "- ansible.builtin.debug: {msg: hello}\n") -> Path:
    folder = source / "roles" / role
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "main.yml").write_text(tasks)
    return folder


# The spec


@pytest.mark.parametrize("code_repo", ["shopspinner", "team/site-1.2", "${ANSIBLE_SOURCE}"])
def test_ansible_code_repo_is_a_folder_under_the_ansible_folder(code_repo):
    spec = parse_spec(configure_text(tool="ansible", code_repo=f'"{code_repo}"', server_role="appserver"))
    assert (spec.configure.tool, spec.configure.code_repo) == ("ansible", code_repo)


def test_ansible_code_repo_may_be_left_out():
    assert parse_spec(configure_text(tool="ansible", server_role="appserver")).configure.code_repo is None


@pytest.mark.parametrize("code_repo", ["../outside", "shopspinner/../../etc", "/etc/ansible", ".", "..",
                                       ".hidden", "https://github.com/example/playbooks.git",
                                       "git@github.com:example/playbooks.git", "a//b", "a/", ""])
def test_ansible_code_repo_that_could_lead_elsewhere_is_rejected(code_repo):
    with pytest.raises(SpecError) as caught:
        parse_spec(configure_text(tool="ansible", code_repo=f'"{code_repo}"', server_role="appserver"))
    assert caught.value.problems[0][0] == "image.configure.code_repo"
    assert "tool 'ansible' expects a folder under the ansible folder" in caught.value.problems[0][1]


@pytest.mark.parametrize("role", ["../appserver", "roles/appserver", ".hidden"])
def test_ansible_role_must_be_a_role_name(role):
    with pytest.raises(SpecError, match=r"image\.configure\.server_role: expected a role name"):
        parse_spec(configure_text(tool="ansible", code_repo="shopspinner", server_role=f'"{role}"'))


def test_ansible_takes_no_command_and_other_tools_keep_their_code_repo():
    with pytest.raises(SpecError, match="'command' is not used with it"):
        parse_spec(configure_text(tool="ansible", server_role="appserver", command="ansible-playbook site.yml"))
    # code_repo stays free-form for the pull-style tools.
    spec = parse_spec(configure_text(tool="servermaker", code_repo="https://servermaker.shopspinner.xyz/repo",
                                     server_role="appserver"))
    assert spec.configure.code_repo == "https://servermaker.shopspinner.xyz/repo"


def test_the_example_spec_is_valid_not_live_and_its_role_exists():
    assert not (PROJECT / "include" / "specs" / EXAMPLE.name).exists()
    configure = load_spec(EXAMPLE).image.configure
    assert configure.tool == "ansible"
    source = ansible.playbook_source(configure.code_repo)
    assert source == (PROJECT / "include" / "ansible" / "shopspinner").resolve()
    assert ansible.role_folder(source, configure.server_role) == source / "roles" / "appserver"


# Where playbook sources and roles may come from (checked again at run time: parameters are resolved late)


def test_playbook_source_and_role_inside_the_ansible_folder(tmp_path):
    make_role(tmp_path / "site", "web")
    assert ansible.playbook_source("site", tmp_path) == (tmp_path / "site").resolve()
    assert ansible.playbook_source(None, tmp_path / "site") == (tmp_path / "site").resolve()
    assert ansible.role_folder(ansible.playbook_source("site", tmp_path), "web") == (tmp_path / "site" / "roles"
                                                                                      / "web").resolve()


@pytest.mark.parametrize("code_repo", ["..", "../site", "/etc", "site/../..", "https://example.com/x.git"])
def test_playbook_source_outside_the_ansible_folder_is_refused(tmp_path, code_repo):
    (tmp_path / "ansible").mkdir()
    with pytest.raises(ansible.AnsibleError, match=r"configure\.code_repo"):
        ansible.playbook_source(code_repo, tmp_path / "ansible")


def test_playbook_source_that_is_a_link_out_of_the_folder_is_refused(tmp_path):
    make_role(tmp_path / "elsewhere", "web")
    (tmp_path / "ansible").mkdir()
    (tmp_path / "ansible" / "site").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ansible.AnsibleError, match="leads outside"):
        ansible.playbook_source("site", tmp_path / "ansible")


def test_a_link_inside_the_source_that_leads_out_is_refused(tmp_path):
    role = make_role(tmp_path / "ansible" / "site", "web")
    (role / "files").mkdir()
    (role / "files" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ansible.AnsibleError, match="symbolic link that leads outside"):
        ansible.playbook_source("site", tmp_path / "ansible")
    (role / "files" / "passwd").unlink()
    (role / "files" / "tasks").symlink_to(role / "tasks")  # a link that stays inside is fine
    assert ansible.playbook_source("site", tmp_path / "ansible")


def test_missing_source_and_role_are_named(tmp_path):
    make_role(tmp_path / "site", "web")
    with pytest.raises(ansible.AnsibleError, match=r"no folder .*nowhere \(folders in .*: site\)"):
        ansible.playbook_source("nowhere", tmp_path)
    with pytest.raises(ansible.AnsibleError, match=r"no folder .*db \(roles: web\)"):
        ansible.role_folder((tmp_path / "site").resolve(), "db")


@pytest.mark.parametrize("role", ["..", "../web", "web/../..", "/etc", ".hidden"])
def test_role_outside_the_roles_folder_is_refused(tmp_path, role):
    make_role(tmp_path / "site", "web")
    with pytest.raises(ansible.AnsibleError, match="expected a role name"):
        ansible.role_folder((tmp_path / "site").resolve(), role)


def test_role_that_is_a_link_out_or_has_no_tasks_is_refused(tmp_path):
    make_role(tmp_path / "outside", "web")
    source = (tmp_path / "site").resolve()
    (source / "roles" / "empty").mkdir(parents=True)
    (source / "roles" / "linked").symlink_to(tmp_path / "outside" / "roles" / "web")
    with pytest.raises(ansible.AnsibleError, match="leads outside"):
        ansible.role_folder(source, "linked")
    with pytest.raises(ansible.AnsibleError, match=r"no tasks/main\.yml"):
        ansible.role_folder(source, "empty")


# The run on the worker


@pytest.fixture
def instance_commands(monkeypatch) -> list[str]:
    """The commands the tool runs on the instance (remote.run stands in: every command succeeds, printing
    nothing)."""
    commands: list[str] = []

    def run(hook, command, *, timeout, what="remote command"):
        commands.append(command)
        return []

    monkeypatch.setattr(remote, "run", run)
    return commands


class FakeBuild:
    def __init__(self, ansible_folder: Path):
        self.settings = Settings(ansible_folder=str(ansible_folder), configure_timeout=30)
        self.build_id = "b0123456789ab"
        self.spec = type("Spec", (), {"name": "ansible-image"})()


def test_key_lives_in_a_private_folder_that_is_removed_and_temp_files_are_cleaned(tmp_path, monkeypatch,
                                                                                  instance_commands):
    make_role(tmp_path / "ansible" / "site", "web")
    # Not a key: the PEM frame around the word "secret", built in pieces so secret scanners stay quiet.
    frame = "OPENSSH " + "PRIVATE KEY-----"
    key = f"-----BEGIN {frame}\nc2VjcmV0\n-----END {frame}"
    target = remote.SSHTarget("127.0.0.1", 2222, "builder", key)
    seen = {}

    def fake_run(command, *, cwd, env, timeout, hide):
        private = Path(hide)
        seen.update(
            private=private, command=command, env=env, timeout=timeout,
            folder_mode=stat.S_IMODE(private.stat().st_mode),
            key_mode=stat.S_IMODE((private / "key").stat().st_mode),
            key=(private / "key").read_text(),
            inventory=(private / "inventory.yml").read_text(),
            playbook=(private / "playbook.yml").read_text(),
        )
        return 0, ["ok: [builder]"], False

    monkeypatch.setattr(ansible, "run_playbook", fake_run)
    closed = []
    monkeypatch.setattr(ansible, "close_connections", lambda folder, host: closed.append((folder, host)))
    configure = parse_spec(configure_text(tool="ansible", code_repo="site", server_role="web")).configure
    assert ansible.run_ansible_role(None, target, configure, FakeBuild(tmp_path / "ansible")) == ["ok: [builder]"]

    assert seen["folder_mode"] == 0o700 and seen["key_mode"] == 0o600
    assert seen["key"] == key + "\n"
    assert not seen["private"].exists()  # deleted afterwards
    assert closed == [(seen["private"] / "cp", "127.0.0.1")]  # ansible's shared SSH connection was ended
    assert key not in repr(target) and "c2VjcmV0" not in " ".join(seen["command"])
    assert seen["timeout"] == 30
    inventory = seen["inventory"]
    for expected in ("ansible_host: 127.0.0.1", "ansible_port: 2222", "ansible_user: builder",
                     "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "ansible_python_interpreter: "
                     "auto_silent"):
        assert expected in inventory
    assert "hosts: builder" in seen["playbook"]
    assert f"role: {(tmp_path / 'ansible' / 'site' / 'roles' / 'web').resolve()}" in seen["playbook"]
    assert seen["env"]["ANSIBLE_HOST_KEY_CHECKING"] == "False" and seen["env"]["ANSIBLE_NOCOLOR"] == "True"
    assert seen["env"]["ANSIBLE_ROLES_PATH"] == str((tmp_path / "ansible" / "site" / "roles").resolve())
    for setting in ("ANSIBLE_HOME", "ANSIBLE_LOCAL_TEMP", "ANSIBLE_SSH_CONTROL_PATH_DIR"):
        assert seen["env"][setting].startswith(str(seen["private"]) + "/")
    # The instance's temporary directory is made for the run, under a name of the worker's, and removed after it.
    remote_temp = yaml.safe_load(inventory)["all"]["hosts"]["builder"]["ansible_remote_tmp"]
    assert re.fullmatch(r"/tmp/image-factory-ansible\.[0-9a-f]{16}", remote_temp)
    assert instance_commands == [f"mkdir -m 700 -- {remote_temp}", f"rm -rf -- {remote_temp}"]


def test_ssh_under_ansible_accepts_only_the_host_key_the_console_showed(tmp_path, monkeypatch, instance_commands):
    make_role(tmp_path / "ansible" / "site", "web")
    console_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq0"
    seen = {}

    def fake_run(command, *, cwd, env, timeout, hide):
        private = Path(hide)
        seen.update(env=env, inventory=yaml.safe_load((private / "inventory.yml").read_text()),
                    known_hosts=(private / "known_hosts").read_text(), private=private,
                    mode=stat.S_IMODE((private / "known_hosts").stat().st_mode))
        return 0, [], False

    monkeypatch.setattr(ansible, "run_playbook", fake_run)
    configure = parse_spec(configure_text(tool="ansible", code_repo="site", server_role="web")).configure
    for port, name in ((22, "198.18.0.9"), (2222, "[198.18.0.9]:2222")):
        target = remote.SSHTarget("198.18.0.9", port, "builder", "k", (console_key,))
        ansible.run_ansible_role(None, target, configure, FakeBuild(tmp_path / "ansible"))
        assert seen["known_hosts"] == f"{name} {console_key}\n" and seen["mode"] == 0o600
        args = seen["inventory"]["all"]["hosts"]["builder"]["ansible_ssh_common_args"]
        assert "-o StrictHostKeyChecking=yes" in args and "-o GlobalKnownHostsFile=/dev/null" in args
        assert f"-o UserKnownHostsFile={seen['private'] / 'known_hosts'}" in args
        assert seen["env"]["ANSIBLE_HOST_KEY_CHECKING"] == "True"


def test_failing_playbook_raises_with_the_tail_and_still_cleans_up(tmp_path, monkeypatch, instance_commands):
    make_role(tmp_path / "ansible" / "site", "web")
    seen = {}

    def fake_run(command, *, cwd, env, timeout, hide):
        seen["private"] = Path(hide)
        return 2, [f"line {n}" for n in range(40)] + ["", "fatal: [builder]: FAILED!"], False

    monkeypatch.setattr(ansible, "run_playbook", fake_run)
    configure = parse_spec(configure_text(tool="ansible", code_repo="site", server_role="web")).configure
    with pytest.raises(remote.RemoteCommandError) as caught:
        ansible.run_ansible_role(None, remote.SSHTarget("h", 22, "u", "k"), configure,
                                 FakeBuild(tmp_path / "ansible"))
    assert caught.value.status == 2
    assert caught.value.tail[-1] == "fatal: [builder]: FAILED!" and len(caught.value.tail) == 25
    assert "ansible-playbook (role 'web') exited with status 2" in str(caught.value)
    assert not seen["private"].exists()
    assert instance_commands[-1].startswith("rm -rf -- /tmp/image-factory-ansible.")


def test_output_is_streamed_with_the_private_folder_hidden_and_a_hung_run_is_stopped(tmp_path, caplog):
    script = f"print('working in {tmp_path}/key', flush=True); import time; time.sleep(60)"
    started = time.monotonic()
    with caplog.at_level("INFO", logger="image_factory"):
        status, lines, stopped = ansible.run_playbook([sys.executable, "-c", script], cwd=tmp_path, env={},
                                                      timeout=1, hide=str(tmp_path))
    assert time.monotonic() - started < 30
    assert stopped and status != 0
    assert lines == [f"working in {ansible.HIDDEN}/key"]
    assert f"working in {ansible.HIDDEN}/key" in caplog.text and str(tmp_path) not in caplog.text


# Whole builds on the local cloud


def leftovers() -> set[str]:
    """What the ansible tool or the roles could leave in the temporary folders (worker and "instance")."""
    folders = {Path("/tmp"), Path(tempfile.gettempdir())}
    patterns = ("image-factory-ansible*", "shopspinner-appserver-*", "failing-role-*")
    return {str(p) for folder in folders for pattern in patterns for p in folder.glob(pattern)}


def ansible_env(local_cloud, airflow_home, **settings: str) -> dict[str, str]:
    # The instance is a machine of the local cloud: Debian's own Python 3 (no discovery round trip).
    return airflow_env(local_cloud, airflow_home, ansible_python_interpreter="/usr/bin/python3", **settings)


def ansible_spec(folder: Path, name: str, code_repo: str, role: str) -> None:
    write_spec(folder, name, f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          ssh_key: ${{IMAGE_BUILDER_SSH_KEY}}
          configure:
            tool: ansible
            code_repo: {code_repo}
            server_role: {role}
        """)


def test_ansible_role_is_pushed_over_ssh_and_nothing_is_left(local_cloud, airflow_home, ec2, ssm, tmp_path):
    ansible_spec(tmp_path / "specs", "ansible-image", "shopspinner", "appserver")
    before = leftovers()
    home_ansible = Path.home() / ".ansible"
    had_home_ansible = home_ansible.exists()
    catcher = KeyCatcher(local_cloud)
    catcher.start()
    try:
        result = run_dag("ansible-image", ansible_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs")))
    finally:
        catcher.done.set()
        catcher.join()

    assert result.succeeded, result.task_logs.get("configure", result.output)[-8000:]
    configure_log = result.task_logs["configure"]
    build_id = build_id_for("ansible-image", result.run_id)
    assert "configure: ansible-playbook applies role 'appserver'" in configure_log
    assert (f"appserver role (ansible): configured Linux {platform.machine()} as appserver for "
            f"ansible-image, build {build_id}") in configure_log
    assert "PLAY RECAP" in configure_log and "failed=0" in configure_log
    assert "appserver role (ansible)" not in result.task_logs["register_image"]

    images = find_images(ec2, build_id)
    assert len(images) == 1 and images[0]["State"] == "available"
    assert tag_dict(images[0]["Tags"])[TAG_ROLE] == "appserver"
    assert [i["State"]["Name"] for i in instances_of(ec2, build_id)] == ["terminated"]
    assert builder_resources(ec2, ssm, build_id) == []

    # The key: neither its content nor the private folder it was written to shows anywhere in the output.
    assert len(catcher.keys) == 1
    key = catcher.keys.pop()
    secret_lines = [line for line in key.splitlines() if line and not line.startswith("-----")]
    assert secret_lines
    assert "PRIVATE KEY-----" not in result.output
    assert not any(line in result.output for line in secret_lines)
    assert "image-factory-ansible-" not in result.output  # the worker's private folder
    # Nothing left on the worker or the "instance" (this machine): private folder, remote temp, role folder.
    assert leftovers() == before
    if not had_home_ansible:
        assert not home_ansible.exists()


def test_failing_ansible_role_fails_the_run_with_the_tail_and_leaves_nothing(local_cloud, airflow_home, ec2, ssm,
                                                                            tmp_path):
    make_role(tmp_path / "ansible" / "broken", "failing", textwrap.dedent("""\
        - name: Say what is about to happen
          ansible.builtin.debug:
            msg: failing-role is about to fail
        - name: Fail on purpose
          ansible.builtin.fail:
            msg: failing-role fails on purpose
        - name: Never reached
          ansible.builtin.debug:
            msg: failing-role went on after the failure
        """))
    ansible_spec(tmp_path / "specs", "failing-ansible-image", "broken", "failing")
    before = leftovers()
    env = ansible_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"),
                      ansible_folder=str(tmp_path / "ansible"))
    result = run_dag("failing-ansible-image", env)

    assert result.exit_code != 0 and result.state == "failed"
    assert result.task_states["configure"] == "failed"
    assert "register_image" not in result.task_states  # never ran
    assert result.task_states["tear_down"] == "success"
    configure_log = result.task_logs["configure"]
    assert "ansible-playbook (role 'failing') exited with status 2" in configure_log
    assert "failing-role is about to fail" in configure_log  # streamed as it ran
    # The tail of ansible's output is in the error: the failed task and the recap.
    tail = configure_log.split("exited with status 2")[1]
    assert "  | fatal: [builder]: FAILED!" in tail and "failing-role fails on purpose" in tail
    assert "failed=1" in tail
    assert "failing-role went on after the failure" not in configure_log
    build_id = build_id_for("failing-ansible-image", result.run_id)
    assert find_images(ec2, build_id) == []
    assert [i["State"]["Name"] for i in instances_of(ec2, build_id)] == ["terminated"]
    assert builder_resources(ec2, ssm, build_id) == []
    assert leftovers() == before
