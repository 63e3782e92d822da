"""Run an image-build DAG for real (``airflow dags test``) against the local cloud, and read the result.

Shared by the demo and the tests: one Airflow process runs a whole DAG run on SQLite; setup and teardown
behave as they do under a scheduler.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.cloud import PROJECT, LocalCloud

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
TASK_FAILED = re.compile(r"Task failed with exception")
RUN_FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+), .*run_id=([^,]+), .*state=(\w+),")


#: How every Airflow process finds and loads the DAGs and the plugin (docker-compose.yaml: the same, its folders
#: mounted; tests/test_docker_compose.py).
PLUGIN_SETTINGS = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    # Every process loads the plugins at its start (image_factory_plugin.py readies the task processes).
    "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
}


def airflow_env(cloud: LocalCloud, airflow_home: Path, **settings: str) -> dict[str, str]:
    """The environment of an Airflow process that builds on ``cloud``, with extra [image_factory] settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        **PLUGIN_SETTINGS,
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        **cloud.env(),
    })
    env.update({f"AIRFLOW__IMAGE_FACTORY__{k.upper()}": v for k, v in settings.items()})
    return env


def migrate(env: dict[str, str]) -> None:
    result = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@dataclass
class DagRunResult:
    dag_id: str
    exit_code: int
    output: str
    run_id: str = ""
    state: str = ""
    task_logs: dict[str, str] = field(default_factory=dict)
    task_states: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.state == "success"


def run_dag(dag_id: str, env: dict[str, str], *, conf: str | None = None,
            on_line: Callable[[str], None] | None = None, timeout: float = 600) -> DagRunResult:
    """Run one DAG run to the end; each task's log is cut out of the output by Airflow's own markers."""
    command = [AIRFLOW, "dags", "test", dag_id] + (["--conf", conf] if conf else [])
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=PROJECT)
    lines: list[str] = []
    result = DagRunResult(dag_id, -1, "")
    current: str | None = None
    watchdog = threading.Timer(timeout, process.kill)  # a hung run must not hang its caller
    watchdog.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if on_line:
                on_line(line)
            if m := TASK_START.search(line):
                current = m.group(1)
                result.task_states[current] = "running"
            elif m := TASK_END.search(line):
                if result.task_states.get(m.group(1)) == "running":
                    result.task_states[m.group(1)] = "success"
                current = None
            elif m := RUN_FINISHED.search(line):
                result.run_id, result.state = m.group(2), m.group(3)
            if current:
                result.task_logs[current] = result.task_logs.get(current, "") + line
                if TASK_FAILED.search(line):
                    result.task_states[current] = "failed"
        result.exit_code = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    result.output = "".join(lines)
    return result
