"""The test tools: what runs a spec's tests (``test:``) against a fresh instance of the new image, over SSH.

``testinfra``: the ``test_*.py`` files of ``include/tests/<tests>/``, run by pytest in this process with
pytest-testinfra's paramiko backend, its ``host`` fixture on the SSH session the task logged in with (the
build's key kept in memory, never in a file; no second login). ``shell``: the folder's ``*.sh`` scripts, each
copied to the instance and run there with bash; exit 0 passes. Each test's outcome goes to the task log as it
happens.

A test fails when what it checks is wrong, never because the connection to the instance was lost: that fails
the task with :class:`TestsInterrupted`, a transient error (Airflow's retry runs the tests again on the same
test instance), and the image is not tagged failed for it.
"""

from __future__ import annotations

import functools
import logging
import shlex
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

from image_factory import remote
from image_factory.errors import PermanentError

log = logging.getLogger("image_factory")


class TestsError(PermanentError):
    pass


class TestsInterrupted(Exception):
    """The connection to the test instance was lost while the tests ran: no verdict on the image."""


@dataclass
class TestOutcome:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: How long the tests themselves ran (SSH already logged in).
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.passed) and not self.failed

    def summary(self) -> dict:
        return {"status": "passed" if self.ok else "failed", "passed": len(self.passed),
                "failed": len(self.failed), "failed_tests": self.failed[:20], "seconds": round(self.seconds, 2)}


def run(tests, folder: Path, hook, target: remote.SSHTarget) -> TestOutcome:
    """Run the spec's ``tests`` (spec.ImageTests) from ``folder`` against the instance ``hook`` is connected to."""
    started = time.monotonic()
    outcome = _testinfra(folder, hook, target) if tests.tool == "testinfra" else _shell(folder, hook)
    outcome.seconds = time.monotonic() - started
    return outcome


# --- testinfra ------------------------------------------------------------------------------------------

def _backend(hook, target: remote.SSHTarget):
    """pytest-testinfra's paramiko backend on ``hook``'s SSH session (logged in with the build's key, in memory)."""
    from testinfra.backend.paramiko import ParamikoBackend

    class SessionBackend(ParamikoBackend):
        @functools.cached_property
        def client(self):
            return hook.get_conn()

    return SessionBackend(f"paramiko://{target.username}@{target.host}:{target.port}")


class _Reporter:
    """A pytest plugin: the ``host`` fixture, and each test's outcome logged and counted."""

    def __init__(self, host):
        self.host_object = host
        self.outcome = TestOutcome()
        self.errors: list[str] = []
        #: Tests that ended on a lost connection, not on what they check.
        self.interrupted: list[str] = []

    def pytest_configure(self, config):
        import pytest

        host_object = self.host_object

        @pytest.fixture(scope="session")
        def host():
            return host_object

        # A module, not an object: pytest deprecates a session fixture that is a method of an instance.
        fixtures = types.ModuleType("image_factory_host")
        fixtures.host = host
        config.pluginmanager.register(fixtures, "image_factory_host")

    def pytest_runtest_makereport(self, item, call):
        if call.excinfo is not None and _connection_lost(call.excinfo.value):
            self.interrupted.append(remote.printable(f"{item.nodeid}: {call.excinfo.typename}: {call.excinfo.value}",
                                                     limit=500))

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if report.passed and report.when == "call":
                self.outcome.passed.append(report.nodeid)
                log.info("test passed: %s", report.nodeid)
            elif report.failed:
                self.outcome.failed.append(report.nodeid)
                log.error("test FAILED: %s\n%s", report.nodeid, _quoted(report.longreprtext[-3000:]))

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append(f"{report.nodeid}: {report.longreprtext[-1500:]}")


def _quoted(text: str) -> str:
    """A failure's text, which quotes what the instance printed, as data for the log: control characters escaped
    (newlines and tabs kept), each line set off by '  | ' so that none passes for a line of the log's own."""
    return "\n".join(f"  | {line}" for line in remote.printable(text, keep="\t\n", limit=None).split("\n"))


def _connection_lost(error: BaseException) -> bool:
    import paramiko

    return isinstance(error, paramiko.SSHException | EOFError | ConnectionError | TimeoutError)


def pytest_args(folder: Path) -> list[str]:
    """pytest's arguments for the tests of ``folder``: its own rootdir, no cache written into the tests folder,
    no import clash with other test files, and only our plugin: testinfra's own host fixture (which would read
    --hosts) replaced by ours, no installed plugin loaded (each was imported, its asserts rewritten, in every
    test run: anyio's and testinfra's), and no hunt for unraisable exceptions (its garbage collections, at the
    end, walk the whole task process). ``python -m bench.run overheads`` measures what a run costs."""
    files = sorted(str(path) for path in folder.glob("test_*.py"))
    return [*files, "-q", "--disable-plugin-autoload", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
            "-p", "no:threadexception", "--import-mode=importlib", "--rootdir", str(folder), "-o", "addopts=",
            "-o", "python_files=test_*.py"]


def _testinfra(folder: Path, hook, target: remote.SSHTarget) -> TestOutcome:
    import pytest
    from testinfra.host import Host

    reporter = _Reporter(Host(_backend(hook, target)))
    try:
        code = pytest.main(pytest_args(folder), plugins=[reporter])
    finally:
        # pytest's importlib mode names a test module by its path under the rootdir and reuses a module of that
        # name: another folder's test_x.py, run later in this process, would run these tests instead of its own.
        for name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").is_relative_to(folder):
                del sys.modules[name]
    if reporter.errors:
        raise TestsError("the tests could not be collected: " + "; ".join(reporter.errors))
    if reporter.interrupted:
        raise TestsInterrupted("the connection to the test instance was lost, so these tests have no verdict "
                               "(the task runs them again): " + "; ".join(reporter.interrupted[:3]))
    if code not in (0, 1) and not reporter.outcome.failed:
        raise TestsError(f"pytest ended with exit code {code} running {folder}")
    return reporter.outcome


# --- shell ----------------------------------------------------------------------------------------------

def _shell(folder: Path, hook) -> TestOutcome:
    outcome = TestOutcome()
    sftp = hook.get_conn().open_sftp()
    try:
        staging = remote.private_directory(sftp, "/tmp/image-factory-tests.")
        for script in sorted(folder.glob("*.sh")):
            sftp.put(str(script), f"{staging}/{script.name}")
    finally:
        sftp.close()
    try:
        for script in sorted(folder.glob("*.sh")):
            path = shlex.quote(f"{staging}/{script.name}")
            try:
                remote.run(hook, f"bash {path}", timeout=1800, what=f"test {script.name}")
            except remote.RemoteCommandError as exc:
                outcome.failed.append(script.name)
                log.error("test FAILED: %s (exit status %s)", script.name, exc.status)
            else:
                outcome.passed.append(script.name)
                log.info("test passed: %s", script.name)
    finally:
        remote.run(hook, f"rm -rf -- {shlex.quote(staging)}", timeout=60)
    return outcome
