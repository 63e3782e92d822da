"""Where the benchmark's Airflow deployments run (the concurrency benchmark's and the floor's): a work folder, the
code measured (the working tree, or a snapshot of a git ref), N copies of the shipped spec, the local cloud, the
environment of every Airflow process, and the Celery deployment of so many task slots."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import yaml

from bench.cloud import POLL, fresh_cloud
from localcloud.cloud import LocalCloud, free_port

PROJECT = Path(__file__).resolve().parents[1]
SPEC = "shopspinner-linux-image"


def code(work: Path, ref: str | None) -> tuple[Path, dict[str, str], str]:
    """The code the stack runs: the working tree (``ref`` None), or a snapshot of ``dags/``, ``plugins/`` and
    ``include/`` at a git ref in ``work`` (so that edits made meanwhile do not change a running benchmark).
    Returns its root, the environment that points Airflow at it, and a description."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    if not ref:
        changed = git("status", "--porcelain", "--", "dags", "plugins", "include")
        return PROJECT, {}, (f"the working tree at {git('rev-parse', '--short', 'HEAD')}"
                             + (" with uncommitted changes in dags/, plugins/ or include/" if changed else ""))
    commit = git("rev-parse", "--short", f"{ref}^{{commit}}")
    root = work / "code"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(PROJECT), "archive", "--format=tar", commit, "dags", "plugins",
                              "include"], capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True, timeout=120)
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
           "PYTHONPATH": f"{root / 'plugins'}:{PROJECT}"}
    return root, env, f"commit {commit} ({ref}; dags/, plugins/ and include/ exported to {root})"


def write_specs(folder: Path, builds: int, source: Path = PROJECT) -> list[str]:
    """N copies of the spec, each with a name of its own and no schedule (unpausing starts no run)."""
    folder.mkdir(parents=True)
    text = (source / "include/specs" / f"{SPEC}.yaml").read_text()
    text = "".join(line for line in text.splitlines(keepends=True) if not line.strip().startswith("schedule:"))
    name_line = re.compile(rf"^(\s*name:\s*){re.escape(SPEC)}\s*$", re.MULTILINE)
    if len(name_line.findall(text)) != 1:
        raise RuntimeError(f"include/specs/{SPEC}.yaml: expected one `name: {SPEC}` line")
    width = len(str(builds - 1))
    names = [f"{SPEC}-{i:0{width}d}" for i in range(builds)]
    for name in names:
        (folder / f"{name}.yaml").write_text(name_line.sub(rf"\g<1>{name}", text))
    return names


#: The machines these benchmarks boot, for the results: sshd as PID 1, no init (localcloud/machines.py).
MACHINES = ("the light machines (sshd as PID 1, no init: 50 to 100 builders and test instances at once, each "
            "booting systemd and cloud-init, are more than this 2-core machine has)")
#: The spec's image tests that need a running service: on a machine without init the role's service is installed
#: and enabled, but nothing starts it. The builds run the spec's other tests.
NEEDS_INIT = ("test_the_application_server_runs_after_boot", "test_it_answers_with_the_page_the_role_wrote",
              "test_nginx_runs_the_workers_the_configuration_asks_for")
LIGHT_TESTS = """\"\"\"The tests of {shipped} but those of a running service (bench/deployments.py: NEEDS_INIT).\"\"\"
import importlib.util

_spec = importlib.util.spec_from_file_location("shipped_tests", {shipped!r})
_shipped = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shipped)
globals().update({{name: test for name, test in vars(_shipped).items()
                  if name.startswith("test_") and name not in {skipped!r}}})
"""


def write_light_tests(folder: Path, source: Path) -> None:
    """The spec's tests as a machine without init can pass them, in ``folder`` (the builds' tests folder): the
    shipped test modules imported (not copied), less :data:`NEEDS_INIT`."""
    tests = yaml.safe_load((source / "include/specs" / f"{SPEC}.yaml").read_text())["image"]["test"]["tests"]
    shipped = sorted((source / "include/tests" / tests).glob("test_*.py"))
    texts = "".join(path.read_text() for path in shipped)
    if gone := [name for name in NEEDS_INIT if f"def {name}(" not in texts]:
        raise RuntimeError(f"bench/deployments.py NEEDS_INIT names tests include/tests/{tests}/ no longer has: {gone}")
    (folder / tests).mkdir(parents=True)
    for path in shipped:
        (folder / tests / path.name).write_text(LIGHT_TESTS.format(shipped=str(path), skipped=NEEDS_INIT))


def environment(work: Path, source: Path, code_env: dict[str, str], settings: dict[str, str]) -> dict[str, str]:
    """What the benchmark adds to the environment of every Airflow process it starts; ``settings`` last."""
    return {"AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL": str(POLL),
            "AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(work / "specs"),
            "AIRFLOW__IMAGE_FACTORY__TESTS_FOLDER": str(work / "tests"),
            "AIRFLOW__IMAGE_FACTORY__ROLES_FOLDER": str(source / "include/roles"),
            # One DAG file makes all N DAGs: give its parse room on a loaded machine.
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300", **code_env, **settings}


@contextlib.contextmanager
def prepared(prefix: str, builds: int, ref: str | None, settings: dict[str, str]):
    """A work folder, the code measured, the local cloud up (the region built in only: the local sshd's key lookup
    asks every region at each login) and ``builds`` specs: yields (work, cloud, source, names, the environment of
    the Airflow processes, the code's description); the cloud goes down after."""
    # The work folder stays: the samples and the task logs, for a second look (bench/README.md).
    with fresh_cloud(prefix, init="sshd", keep_work=True) as (work, cloud):  # MACHINES
        source, code_env, code_text = code(work, ref)
        print(f"work in {work}; code: {code_text}", flush=True)
        names = write_specs(work / "specs", builds, source)
        write_light_tests(work / "tests", source)
        yield work, cloud, source, names, environment(work, source, code_env, settings), code_text


def celery_deployment(folder: Path, cloud: LocalCloud, workers: int, parallelism: int, extra_env: dict[str, str]):
    """The Celery deployment (localcloud/deployment.py) of ``workers`` hosts and ``parallelism`` task slots in all
    (the image_factory pool as many, so that only the workers bound the runs), with ``extra_env``."""
    from localcloud.deployment import Deployment

    return Deployment(folder, cloud, port=free_port(), workers=workers, concurrency=max(1, parallelism // workers),
                      pool_slots=parallelism, extra_env=extra_env)
