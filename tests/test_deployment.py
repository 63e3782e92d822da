"""The Celery deployment (localcloud/deployment.py) under load and faults: builds on the local cloud's machines,
run by two Celery workers that are hosts of their own on the cloud's bridge.

One deployment for the whole module (it takes a minute to start). Each test prints its figure. The builds use
small specs of their own (no tests, no promotion) and a role folder of the test's: `quick` (a line of output)
and `slow` (25 s of sleep on the builder: a window for the faults in `configure`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from image_factory.build import build_id_for
from image_factory.inventory import builder_resources
from image_factory.steps.image import find as find_images
from localcloud.airflow_stack import AirflowStackError
from localcloud.cloud import LOOPBACK, PROJECT, free_port
from localcloud.deployment import REDIS_SERVER, Deployment
from localcloud.postgres import bin_dir

REGION = "eu-west-1"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
BUILDS = 10
NAMES = [f"deploy-image-{n:02d}" for n in range(BUILDS)]
SPEC = """\
image:
  name: {name}
  platform: aws
  origin: resolve:ssm:{origin}
  region: eu-west-1
  instance_size: small
  subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
  ssh_key: ${{IMAGE_BUILDER_SSH_KEY}}
  configure:
    tool: shell
    code_repo: servermaker.shopspinner.xyz
    server_role: quick
"""
ROLES = {
    "quick": 'echo "deploy role: configured on $(hostname)"\n',
    "slow": 'echo "deploy role: slow start"\nsleep 25\necho "deploy role: slow done"\n',
}
#: The fault settings the tests rely on: a dead worker's task is failed after 20 s without a heartbeat (checked
#: every 5 s) and retried 2 s later; a dead triggerer's triggers move after 10 s.
FAULT_SETTINGS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__IMAGE_FACTORY__RETRY_DELAY": "2",
}
#: The calls that create something: each at most once per build, whatever the fault.
CREATES = ("ec2:RunInstances", "ec2:CreateImage", "ec2:CreateSecurityGroup", "ec2:CreateSubnet", "ec2:CreateVpc",
           "ec2:CreateKeyPair", "ec2:ImportKeyPair")
RUN_TIMEOUT = 240

missing = [what for what, there in (("root", os.geteuid() == 0), ("Debian's redis-server", Path(REDIS_SERVER).exists()),
                                    ("Debian's postgresql", bin_dir() is not None)) if not there]
if missing:
    pytest.skip(f"the deployment needs {', '.join(missing)} (scripts/setup.sh installs the packages)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def deployment(local_cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("deployment")
    specs, roles = work / "specs", work / "roles"
    specs.mkdir()
    for name in NAMES:
        (specs / f"{name}.yaml").write_text(SPEC.format(name=name, origin=AL2023))
    for role, script in ROLES.items():
        (roles / role).mkdir(parents=True)
        (roles / role / "10-role.sh").write_text("set -eu\n" + script)
    target = Deployment(work / "home", local_cloud, port=free_port(), extra_env={
        "AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(specs), "AIRFLOW__IMAGE_FACTORY__ROLES_FOLDER": str(roles),
        **FAULT_SETTINGS})
    started = time.monotonic()
    try:
        target.up()
        for name in NAMES:
            target.stack.wait_for_dag(name, timeout=180)
            target.stack.api("PATCH", f"/dags/{name}", {"is_paused": False})
        print(f"\ndeployment: up in {time.monotonic() - started:.0f} s at {target.url}, workers "
              + ", ".join(f"{w.name} {w.address}" for w in target.workers))
        yield target
    finally:
        hosts = list(target.workers)
        pids = [c.process.pid for c in target.stack.components if c.process] if target.stack else []
        pids += [target.redis.pid] if target.redis else []
        pids += [w.pid for w in hosts]
        target.down()
    # Nothing of it is left: no namespace, veth or process.
    assert not [w.netns for w in hosts if Path(f"/run/netns/{w.netns}").exists()]
    assert not [w.veth for w in hosts if Path(f"/sys/class/net/{w.veth}").exists()]
    assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(autouse=True)
def whole_deployment(deployment):
    """Each test starts with every component running: a fault an earlier test left behind fails that test
    alone, not each one after it."""
    restart_exited(deployment)
    deployment.stack.wait_until_healthy(timeout=180)


def restart_exited(deployment: Deployment) -> list[str]:
    """Every component that has exited started again, as systemd or Compose would; their names."""
    exited = [component.name for component in deployment.stack.exited()]
    for name in exited:
        deployment.stack.restart(name)
    return exited


@pytest.fixture
def clients(local_cloud):
    def client(service):
        return boto3.client(service, endpoint_url=local_cloud.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
    return client("ec2"), client("ssm")


# --- helpers ---------------------------------------------------------------------------------------------------

def trigger(deployment: Deployment, dag_id: str, conf: dict | None = None) -> str:
    return deployment.stack.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})[
        "dag_run_id"]


def run_state(deployment: Deployment, dag_id: str, run_id: str) -> str:
    return deployment.stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]


def wait_run(deployment: Deployment, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT,
             supervised: list[str] | None = None) -> str:
    """The run's end state. With ``supervised`` (a list), a component that exits meanwhile is started again at
    once and named in the list (a lost database ends the triggerer 10 s later, or more under load: one look
    after a fixed sleep missed it, and the build then waited for ever)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervised is not None:
            supervised += restart_exited(deployment)
        try:
            state = run_state(deployment, dag_id, run_id)
        except AirflowStackError:  # the api-server restarting
            state = "unknown"
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise AssertionError(f"{dag_id} {run_id} not finished after {timeout} s; tasks: "
                         f"{task_states(deployment, dag_id, run_id)}")


