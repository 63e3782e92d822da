"""The Airflow UI on the local cloud: Airflow 3's four components, as an Airflow user runs them.

scheduler, dag-processor, triggerer and api-server, each a process in a session of its own, with the
LocalExecutor on SQLite in a project-local AIRFLOW_HOME (``.airflow-ui/``), the DAGs of ``dags/``, the
plugins of ``plugins/`` and the local cloud's settings (``LocalCloud.env()``). The api-server listens on
127.0.0.1 only; the log servers of the scheduler and the triggerer are not started (the api-server reads the
task logs from the shared AIRFLOW_HOME), so nothing else listens at all.

Login is Airflow's default SimpleAuthManager with one user, ``admin`` (role admin), whose password is
generated once and kept in AIRFLOW_HOME (``simple_auth_manager_passwords.json.generated``).

Used by ``make airflow-ui`` (scripts/airflow_ui.py) and by the browser test (tests/test_browser.py); the Celery
deployment (localcloud/deployment.py) runs it with ``executor="CeleryExecutor"`` on PostgreSQL, its api-server
on the local cloud's bridge address (``host``), and adds the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localcloud.cloud import LOOPBACK, PROJECT, LocalCloud
from localcloud.runner import AIRFLOW, airflow_env

DEFAULT_HOME = PROJECT / ".airflow-ui"
DEFAULT_PORT = 8080
USERNAME = "admin"
#: The pool of the build steps that call the cloud API ([image_factory] pool): without it they never run.
POOL = "image_factory"
POOL_SLOTS = 8
POOL_DESCRIPTION = "Image Factory: build steps that call the cloud API"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Settings of every process that shape how builds run: docker-compose.yaml has the same (tests/test_docker_compose.py).
SHARED_SETTINGS = {
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    # An idle scheduler looks again after 0.2 s, not 1 s: a build's next task, or a task whose wait is over,
    # starts sooner (the hand-offs of a build). It costs an idle scheduler about 12 % of a CPU instead of 5 %
    # at 0.5 s (measured by `python -m bench.run lifecycle`).
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    # One scheduler loop may queue as many task instances as there are worker slots (default 16).
    "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "0",
    # A worker's supervisor notices its task's process has ended within 1 s, not 5: a deferring task's exit
    # then reaches the scheduler before a quick trigger resumes it. Airflow 3.3.2 fails a resumed task that is
    # running when that stale "success" arrives (apache/airflow#72716; seen: test_image failed four tries).
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
}
#: Health entries of /api/v2/monitor/health that must read "healthy".
HEALTH_KEYS = ("metadatabase", "scheduler", "dag_processor", "triggerer")


class AirflowStackError(Exception):
    pass


@dataclass
class Component:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen | None = None
    #: When its process started (/proc/<pid>/stat field 22): what tells it from a later process of the same id.
    started: int | None = None


class AirflowStack:
    """Start, check and stop the four Airflow components against a running local cloud."""

    def __init__(self, home: Path = DEFAULT_HOME, cloud: LocalCloud | None = None, port: int = DEFAULT_PORT, *,
                 database_url: str | None = None, database_async_url: str | None = None,
                 parallelism: int = POOL_SLOTS, pool_slots: int | None = None,
                 extra_env: dict[str, str] | None = None, executor: str = "LocalExecutor", host: str = LOOPBACK):
        """``database_url`` (``sql_alchemy_conn``; default SQLite in ``home``) and ``database_async_url``
        (``sql_alchemy_conn_async``; default: Airflow derives it), ``parallelism`` (the LocalExecutor's worker
        processes), ``pool_slots`` of the ``image_factory`` pool (default: as many as ``parallelism``) and
        ``extra_env`` (added last to every component's environment) are for benchmarks; the defaults are
        what ``make airflow-ui`` and the tests use. ``executor`` ``CeleryExecutor`` and ``host`` (the api-server's
        address: where the workers of other hosts reach its Execution API) are the Celery deployment's
        (localcloud/deployment.py, which passes the broker and the result backend in ``extra_env``)."""
        self.home = Path(home).resolve()
        self.executor = executor
        self.host = host
        self.cloud = cloud or LocalCloud()
        self.port = port
        self.database_url = database_url
        self.database_async_url = database_async_url
        self.parallelism = parallelism
        self.pool_slots = pool_slots if pool_slots is not None else parallelism
        self.extra_env = dict(extra_env or {})
        self.state_file = self.home / "stack.json"
        self.components: list[Component] = []
        self._token: str | None = None

    # --- what a user needs to know -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    @property
    def task_logs(self) -> Path:
        return self.home / "logs"

    def credentials(self) -> tuple[str, str]:
        """The login of the UI and the REST API: ``admin`` and its generated password."""
        return USERNAME, json.loads(self.password_file.read_text())[USERNAME]

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack (the CLI commands included)."""
        env = {
            **airflow_env(self.cloud, self.home),
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url or f"sqlite:///{self.home / 'airflow.db'}",
            # Eight task processes at most by default (LocalExecutor starts that many workers), as many as the
            # pool has.
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            **SHARED_SETTINGS,
            "AIRFLOW__CORE__FERNET_KEY": self._secret("fernet_key", _fernet_key),
            # The api-server issues the tokens that the scheduler's task processes present: one secret for all.
            # 64 random bytes: the tokens are signed with HS512, whose key RFC 7518 (3.2) wants that long.
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret", lambda: secrets.token_urlsafe(64)),
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            # Task processes talk to the api-server's Execution API, which is on this port, not 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.password_file),
            # No HTTP server but the api-server: the scheduler's health server stays off.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.task_logs),
        }
        if self.database_async_url:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = self.database_async_url
        return {**env, **self.extra_env}

    # --- start / stop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database, create the pool and the login, then start the four components."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.stop_recorded()  # leftovers of an earlier run of this home that was not stopped
        with socket.socket() as sock:
            if sock.connect_ex((self.host, self.port)) == 0:
                raise AirflowStackError(f"something already listens on {self.host}:{self.port}: choose another "
                                        f"port, or end it (`ss -ltnp 'sport = :{self.port}'` names it)")
        env = self.env()
        self._cli(env, "db", "migrate")
        self._cli(env, "pools", "set", POOL, str(self.pool_slots), POOL_DESCRIPTION)
        self._ensure_password()
        self.components = [
            Component("api-server", [AIRFLOW, "api-server", "--host", self.host, "--port", str(self.port)],
                      self.home / "api-server.log"),
            Component("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"], self.home / "scheduler.log"),
            Component("dag-processor", [AIRFLOW, "dag-processor"], self.home / "dag-processor.log"),
            Component("triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"], self.home / "triggerer.log"),
        ]
        try:
            for component in self.components:
                self._launch(component, env, "w")
        except BaseException:
            self.stop()
            raise

    def _launch(self, component: Component, env: dict[str, str], mode: str) -> None:
        with component.log.open(mode) as log:
            component.process = subprocess.Popen(component.command, env=env, cwd=PROJECT, stdout=log,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True)
        component.started = process_start(component.process.pid)
        self._record()

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL a component and every process of its session (a crash, a lost machine), and reap it."""
        component = self.component(name)
        if component.process is not None:
            end_sessions([(component.process.pid, component.started)], grace=0)
            component.process.wait(timeout=30)

    def restart(self, name: str) -> None:
        """Start a component that was killed (or exited) again, its log appended to."""
        component = self.component(name)
        if component.process is not None and component.process.poll() is None:
            raise AirflowStackError(f"the {name} still runs (pid {component.process.pid})")
        self._launch(component, self.env(), "a")

    def stop(self, timeout: float = 30) -> None:
        """End the components this object started, each with every process of its session (see
        ``end_sessions``), reap them, then forget them."""
        started = [(c.process.pid, c.started) for c in reversed(self.components) if c.process is not None]
        left = end_sessions(started, grace=timeout)
        for component in self.components:
            if component.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    component.process.wait(timeout=10)
        if left:
            raise AirflowStackError(f"processes {left} of the Airflow components outlive SIGKILL")
        self.components = []
        self.state_file.unlink(missing_ok=True)
        self._token = None

    def __enter__(self) -> AirflowStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def exited(self) -> list[Component]:
        return [c for c in self.components if c.process is not None and c.process.poll() is not None]

    def wait_until_healthy(self, timeout: float = 180) -> dict:
        """Poll /api/v2/monitor/health until the database and the three job components report healthy."""
        deadline = time.monotonic() + timeout
        health: dict = {}
        while time.monotonic() < deadline:
            if dead := self.exited():
                raise AirflowStackError(self._describe_exit(dead[0]))
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=10) as response:  # noqa: S310
                    health = json.loads(response.read())
            except (OSError, ValueError):
                health = {}
            if health and all((health.get(key) or {}).get("status") == "healthy" for key in HEALTH_KEYS):
                # The Execution API (which task processes call) builds its versioned routes on its first
                # request, for seconds: have that done now rather than in the first task of a build.
                with urllib.request.urlopen(f"{self.url}/execution/health", timeout=120) as response:  # noqa: S310
                    response.read()
                return health
            time.sleep(1)
        raise AirflowStackError(f"Airflow at {self.url} is not healthy after {timeout} s: {health or 'no answer'}; "
                                f"see the logs in {self.home}")

    # --- the REST API (/api/v2) with a token of the admin user ------------------------------------------

    def token(self) -> str:
        if self._token is None:
            username, password = self.credentials()
            answer = self._request("POST", "/auth/token", {"username": username, "password": password}, auth=False)
            self._token = answer["access_token"]
        return self._token

    def api(self, method: str, path: str, document: dict | None = None) -> dict:
        """Call ``/api/v2<path>`` as the admin user; returns the decoded answer."""
        return self._request(method, f"/api/v2{path}", document)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """Until the dag-processor has parsed ``dag_id`` (bounded); returns the DAG as the REST API shows it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.api("GET", f"/dags/{dag_id}")
            except AirflowStackError as exc:
                if "404" not in str(exc):
                    raise
            time.sleep(1)
        raise AirflowStackError(f"DAG {dag_id} not loaded after {timeout} s; see {self.home / 'dag-processor.log'}")

    def _request(self, method: str, path: str, document: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 http://127.0.0.1 only
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise AirflowStackError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')[:500]}"
                                    ) from exc
        except OSError as exc:
            raise AirflowStackError(f"{method} {path}: the api-server at {self.url} does not answer: {exc}") from exc
        return json.loads(body) if body else {}

    # --- internals ---------------------------------------------------------------------------------------

    def _cli(self, env: dict[str, str], *args: str) -> None:
        result = subprocess.run([AIRFLOW, *args], env=env, cwd=PROJECT, capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            raise AirflowStackError(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")

    def _secret(self, name: str, make) -> str:
        """A secret of this home, made once and kept (the Fernet key must outlive a restart)."""
        path = self.home / "secrets.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        if name not in stored:
            stored[name] = make()
            self.home.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps(stored))
        return stored[name]

    def _ensure_password(self) -> None:
        """Write the admin's password as SimpleAuthManager would (it keeps an existing one)."""
        passwords = json.loads(self.password_file.read_text() or "{}") if self.password_file.exists() else {}
        if USERNAME not in passwords:
            alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"  # SimpleAuthManager's own
            passwords[USERNAME] = "".join(secrets.choice(alphabet) for _ in range(16))
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(json.dumps(passwords) + "\n")

    def _record(self) -> None:
        started = {c.name: {"pid": c.process.pid, "started": c.started}
                   for c in self.components if c.process is not None}
        self.state_file.write_text(json.dumps({"port": self.port, "processes": started}))

    def recorded(self) -> dict[str, tuple[int, int | None]]:
        """The components the record of this home names: name to (pid, start time)."""
        try:
            processes = json.loads(self.state_file.read_text()).get("processes", {})
            return {name: (int(p["pid"]), p.get("started")) for name, p in processes.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    def stop_recorded(self, timeout: float = 30) -> None:
        """End the components an earlier run of this home started and did not stop, also from another process:
        each recorded session leader that is still the process started then (same id, same start time), with
        every process of its session (``end_sessions``). Not by their command lines: Airflow renames its
        processes (setproctitle: ``airflow api_server -- host:... port:...``)."""
        if not self.state_file.exists():
            return
        left = end_sessions(reversed(self.recorded().values()), grace=timeout)
        if left:
            raise AirflowStackError(f"processes {left} of the recorded Airflow components outlive SIGKILL; "
                                    f"{self.state_file} is kept")
        self.state_file.unlink(missing_ok=True)

    def _describe_exit(self, component: Component) -> str:
        tail = component.log.read_text(errors="replace")[-3000:] if component.log.exists() else ""
        return f"the {component.name} exited with {component.process.returncode}; see {component.log}:\n{tail}"


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# --- the processes we start: each the leader of a session of its own ---------------------------------------
#
# A process started with ``start_new_session=True`` leads a new session and process group, both numbered by its
# pid; its children (gunicorn workers, task supervisors, Celery's pool) stay in that session, even those that
# take a process group of their own (Airflow's task runners: ``setpgid(0, 0)``). What was started is recorded as
# (pid, start time): the start time (clock ticks after boot) tells the process from a later one given the same
# id. Linux gives no new process the id of a session or group that still has a process.

def process_start(pid: int) -> int | None:
    """When the live process ``pid`` started (/proc/<pid>/stat field 22), or None (no such process, a zombie)."""
    fields = _stat(pid)
    return int(fields[19]) if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat from field 3 (the state) on: after the command's name, which may hold
    spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def session_processes(sessions: Iterable[int]) -> list[int]:
    """The live processes (not zombies) of the sessions ``sessions`` (field 6 of their stat)."""
    wanted = {s for s in sessions if s > 1}
    if not wanted:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            fields = _stat(int(entry.name))
            if len(fields) > 3 and fields[0] not in ("Z", "X") and int(fields[3]) in wanted:
                found.append(int(entry.name))
    return found


def is_ours(pid: int, started: int | None) -> bool:
    """Whether the session ``pid`` is still the one whose leader started at ``started``: the leader lives with
    that start time, or it ended and processes of its session started after it are left (its id is not given
    again while they live)."""
    if pid <= 1 or not started:
        return False
    leader = process_start(pid)
    if leader is not None:
        return leader == started
    return any((process_start(member) or 0) >= started for member in session_processes([pid]))


def end_sessions(recorded: Iterable[tuple[int, int | None]], grace: float = 30, kill_wait: float = 10
                 ) -> list[int]:
    """End the sessions of the recorded leaders (pid, start time) that are still ours (``is_ours``): SIGTERM
    to each leader's process group (to every process of the session if the leader is gone), until ``grace``
    seconds have passed or no process of those sessions is left, then SIGKILL to every one left, until none is
    (``kill_wait`` at most). Returns the processes left (none, but for a process stuck in the kernel)."""
    ours = [pid for pid, started in recorded if is_ours(pid, started)]
    if not ours:
        return []
    if grace > 0:
        for pid in ours:
            if process_start(pid) is not None:
                _signal_group(pid, signal.SIGTERM)
        asked: set[int] = set()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # The processes of a session whose leader has ended (or had already) are asked themselves, once.
            orphans = [(m, pid) for pid in ours if process_start(pid) is None
                       for m in session_processes([pid]) if m not in asked]
            for member, pid in orphans:
                _signal_member(member, pid, signal.SIGTERM)
                asked.add(member)
            if not session_processes(ours):
                break
            time.sleep(0.2)
    deadline = time.monotonic() + kill_wait
    while (left := session_processes(ours)) and time.monotonic() < deadline:
        for pid in ours:
            _signal_group(pid, signal.SIGKILL)
        for member in left:  # a process of the session in a group of its own (a task runner)
            _signal_member(member, None, signal.SIGKILL, sessions=ours)
        time.sleep(0.1)
    return session_processes(ours)


def _signal_member(pid: int, session: int | None, sig: int, sessions: list[int] | None = None) -> None:
    """Signal ``pid`` if it is (still) a process of ``session`` (or of one of ``sessions``)."""
    fields = _stat(pid)
    if len(fields) > 3 and int(fields[3]) in ({session} if session else set(sessions or ())) and pid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group of a process we started (a session of its own, so its group id is its pid)."""
    if pid <= 1:  # never group 0 (ours) or -1 (everything)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


if __name__ == "__main__":  # pragma: no cover - scripts/airflow_ui.py is the command
    sys.exit("use `make airflow-ui` (scripts/airflow_ui.py)")
