"""Commands on an instance over SSH (plugins/image_factory/remote.py run), on a machine of the local cloud: every
line of the output reaches the task log whole, as it comes, and a failure or a hang ends with the output's tail."""

from __future__ import annotations

import logging
import time

import pytest

from image_factory import remote


@pytest.fixture(scope="module")
def hook(machine):
    _, address, private_key = machine
    hook = remote.connect(address, 22, "ec2-user", private_key)
    yield hook
    hook.get_conn().close()


def logged_lines(caplog) -> list[str]:
    """The output lines logged (without the line naming the command)."""
    messages = [r.getMessage() for r in caplog.records if r.name == "image_factory"]
    assert messages[0].startswith("running on the instance: ")
    return messages[1:]


def test_all_of_a_quick_command_s_output_is_logged_stderr_among_stdout(hook, caplog):
    """A command done before the first read: the SSH hook's own reader kept that output out of the log."""
    caplog.set_level(logging.INFO, logger="image_factory")
    command = "echo one; echo two >&2; printf 'three, no newline'"
    assert remote.run(hook, command, timeout=30) == ["one", "two", "three, no newline"]
    assert logged_lines(caplog) == ["one", "two", "three, no newline"]


def test_a_line_that_comes_in_pieces_is_logged_once_whole_and_lines_come_as_they_are_written(hook, caplog):
    caplog.set_level(logging.INFO, logger="image_factory")
    started = time.time()
    remote.run(hook, "echo early; sleep 1.5; printf 'first half, '; sleep 0.5; echo 'second half'", timeout=30)
    assert logged_lines(caplog) == ["early", "first half, second half"]
    early = next(r.created for r in caplog.records if r.getMessage() == "early")
    assert early - started < 1.2  # logged while the command still ran, not at its end


def test_a_failing_command_raises_with_its_status_and_the_tail_of_its_output(hook):
    with pytest.raises(remote.RemoteCommandError) as failed:
        remote.run(hook, "for n in $(seq 1 40); do echo line $n; done; echo broken >&2; exit 3", timeout=30,
                   what="role 'web'")
    assert failed.value.status == 3
    assert failed.value.tail[-1] == "broken" and failed.value.tail[0] == "line 17" and len(failed.value.tail) == 25
    assert str(failed.value).startswith("role 'web' exited with status 3; last 25 lines of its output:")


def test_a_command_still_running_at_its_timeout_is_given_up_with_its_output(hook):
    started = time.monotonic()
    with pytest.raises(remote.RemoteCommandError) as hung:
        remote.run(hook, "echo started; sleep 30", timeout=1.5, what="role 'slow'")
    assert time.monotonic() - started < 10
    assert hung.value.tail == ["started"]
    assert "role 'slow' (still running after 2 s: given up)" in str(hung.value)
    # The connection still serves the next command.
    assert remote.run(hook, "echo next", timeout=30) == ["next"]