def task_instances(deployment: Deployment, dag_id: str, run_id: str) -> dict[str, dict]:
    answer = deployment.stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    return {ti["task_id"]: ti for ti in answer["task_instances"]}


def task_states(deployment: Deployment, dag_id: str, run_id: str) -> dict[str, str]:
    return {task: ti["state"] for task, ti in task_instances(deployment, dag_id, run_id).items()}


def tries(deployment: Deployment, dag_id: str, run_id: str, task_id: str) -> list[dict]:
    return deployment.stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")[
        "task_instances"]


def wait_task(deployment: Deployment, dag_id: str, run_id: str, task_id: str, states: set[str],
              timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = task_instances(deployment, dag_id, run_id).get(task_id)
        if ti and ti["state"] in states:
            return ti
        time.sleep(0.5)
    raise AssertionError(f"{task_id} of {run_id} not {states} after {timeout} s: "
                         f"{task_states(deployment, dag_id, run_id)}")


def wait_log(deployment: Deployment, dag_id: str, run_id: str, task_id: str, text: str, timeout: float = 120):
    """Until the task's first try's log (the folder every host shares) holds ``text``."""
    log = deployment.stack.task_logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}" / "attempt=1.log"
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} not in {log} after {timeout} s"
        time.sleep(0.5)


def python_warnings(deployment: Deployment, dag_id: str, run_id: str) -> list[str]:
    """The Python warnings (logger ``py.warnings``) in every task log of the run: task, category, text."""
    found = []
    for log in (deployment.stack.task_logs / f"dag_id={dag_id}" / f"run_id={run_id}").glob("task_id=*/attempt=*.log"):
        for line in log.read_text(errors="replace").splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("logger") == "py.warnings":
                found.append(f"{log.parent.name}: {entry.get('category')}: {entry.get('event')}")
    return found


def creates(calls: dict[str, int]) -> dict[str, int]:
    return {action: count for action, count in calls.items() if action in CREATES}


def assert_clean_build(deployment: Deployment, ec2, ssm, dag_id: str, run_id: str) -> str:
    """The run succeeded, its image is complete and alone, nothing of its builder is left; its build id."""
    build_id = build_id_for(dag_id, run_id)
    assert run_state(deployment, dag_id, run_id) == "success", task_states(deployment, dag_id, run_id)
    images = find_images(ec2, build_id)
    assert len(images) == 1, images
    assert builder_resources(ec2, ssm, build_id) == []
    return build_id


# --- the tests ---------------------------------------------------------------------------------------------------

