"""`make airflow-ui`: the Airflow UI on the local cloud, in the foreground; Ctrl-C stops what it started.

Starts the local cloud (unless it runs already: then it is used and left running), then Airflow's scheduler,
dag-processor, triggerer and api-server (LocalExecutor, SQLite, AIRFLOW_HOME .airflow-ui/) on 127.0.0.1,
and prints the URL and the login.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from localcloud.airflow_stack import (  # noqa: E402
    DEFAULT_HOME,
    DEFAULT_PORT,
    POOL,
    AirflowStack,
    AirflowStackError,
)
from localcloud.cloud import DEFAULT_STATE, LocalCloud, LocalCloudError  # noqa: E402


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def say(text: str, error: bool = False) -> None:
    """Print, and never fail: Ctrl-C may have closed a pipe we print to (`make airflow-ui | tee`)."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the api-server's port on 127.0.0.1")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="AIRFLOW_HOME (default: .airflow-ui)")
    parser.add_argument("--cloud-state-dir", type=Path, default=DEFAULT_STATE, help="the local cloud's state")
    parser.add_argument("--max-hours", type=float, default=12.0,
                        help="stop everything after this long (default 12), as Ctrl-C would")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    cloud = LocalCloud(args.cloud_state_dir)
    started_cloud = False
    stack = AirflowStack(args.home, cloud, args.port)
    try:
        if cloud.running():
            say(f"airflow-ui: using the local cloud that runs already ({cloud.state_dir})")
        else:
            say("airflow-ui: starting the local cloud")
            cloud.up()
            started_cloud = True
        say(f"airflow-ui: {cloud.summary()}")
        say(f"airflow-ui: migrating the database and starting Airflow in {stack.home} ...")
        stack.start()
        stack.wait_until_healthy(timeout=300)
        username, password = stack.credentials()
        say("\n".join([
            "",
            f"  Airflow UI   {stack.url}",
            f"  login        {username} / {password}   (kept in {stack.password_file})",
            "  components   api-server, scheduler, dag-processor, triggerer (LocalExecutor, SQLite)",
            f"  their logs   {stack.home}/<component>.log     task logs: {stack.task_logs}",
            f"  pool         {POOL} (the build steps that call the cloud API)",
            "  Build: open a DAG, press Trigger, change params in the form and press Trigger. DAGs are created",
            "  paused (nightly builds): the form's \"Unpause ... on trigger\" box, on by default, lets the run start,",
            "  and the scheduler then also runs the latest missed nightly build, first.",
            "",
            "  Ctrl-C stops Airflow" + (" and the local cloud." if started_cloud else "."),
            "",
        ]))
        deadline = time.monotonic() + args.max_hours * 3600
        while time.monotonic() < deadline:
            if dead := stack.exited():
                component = dead[0]
                say(f"airflow-ui: the {component.name} exited ({component.process.returncode}); last lines of "
                    f"{component.log}:\n{component.log.read_text(errors='replace')[-3000:]}", error=True)
                return 1
            time.sleep(1)
        say(f"airflow-ui: {args.max_hours} hours are up; stopping")
        return 0
    except KeyboardInterrupt:
        say("\nairflow-ui: stopping")
        return 0
    except (AirflowStackError, LocalCloudError) as exc:
        say(f"airflow-ui: {exc}", error=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        stack.stop()
        if started_cloud:
            cloud.down()
        say("airflow-ui: stopped" + (" Airflow and the local cloud" if started_cloud else " Airflow"))


if __name__ == "__main__":
    sys.exit(main())
