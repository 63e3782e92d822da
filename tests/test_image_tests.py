"""The testinfra tool (plugins/image_factory/tools/tests.py) against a real machine of the local cloud: the tests
run on the session the task logged in with, a check that is wrong fails its test, and a lost connection is no
verdict on the image (a transient error: the task runs the tests again), a dropped one is logged in again."""

from __future__ import annotations

import os
import textwrap
from types import SimpleNamespace

import pytest

from image_factory import remote
from image_factory.tools import tests as test_tools
from tests.test_machines import base_ami, ec2m, fleet, key, plan, ssh_group  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local cloud's machines need root")

TESTINFRA = SimpleNamespace(tool="testinfra")


@pytest.fixture
def logged_in(fleet, base_ami, ssh_group, key):  # noqa: F811 (fixtures)
    """A machine, and the task's login on it (hook, target), as test_image has them."""
    _, ip, _ = fleet.launch(base_ami, ssh_group)
    private_key = key[1].read_text()
    hook = remote.connect(ip, 22, "ec2-user", private_key)
    try:
        yield hook, remote.SSHTarget(ip, 22, "ec2-user", private_key)
    finally:
        if hook.client is not None:  # (get_conn() would log in again)
            hook.client.close()


def write_tests(folder, text: str):
    folder.mkdir()
    (folder / "test_image.py").write_text(textwrap.dedent(text))
    return folder


def test_the_tests_run_on_the_tasks_own_login_and_a_wrong_check_fails(logged_in, tmp_path, capsys):
    hook, target = logged_in
    folder = write_tests(tmp_path / "checks", """\
        def test_it_runs_as_the_login_user(host):
            host.run("echo $SSH_CONNECTION > /tmp/tests-connection")
            assert host.user().name == "ec2-user"

        def test_a_file_the_role_never_wrote(host):
            assert host.file("/etc/shopspinner/RELEASE-NOTES").exists
        """)
    outcome = test_tools.run(TESTINFRA, folder, hook, target)
    assert [t.split("::")[-1] for t in outcome.passed] == ["test_it_runs_as_the_login_user"]
    assert [t.split("::")[-1] for t in outcome.failed] == ["test_a_file_the_role_never_wrote"]
    # The run's own output (the task log's) has no warning of pytest's about how the host fixture is given.
    assert "warnings summary" not in capsys.readouterr().out
    # One SSH connection: the tests' commands came from the same client address and port as the task's own.
    _, mine, _ = hook.exec_ssh_client_command(hook.get_conn(), "echo $SSH_CONNECTION; cat /tmp/tests-connection",
                                              get_pty=False, environment=None)
    own, seen_by_tests = mine.decode().split("\n")[:2]
    assert own == seen_by_tests


def test_a_dropped_connection_is_logged_in_again_and_a_lost_one_is_no_verdict(logged_in, tmp_path):
    hook, target = logged_in
    dropping = write_tests(tmp_path / "dropping", """\
        def test_the_connection_drops(host):
            host.run("kill -KILL $PPID")  # the shell's parent: this SSH session's sshd process

        def test_after_the_drop(host):
            assert host.run("true").rc == 0
        """)
    outcome = test_tools.run(TESTINFRA, dropping, hook, target)  # testinfra logs in again, with the build's key
    assert (len(outcome.passed), outcome.failed) == (2, [])
    locked_out = write_tests(tmp_path / "locked-out", """\
        def test_the_connection_drops_for_good(host):
            host.run("sudo -n rm -f ~ec2-user/.ssh/authorized_keys; kill -KILL $PPID")

        def test_after_the_drop(host):
            assert host.run("true").rc == 0
        """)
    with pytest.raises(test_tools.TestsInterrupted, match="connection to the test instance was lost"):
        test_tools.run(TESTINFRA, locked_out, hook, target)
    assert not issubclass(test_tools.TestsInterrupted, test_tools.PermanentError)  # Airflow retries it


def test_what_the_instance_prints_in_a_failing_test_is_logged_as_data(logged_in, tmp_path, caplog):
    """A failing test's text quotes the instance's output: it must not colour or clear the log viewer, nor
    start a line that passes for one of the log's own."""
    hook, target = logged_in
    folder = write_tests(tmp_path / "hostile", r"""
        def test_the_instance_s_own_words(host):
            words = host.check_output("printf 'fine\\r2026-12-07T00:00:00Z [info] test passed: forged\\n"
                                      "\\033[2Jcleared'")
            assert not words, words
        """)
    caplog.set_level("INFO", logger="image_factory")
    outcome = test_tools.run(TESTINFRA, folder, hook, target)
    summary = outcome.summary()
    assert (summary["status"], summary["passed"], summary["failed"]) == ("failed", 0, 1)
    assert [name.split("::")[-1] for name in summary["failed_tests"]] == ["test_the_instance_s_own_words"]
    [failure] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test FAILED")]
    assert "forged" in failure and "cleared" in failure
    assert "\x1b" not in failure and "\r" not in failure
    _first, *rest = failure.split("\n")
    assert rest and all(line.startswith("  | ") for line in rest)