def test_ten_builds_at_once_spread_over_both_workers(deployment, local_cloud, clients):
    ec2, ssm = clients
    local_cloud.reset_stats()
    started = time.monotonic()
    runs = {name: trigger(deployment, name) for name in NAMES}
    states = {name: wait_run(deployment, name, run_id) for name, run_id in runs.items()}
    wall = time.monotonic() - started
    assert set(states.values()) == {"success"}, states
    hosts: dict[str, int] = {}
    for name, run_id in runs.items():
        for ti in task_instances(deployment, name, run_id).values():
            if ti["state"] == "success":
                hosts[ti["hostname"]] = hosts.get(ti["hostname"], 0) + 1
    assert set(hosts) == {w.name for w in deployment.workers}, hosts
    for name, run_id in runs.items():
        assert_clean_build(deployment, ec2, ssm, name, run_id)
    made = creates(local_cloud.stats()["calls"])
    assert made["ec2:RunInstances"] == BUILDS and made["ec2:CreateImage"] == BUILDS, made
    # Logs a reader can trust: no Python warning in any task log (the plugins folder's .airflowignore warned in
    # every one with pathspec 1.x), and a JWT key long enough for HS512 (a 43-byte one warned at every token).
    warned = [w for name, run_id in runs.items() for w in python_warnings(deployment, name, run_id)]
    assert warned == [], warned[:5]
    for component in ("api-server", "scheduler"):
        assert "InsecureKeyLengthWarning" not in (deployment.stack.home / f"{component}.log").read_text()
    print(f"\n{BUILDS} builds at once: all succeeded in {wall:.0f} s; tasks per worker {hosts}; "
          f"builder resources left: 0; creates {made}")


def test_a_killed_worker_s_configure_runs_again_on_the_other(deployment, local_cloud, clients):
    ec2, ssm = clients
    dag_id = NAMES[0]
    local_cloud.reset_stats()
    run_id = trigger(deployment, dag_id, {"server_role": "slow"})
    wait_log(deployment, dag_id, run_id, "configure", "deploy role: slow start")  # the role is under way
    ti = wait_task(deployment, dag_id, run_id, "configure", {"running"})
    victim = ti["hostname"]
    other = next(w.name for w in deployment.workers if w.name != victim)
    killed = time.monotonic()
    deployment.kill_worker(victim)
    try:
        state = wait_run(deployment, dag_id, run_id, timeout=RUN_TIMEOUT)
        finished = time.monotonic() - killed
        attempts = tries(deployment, dag_id, run_id, "configure")
    finally:
        deployment.start_worker(deployment.worker(victim))
        deployment.wait_for_workers([victim])
    assert state == "success", task_states(deployment, dag_id, run_id)
    assert [a["hostname"] for a in attempts][:1] == [victim] and attempts[-1]["hostname"] == other, attempts
    assert attempts[-1]["state"] == "success" and len(attempts) >= 2, attempts
    assert_clean_build(deployment, ec2, ssm, dag_id, run_id)
    made = creates(local_cloud.stats()["calls"])
    assert all(count == 1 for count in made.values()) and made["ec2:RunInstances"] == 1, made
    print(f"\nworker {victim} killed in configure: it ran again on {other} (tries "
          f"{[(a['try_number'], a['hostname'], a['state']) for a in attempts]}); build succeeded "
          f"{finished:.0f} s after the kill; creates {made}")


def test_a_killed_triggerer_s_image_wait_is_taken_over(deployment, local_cloud, clients):
    ec2, ssm = clients
    dag_id = NAMES[1]
    local_cloud.reset_stats()
    local_cloud.configure(latency={"image_available": 30})
    try:
        run_id = trigger(deployment, dag_id)
        wait_task(deployment, dag_id, run_id, "register_image", {"deferred"})
        deadline = time.monotonic() + 60
        while local_cloud.stats()["calls"].get("ec2:CreateImage", 0) < 1:
            assert time.monotonic() < deadline, "no CreateImage while register_image waits"
            time.sleep(0.5)
        killed = time.monotonic()
        deployment.stack.kill("triggerer")
        deployment.stack.restart("triggerer")
        state = wait_run(deployment, dag_id, run_id)
        finished = time.monotonic() - killed
    finally:
        local_cloud.configure(latency={"image_available": 0})
    assert state == "success", task_states(deployment, dag_id, run_id)
    assert_clean_build(deployment, ec2, ssm, dag_id, run_id)
    made = creates(local_cloud.stats()["calls"])
    # The wait taken over starts again: a second CreateImage may be asked and is refused (the name is the
    # build's: InvalidAMIName.Duplicate), then the same image is waited for. Nothing else is made again.
    assert made["ec2:CreateImage"] in (1, 2), made
    assert all(count == 1 for action, count in made.items() if action != "ec2:CreateImage"), made
    print(f"\ntriggerer killed while the image was pending: the new one took the wait over; build succeeded "
          f"{finished:.0f} s after the kill with one image; creates {made}")


