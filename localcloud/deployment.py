"""A Celery deployment of Image Factory on this machine, with hosts of its own on the local cloud's bridge.

``python -m localcloud deployment-up|deployment-down|deployment-status`` (``make deployment-up`` /
``make deployment-down``), against a running local cloud with machines:

* **this host** (the local cloud's bridge address, 198.18.0.1 in slot 0, and 127.0.0.1): PostgreSQL (Debian's,
  localcloud/postgres.py) and Redis (Debian's ``redis-server``), each listening on 127.0.0.1 and the bridge
  address only; Airflow's api-server (on the bridge address: the workers call its Execution API there),
  scheduler, dag-processor and triggerer (localcloud/airflow_stack.py with the CeleryExecutor);
* **a host per worker**: a network namespace ``lc<slot>-worker-<n>`` with an address of the slot's hosts
  network (198.18.3.0/24 in slot 0) on a veth onto the bridge, no default route, a host name of its own (a
  UTS namespace: the task instances' ``hostname``), running ``airflow celery worker``. It reaches the
  api-server, Redis, PostgreSQL and the cloud API over the bridge, as another machine would; builders see its
  SSH come from its address, and the provisioner CIDR is the smallest network holding every worker's.

Task logs go to one folder that every host shares (as the Compose file's ./logs volume), so the workers need
no log server. Everything is recorded in ``<home>/deployment.json``; ``down`` ends it all, also from another
process: each process it started leads a session of its own, recorded as its pid and start time, and is ended
with every process of its session (``end_sessions`` of localcloud/airflow_stack.py: never a process that
merely got a recorded id again); a worker's host besides loses every process in its namespace, then the
namespace and the veth; PostgreSQL is stopped by its data directory (``pg_ctl stop``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localcloud import postgres
from localcloud.airflow_stack import AirflowStack, AirflowStackError, end_sessions, process_start
from localcloud.cloud import LOOPBACK, PROJECT, LocalCloud, free_port
from localcloud.runner import AIRFLOW

DEFAULT_HOME = PROJECT / ".deployment"
DEFAULT_PORT = 8090
DEFAULT_WORKERS = 2
#: Task slots of each worker (Celery's prefork pool); the pool image_factory bounds the cloud calls anyway.
WORKER_CONCURRENCY = 8
REDIS_SERVER = "/usr/bin/redis-server"
EXECUTOR = "CeleryExecutor"
#: The pool of the build steps that call the cloud API, as docker-compose.yaml's airflow-init makes it.
POOL_SLOTS = 8
#: The [image_factory] settings every host gets (the local cloud's, with the workers' provisioner CIDR);
#: docker-compose.yaml passes each on from .env (tests/test_docker_compose.py).
IMAGE_FACTORY_SETTINGS = ("PROVISIONER_CIDR", "BUILDER_VPC_ID", "BUILDER_VPC_CIDR", "POLL_INTERVAL", "SBOM_BUCKET")
WORKER_READY = "ready."


class DeploymentError(Exception):
    pass


@dataclass
class WorkerHost:
    name: str  # its host name: the task instances' hostname
    address: str
    netns: str
    veth: str
    pid: int = 0
    started: int | None = None  # the start time of ``pid`` (/proc/<pid>/stat field 22)

    @property
    def log_name(self) -> str:
        return f"{self.name}.log"


@dataclass
class Record:
    """What ``up`` made, for ``down`` (in any process)."""

    slot: int
    port: int
    postgres: dict = field(default_factory=dict)
    redis_pid: int = 0
    redis_started: int | None = None
    redis_port: int = 0
    workers: list[dict] = field(default_factory=list)


class Deployment:
    def __init__(self, home: Path = DEFAULT_HOME, cloud: LocalCloud | None = None, *, port: int = DEFAULT_PORT,
                 workers: int = DEFAULT_WORKERS, concurrency: int = WORKER_CONCURRENCY,
                 pool_slots: int = POOL_SLOTS, extra_env: dict[str, str] | None = None):
        """``extra_env`` is added last to every Airflow process's environment (the tests set short fault
        timeouts and their spec folder there)."""
        self.home = Path(home).resolve()
        self.cloud = cloud or LocalCloud()
        self.port = port
        self.worker_count = workers
        self.concurrency = concurrency
        self.pool_slots = pool_slots
        self.extra_env = dict(extra_env or {})
        self.record_file = self.home / "deployment.json"
        self.pg: postgres.Server | None = None
        self.redis: subprocess.Popen | None = None
        self.stack: AirflowStack | None = None
        self.workers: list[WorkerHost] = []
        self.worker_processes: dict[str, subprocess.Popen] = {}

    # --- addresses ------------------------------------------------------------------------------------

    @property
    def bridge_address(self) -> str:
        return str(self.cloud.plan.bridge_address)

    def worker_hosts(self) -> list[WorkerHost]:
        plan = self.cloud.plan
        hosts = []
        for n in range(1, self.worker_count + 1):
            name = f"worker-{n}"
            hosts.append(WorkerHost(f"if-{name}", str(plan.hosts_network.network_address + n), plan.netns(name),
                                    plan.veth(name)))
        return hosts

    def provisioner_cidr(self) -> str:
        """The smallest network holding every worker's address and the triggerer's host (this one, by its bridge
        address: the triggerer waits for a builder's SSH banner): what builders let SSH in from."""
        addresses = [ipaddress.ip_address(w.address) for w in self.worker_hosts()]
        addresses.append(ipaddress.ip_address(self.bridge_address))
        network = ipaddress.ip_network(f"{addresses[0]}/32")
        while not all(a in network for a in addresses):
            network = network.supernet()
        return str(network)

    @property
    def url(self) -> str:
        return f"http://{self.bridge_address}:{self.port}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    # --- up ---------------------------------------------------------------------------------------------

    def up(self, timeout: float = 300) -> None:
        """Start everything (stopping first what an earlier ``up`` of this home left), wait until Airflow is
        healthy and every worker ready."""
        if not self.cloud.running() or not (self.cloud.state() and self.cloud.state().machines):
            raise DeploymentError("the deployment needs a running local cloud with machines: "
                                  "`python -m localcloud up` first")
        self.down()
        self.home.mkdir(parents=True, exist_ok=True)
        bridge = self.bridge_address
        with socket.socket() as sock:
            if sock.connect_ex((bridge, self.cloud.state().ec2_port)) != 0:
                raise DeploymentError(f"the local cloud's front does not listen on {bridge}: it was started "
                                      "before fronts listened on the bridge; restart it (python -m localcloud down/up)")
        record = Record(self.cloud.plan.slot, self.port)
        self._save(record)
        try:
            hosts_cidr = str(self.cloud.plan.hosts_network)  # the workers; and this host, by its bridge address
            self.pg = postgres.new_server(listen=(bridge,), clients=(hosts_cidr, f"{bridge}/32"),
                                          prefix="deployment-postgres-")
            record.postgres = {"bin": str(self.pg.bin), "root": str(self.pg.root), "port": self.pg.port,
                               "prefix": self.pg.prefix, "user": self.pg.user, "listen": list(self.pg.listen),
                               "clients": list(self.pg.clients)}
            self._save(record)
            record.redis_port = free_port(self.pg.port, self.port)
            self.redis = self._start_redis(record.redis_port)
            record.redis_pid, record.redis_started = self.redis.pid, process_start(self.redis.pid)
            self._save(record)
            self.stack = AirflowStack(self.home / "airflow", self.cloud, self.port, executor=EXECUTOR,
                                      host=bridge, database_url=self.pg.url_at(bridge),
                                      database_async_url=self.pg.url_at(bridge, "asyncpg"),
                                      parallelism=self.worker_count * self.concurrency,
                                      pool_slots=self.pool_slots, extra_env=self._airflow_env(record.redis_port))
            self.stack.start()
            self.stack.wait_until_healthy(timeout=timeout)
            self.workers = self.worker_hosts()
            for worker in self.workers:
                self._plug(worker)
                self.start_worker(worker)
                record.workers.append(asdict(worker))
                self._save(record)
            self.wait_for_workers(timeout=timeout)
        except BaseException:
            self.down()
            raise

    def _airflow_env(self, redis_port: int) -> dict[str, str]:
        bridge = self.bridge_address
        cloud = self.cloud.env(self.cloud.bridge_endpoint)
        return {
            # The workers are other hosts: the cloud API on the bridge, SSH from their own addresses.
            **{k: v for k, v in cloud.items() if k.startswith("AIRFLOW_CONN_")},
            **{f"AIRFLOW__IMAGE_FACTORY__{k}": cloud.get(f"AIRFLOW__IMAGE_FACTORY__{k}", "")
               for k in IMAGE_FACTORY_SETTINGS},
            "AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR": self.provisioner_cidr(),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{bridge}:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{postgres.SUPERUSER}@{bridge}:{self.pg.port}/"
                                               f"{postgres.DATABASE}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            **self.extra_env,
        }

    def _start_redis(self, port: int) -> subprocess.Popen:
        if not Path(REDIS_SERVER).exists():
            postgres.install_debian_package("redis-server")
        folder = self.home / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "redis.conf"
        # No password: it listens on loopback and the bridge only, which only this machine's namespaces reach.
        config.write_text("\n".join([
            f"bind {LOOPBACK} {self.bridge_address}", f"port {port}", "protected-mode no", "daemonize no",
            'save ""', "appendonly no", f"dir {folder}", 'logfile ""', ""]))
        log = self.home / "redis.log"
        with log.open("w") as output:
            process = subprocess.Popen([REDIS_SERVER, str(config)], stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        started = process_start(process.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DeploymentError(f"redis-server exited: {log.read_text()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex((self.bridge_address, port)) == 0:
                    return process
            time.sleep(0.1)
        end_sessions([(process.pid, started)], grace=5)  # not recorded yet: `down` would not find it
        process.wait(timeout=10)
        raise DeploymentError(f"redis-server does not listen on {self.bridge_address}:{port}; see {log}")

    # --- worker hosts -------------------------------------------------------------------------------------

    def _plug(self, worker: WorkerHost) -> None:
        """The worker's host: a network namespace with its address on a veth onto the bridge."""
        from localcloud.machines import plug_host

        self._unplug(worker)
        plug_host(self.cloud.plan, worker.netns, worker.veth, [worker.address])

    def _unplug(self, worker: WorkerHost) -> None:
        """Every process of the worker's host (by PID), its namespace and its veth (each if there)."""
        from localcloud.machines import kill_namespace_processes, run

        if Path(f"/run/netns/{worker.netns}").exists():
            kill_namespace_processes(worker.netns)
            run("ip", "netns", "del", worker.netns, check=False)
        run("ip", "link", "del", worker.veth, check=False)

    def start_worker(self, worker: WorkerHost) -> None:
        """``airflow celery worker`` inside the worker's host, under its own host name."""
        env = {**self.stack.env(), "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname"}
        command = ["ip", "netns", "exec", worker.netns, "unshare", "--uts", "--", "/bin/sh", "-c",
                   'hostname "$0" && exec "$@"', worker.name,
                   AIRFLOW, "celery", "worker", "--celery-hostname", worker.name, "--concurrency",
                   str(self.concurrency), "--skip-serve-logs", "--without-gossip", "--without-mingle"]
        with (self.home / worker.log_name).open("a") as log:
            process = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        worker.pid, worker.started = process.pid, process_start(process.pid)
        self.worker_processes[worker.name] = process
        record = self._load()
        if record:
            record.workers = [asdict(w) for w in self.workers]
            self._save(record)

    def kill_worker(self, name: str) -> None:
        """SIGKILL every process of a worker's host, as when that machine dies (its namespace stays)."""
        from localcloud.machines import kill_namespace_processes

        worker = self.worker(name)
        kill_namespace_processes(worker.netns)
        process = self.worker_processes.pop(worker.name, None)
        if process is not None:
            process.wait(timeout=30)

    def worker(self, name: str) -> WorkerHost:
        return next(w for w in self.workers if w.name == name)

    def wait_for_workers(self, names: list[str] | None = None, timeout: float = 120) -> None:
        """Until each worker's log says it is ready (it consumes from the broker)."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if names and worker.name not in names:
                continue
            log = self.home / worker.log_name
            while f"{worker.name} {WORKER_READY}" not in log.read_text(errors="replace")[-200_000:]:
                process = self.worker_processes.get(worker.name)
                if process is not None and process.poll() is not None:
                    raise DeploymentError(f"worker {worker.name} exited ({process.returncode}); see {log}:\n"
                                          f"{log.read_text(errors='replace')[-3000:]}")
                if time.monotonic() > deadline:
                    raise DeploymentError(f"worker {worker.name} not ready after {timeout} s; see {log}")
                time.sleep(0.5)

    # --- down -------------------------------------------------------------------------------------------

    def down(self) -> None:
        """End everything an ``up`` of this home started (this object's, or the recorded one's): each process
        with every process of its session, if it is still the one started (its id and start time), all at once;
        the workers' hosts with every process in them; then PostgreSQL. The record is kept if a process
        outlives it all."""
        record = self._load()
        workers = [*self.workers, *(WorkerHost(**w) for w in (record.workers if record else []))]
        stack = self.stack or AirflowStack(self.home / "airflow", self.cloud, self.port)
        sessions = {(w.pid, w.started) for w in workers}
        sessions |= {(c.process.pid, c.started) for c in stack.components if c.process is not None}
        sessions |= set(stack.recorded().values())
        if record:
            sessions.add((record.redis_pid, record.redis_started))
        if self.redis is not None and self.redis.poll() is None:  # our child, not reaped: its id is still its own
            sessions.add((self.redis.pid, process_start(self.redis.pid)))
        # At once: the slowest to end (the api-server, gracefully: seconds) sets the time.
        left: list = end_sessions(sessions, grace=30)
        for worker in workers:
            self._unplug(worker)
        for process in self.worker_processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.workers, self.worker_processes = [], {}
        try:  # nothing of theirs runs now: reap (this object's), forget the record
            if self.stack is not None:
                self.stack.stop()
            else:
                stack.stop_recorded()
        except AirflowStackError as exc:
            left.append(str(exc))
        self.stack = None
        if self.redis is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.redis.wait(timeout=10)
            self.redis = None
        pg = self.pg
        if pg is None and record and record.postgres:
            stored = record.postgres
            pg = postgres.Server(Path(stored["bin"]), Path(stored["root"]), stored["port"], stored["prefix"],
                                 stored["user"], tuple(stored["listen"]), tuple(stored["clients"]))
        if pg is not None:
            postgres.remove(pg)
        self.pg = None
        if left:
            raise DeploymentError(f"processes of the deployment outlive SIGKILL: {left}; {self.record_file} is kept")
        self.record_file.unlink(missing_ok=True)

    def __enter__(self) -> Deployment:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def status(self) -> dict:
        record = self._load()
        if record is None:
            return {"running": False}
        return {"running": True, "url": f"http://{self.cloud.plan.bridge_address}:{record.port}",
                "workers": {w["name"]: {"address": w["address"], "netns": w["netns"],
                                        "alive": _alive_in(w["netns"])} for w in record.workers},
                "postgres_port": record.postgres.get("port"), "redis_port": record.redis_port}

    def _save(self, record: Record) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text(json.dumps(asdict(record), indent=1))

    def _load(self) -> Record | None:
        if not self.record_file.exists():
            return None
        try:
            return Record(**json.loads(self.record_file.read_text()))
        except (ValueError, TypeError):
            return None


def _alive_in(netns: str) -> bool:
    from localcloud.machines import _namespace_inode, namespace_pids

    inode = _namespace_inode(f"/run/netns/{netns}")
    return bool(inode and namespace_pids(inode))

