"""A throwaway PostgreSQL server (benchmarks, the Celery deployment): Debian's binaries, a data directory of its
own, 127.0.0.1 (and, for the deployment, the local cloud's bridge address) only.

``with postgres.server() as pg: pg.url`` gives ``postgresql+psycopg2://airflow@127.0.0.1:PORT/airflow``: a server
of its own (``initdb`` in a temporary directory, ``pg_ctl start``), listening on 127.0.0.1 on a free port and
on a unix socket in that directory, trust authentication for loopback connections only, one database.
``listen`` adds addresses it listens on, ``clients`` the networks it trusts (the deployment's worker hosts);
``Server.restart()`` is a fast restart on the same port and data (the deployment's database fault).
Leaving the block stops it (``pg_ctl stop -m fast``: the postmaster whose pid this server wrote) and removes
the directory. PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (or
``nobody``) through ``runuser``, and that user owns the directory.

``python -m localcloud.postgres install`` installs Debian's ``postgresql`` package when no ``initdb`` is found (as
root, or with sudo; ``make bench`` runs it); ``python -m bench.postgres try`` starts a server, runs a query
and stops it (``python -m bench.postgres`` is the same command).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localcloud.cloud import LOOPBACK, free_port

BINARIES = "/usr/lib/postgresql/*/bin"
DATABASE = "airflow"
SUPERUSER = "airflow"
#: The scheduler, the dag-processor, the triggerer and the api-server each keep a pool of connections
#: (5 + 10 overflow by default), the api-server's sync and async engines both: 100 (PostgreSQL's default)
#: is within reach of a busy stack, so allow more.
MAX_CONNECTIONS = 300


class PostgresError(Exception):
    pass


def bin_dir() -> Path | None:
    """The newest Debian PostgreSQL ``bin`` directory that has ``initdb`` and ``pg_ctl``, or None."""
    found = [p for p in Path("/").glob(BINARIES.lstrip("/")) if (p / "initdb").exists() and (p / "pg_ctl").exists()]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)

    return max(found, key=version) if found else None


def install_debian_package(package: str) -> None:
    """``apt-get install`` one of Debian's packages, as scripts/setup.sh does: as root, or through sudo.
    Raises RuntimeError with apt's output when it fails."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing Debian's {package} package (apt-get) ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(sudo + command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:] or result.stdout[-2000:]}")