def test_a_killed_scheduler_restarted_mid_build(deployment, local_cloud, clients):
    ec2, ssm = clients
    dag_id = NAMES[2]
    local_cloud.reset_stats()
    run_id = trigger(deployment, dag_id, {"server_role": "slow"})
    wait_task(deployment, dag_id, run_id, "configure", {"running"})
    deployment.stack.kill("scheduler")
    time.sleep(5)
    restarted = time.monotonic()
    deployment.stack.restart("scheduler")
    state = wait_run(deployment, dag_id, run_id)
    assert state == "success", task_states(deployment, dag_id, run_id)
    assert_clean_build(deployment, ec2, ssm, dag_id, run_id)
    made = creates(local_cloud.stats()["calls"])
    assert all(count == 1 for count in made.values()), made
    print(f"\nscheduler killed in configure, restarted 5 s later: build succeeded "
          f"{time.monotonic() - restarted:.0f} s after the restart; creates {made}")


def test_postgres_restarts_mid_build(deployment, local_cloud, clients):
    ec2, ssm = clients
    dag_id = NAMES[3]
    local_cloud.reset_stats()
    run_id = trigger(deployment, dag_id, {"server_role": "slow"})
    wait_task(deployment, dag_id, run_id, "configure", {"running"})
    down = deployment.pg.restart()
    restarted: list[str] = []
    state = wait_run(deployment, dag_id, run_id, supervised=restarted)
    assert state == "success", task_states(deployment, dag_id, run_id)
    assert set(task_states(deployment, dag_id, run_id).values()) == {"success"}
    assert_clean_build(deployment, ec2, ssm, dag_id, run_id)
    made = creates(local_cloud.stats()["calls"])
    assert all(count == 1 for count in made.values()), made
    print(f"\nPostgreSQL restarted in configure (down {down:.1f} s): build succeeded; components that exited "
          f"and were started again: {restarted or 'none'}; creates {made}")


def test_everything_killed_then_back_leaves_nothing(deployment, local_cloud, clients):
    ec2, ssm = clients
    dag_id = NAMES[4]
    run_id = trigger(deployment, dag_id, {"server_role": "slow"})
    wait_task(deployment, dag_id, run_id, "configure", {"running"})
    build_id = build_id_for(dag_id, run_id)
    assert builder_resources(ec2, ssm, build_id)
    killed = time.monotonic()
    for worker in deployment.workers:
        deployment.kill_worker(worker.name)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        deployment.stack.kill(name)
    time.sleep(15)  # the deployment is down
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        deployment.stack.restart(name)
    for worker in deployment.workers:
        deployment.start_worker(worker)
    deployment.stack.wait_until_healthy(timeout=180)
    deployment.wait_for_workers()
    state = wait_run(deployment, dag_id, run_id, timeout=RUN_TIMEOUT)
    left = builder_resources(ec2, ssm, build_id)
    swept = False
    if left:  # the teardown did not run: the sweeper's turn, with no grace
        swept = True
        deployment.stack.api("PATCH", "/dags/image_factory_sweeper", {"is_paused": False})
        sweep = trigger(deployment, "image_factory_sweeper", {"grace_minutes": 0})
        assert wait_run(deployment, "image_factory_sweeper", sweep) == "success"
        deployment.stack.api("PATCH", "/dags/image_factory_sweeper", {"is_paused": True})
        left = builder_resources(ec2, ssm, build_id)
    clean = time.monotonic() - killed
    assert state in ("success", "failed")
    assert left == []
    print(f"\nevery Airflow process killed in configure, back 15 s later: the run ended {state}; "
          f"{'the sweeper' if swept else 'its teardown'} left nothing, {clean:.0f} s after the kill")


def test_the_rest_client_triggers_follows_and_reads_the_log(deployment):
    from airflow_client import client
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.api.task_instance_api import TaskInstanceApi

    dag_id = NAMES[5]
    configuration = client.Configuration(host=deployment.url, access_token=deployment.stack.token())
    started = time.monotonic()
    with client.ApiClient(configuration) as api:
        runs, tasks = DagRunApi(api), TaskInstanceApi(api)
        run = runs.trigger_dag_run(dag_id, client.TriggerDAGRunPostBody(
            logical_date=None, conf={"instance_size": "medium"}))
        assert run.conf["instance_size"] == "medium"
        seen: dict[str, str] = {}
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            for ti in tasks.get_task_instances(dag_id, run.dag_run_id).task_instances:
                seen[ti.task_id] = ti.state.value if hasattr(ti.state, "value") else str(ti.state)
            state = runs.get_dag_run(dag_id, run.dag_run_id).state
            if str(getattr(state, "value", state)) in ("success", "failed"):
                break
            time.sleep(1)
        final = runs.get_dag_run(dag_id, run.dag_run_id)
        assert str(getattr(final.state, "value", final.state)) == "success", seen
        configure = tasks.get_task_instance(dag_id, run.dag_run_id, "configure")
        log = tasks.get_log(dag_id, run.dag_run_id, "configure", configure.try_number, full_content=True)
    text = str(log.content)
    assert "deploy role: configured on" in text, text[-2000:]
    assert set(seen.values()) == {"success"} and "configure" in seen, seen
    print(f"\nREST client (apache-airflow-client): triggered {dag_id} with a conf, followed {len(seen)} task "
          f"instances to success in {time.monotonic() - started:.0f} s, read the configure log "
          f"({len(text)} characters, from {configure.hostname})")


# --- last: the deployment's end, as `make deployment-down` ends it -----------------------------------------------

def test_down_from_another_process_leaves_nothing_then_up_again(deployment, local_cloud, clients):
    """Issue 28: a build, then ``python -m localcloud deployment-down`` in another process (what ``make
    deployment-down`` runs) ends every process of the deployment (the api-server, renamed by setproctitle, too):
    nothing listens on its addresses, no recorded process (nor one of its process group) is left, and ``up``
    succeeds again. Last in the module: the fixture's teardown ends the deployment started again."""
    ec2, ssm = clients
    dag_id = NAMES[6]
    run_id = trigger(deployment, dag_id)
    assert wait_run(deployment, dag_id, run_id) == "success", task_states(deployment, dag_id, run_id)
    assert_clean_build(deployment, ec2, ssm, dag_id, run_id)

    bridge = deployment.bridge_address
    record = json.loads(deployment.record_file.read_text())
    addresses = {"api-server": [(bridge, deployment.port)],
                 "redis": [(bridge, record["redis_port"]), (LOOPBACK, record["redis_port"])],
                 "postgres": [(bridge, record["postgres"]["port"]), (LOOPBACK, record["postgres"]["port"])]}
    for name, (address, port) in ((n, a[0]) for n, a in addresses.items()):
        assert connects(address, port), f"the {name} does not listen on {address}:{port}"
    leaders = {c.name: c.process.pid for c in deployment.stack.components}
    leaders |= {"redis": record["redis_pid"], **{w["name"]: w["pid"] for w in record["workers"]}}
    postmaster = deployment.pg.pid()
    processes = group_members(set(leaders.values())) | {postmaster} | children(postmaster)
    assert set(leaders.values()) <= processes and all(alive(pid) for pid in leaders.values()), leaders

    started = time.monotonic()
    down = subprocess.run([sys.executable, "-m", "localcloud", "deployment-down", "--deployment-home",
                           str(deployment.home), "--state-dir", str(local_cloud.state_dir)],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert down.returncode == 0, down.stderr[-3000:]

    still = [f"{name} on {address}:{port}" for name, pairs in addresses.items() for address, port in pairs
             if connects(address, port)]
    ports = {port for pairs in addresses.values() for _, port in pairs}
    sockets = [line for line in subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30
                                               ).stdout.splitlines()
               if any(line.split()[3].endswith(f":{port}") for port in ports)]
    left = {pid: command_line(pid) for pid in processes if alive(pid)}
    assert still == [] and sockets == [] and left == {}, (still, sockets, left)
    assert not deployment.record_file.exists()

    deployment.up()  # as `make deployment-up` again: it used to stop at "something already listens on ..."
    assert connects(bridge, deployment.port)
    print(f"\ndeployment-down from another process after a build: {len(processes)} processes of "
          f"{len(leaders)} recorded ids ended in {took:.0f} s, nothing listens on "
          f"{sorted(ports)}; up again at {deployment.url}")


def connects(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == 0


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's name (field 3, the state, first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def group_members(groups: set[int]) -> set[int]:
    """Every live process whose process group is one of ``groups``."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[2]) in groups:
            found.add(int(entry.name))
    return found


def children(pid: int | None) -> set[int]:
    if not pid:
        return set()
    return {int(entry.name) for entry in os.scandir("/proc")
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid}


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