def install() -> Path:
    """Debian's ``postgresql`` package, as scripts/setup.sh installs packages, unless already there."""
    found = bin_dir()
    if found:
        return found
    try:
        install_debian_package("postgresql")
    except RuntimeError as exc:
        raise PostgresError(str(exc)) from None
    found = bin_dir()
    if not found:
        raise PostgresError(f"the postgresql package is installed but no {BINARIES}/initdb is there")
    return found


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix that runs the server as an unprivileged user, and that user (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
    raise PostgresError("running as root and there is neither a postgres nor a nobody user to run PostgreSQL as")


@dataclass
class Server:
    bin: Path
    root: Path  # the temporary directory: data/, the socket, the log
    port: int
    prefix: list[str]
    user: str | None
    #: addresses it listens on besides 127.0.0.1 (the deployment: the local cloud's bridge address)
    listen: tuple[str, ...] = ()
    #: networks trusted besides 127.0.0.1 (the deployment: its worker hosts)
    clients: tuple[str, ...] = ()

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database (psycopg2), as Airflow's ``sql_alchemy_conn``."""
        return self.url_at(LOOPBACK)

    def url_at(self, host: str, driver: str = "psycopg2") -> str:
        """The URL through one of the addresses it listens on (``driver``: psycopg2, asyncpg)."""
        return f"postgresql+{driver}://{SUPERUSER}@{host}:{self.port}/{DATABASE}"

    @property
    def async_url(self) -> str:
        """The same database through asyncpg, as Airflow's ``sql_alchemy_conn_async``."""
        return self.url_at(LOOPBACK, "asyncpg")

    @property
    def dsn(self) -> str:
        """libpq connection string (psycopg2.connect)."""
        return f"host={LOOPBACK} port={self.port} user={SUPERUSER} dbname={DATABASE}"

    def pid(self) -> int | None:
        """The postmaster's pid, from the file it wrote in its data directory."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def _pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def start(self) -> None:
        initdb = self._pg(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
                          "--locale=C", "--auth=trust", "--no-sync")
        if initdb.returncode != 0:
            raise PostgresError(f"initdb failed: {initdb.stderr[-2000:] or initdb.stdout[-2000:]}")
        # Loopback only (the unix socket in the temporary directory and 127.0.0.1), and the networks named.
        (self.data / "pg_hba.conf").write_text(
            "# localcloud/postgres.py: a throwaway server, loopback and the given networks only\n"
            "local all all trust\n"
            + "".join(f"host all all {network} trust\n" for network in (f"{LOOPBACK}/32", *self.clients)))
        self._start()
        made = subprocess.run([str(self.bin / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", SUPERUSER,
                               DATABASE], capture_output=True, text=True, timeout=60)
        if made.returncode != 0:
            raise PostgresError(f"createdb failed: {made.stderr[-2000:]}")

    def _start(self) -> None:
        addresses = ",".join((LOOPBACK, *self.listen))
        options = (f"-c listen_addresses={addresses} -p {self.port} -k {self.root} "
                   f"-c max_connections={MAX_CONNECTIONS}")
        started = self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                           "-w", "-t", "60", "start")
        if started.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresError(f"pg_ctl start failed: {started.stderr[-1000:] or started.stdout[-1000:]}\n{log}")

    def restart(self) -> float:
        """Stop (fast: every connection is cut) and start again on the same data and port; the seconds it was
        down."""
        began = time.monotonic()
        self.stop()
        self._start()
        return time.monotonic() - began

    def stop(self) -> None:
        """A fast shutdown of the postmaster this server started; SIGKILL of that pid if it does not end."""
        pid = self.pid()
        if pid is None:
            return
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _is_postmaster(pid, self.data):
            time.sleep(0.2)
        if _is_postmaster(pid, self.data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _is_postmaster(pid: int, data: Path) -> bool:
    """Whether ``pid`` is still the postgres of ``data`` (not a reused id)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and str(data).encode() in words


def new_server(install_missing: bool = True, listen: tuple[str, ...] = (), clients: tuple[str, ...] = (),
               prefix: str = "bench-postgres-") -> Server:
    """A started server in a new temporary directory (the caller stops it and removes ``root``)."""
    binaries = install() if install_missing else bin_dir()
    if binaries is None:
        raise PostgresError(f"no {BINARIES}/initdb: install Debian's postgresql package")
    run_as, user = _run_as()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    pg = Server(binaries, root, free_port(), run_as, user, tuple(listen), tuple(clients))
    try:
        pg.start()
    except BaseException:
        remove(pg)
        raise
    return pg


def remove(pg: Server) -> None:
    """Stop the server and remove its directory."""
    try:
        pg.stop()
    finally:
        shutil.rmtree(pg.root, ignore_errors=True)


@contextlib.contextmanager
def server(install_missing: bool = True, listen: tuple[str, ...] = (), clients: tuple[str, ...] = ()
           ) -> Iterator[Server]:
    """A running throwaway server, stopped and removed on leaving the block."""
    pg = new_server(install_missing, listen, clients)
    try:
        yield pg
    finally:
        remove(pg)


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "try"
    if what == "install":
        print(f"postgres: {install()}")
        return 0
    if what == "try":
        import psycopg2

        with server() as pg, contextlib.closing(psycopg2.connect(pg.dsn)) as connection, \
                connection.cursor() as cursor:
            cursor.execute("select version()")
            print(f"{pg.url} (as {pg.user or 'this user'}, in {pg.root}): {cursor.fetchone()[0]}")
        return 0
    print("usage: python -m localcloud.postgres install|try", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
