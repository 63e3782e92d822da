"""The main job: build shopspinner-linux-image through a real Airflow DAG run on the local cloud.

Starts the local cloud (unless it runs already), runs the DAG, prints each step as it goes, then the AMI,
its tags, the answer the service gave on the image's test boot (logged by its tests), and the builder resources
created and deleted, checked against the emulator. Exits non-zero if
the build failed or left anything behind.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "plugins")]

import boto3  # noqa: E402

from image_factory.build import build_id_for  # noqa: E402
from image_factory.inventory import builder_resources  # noqa: E402
from image_factory.steps.image import find as find_images  # noqa: E402
from localcloud.cloud import PROJECT, LocalCloud  # noqa: E402
from localcloud.runner import TASK_END, TASK_START, airflow_env, migrate, run_dag  # noqa: E402

# Lines of our steps' logger and of the SSH hook (which streams the remote output).
STEP_LINE = re.compile(r"\] (.*?)\s+\[(image_factory|airflow\.task\.hooks\.airflow\.providers\.ssh\.hooks\.ssh\.\w+)\]")
# What the shipped tests log of the service's answer on the new image's test boot (include/tests/appserver).
ANSWER = re.compile(r"the application server answered on port (\d+): (.*?)\s+\[image_factory\]")
RESOURCE = re.compile(r"^(created|deleted) (vpc|subnet|security-group|key-pair|ssm-parameter|instance) (\S+)")


class Progress:
    """Turns Airflow's output into one line per step and the steps' own messages."""

    def __init__(self):
        self.started: dict[str, float] = {}
        self.current = ""
        self.failed: set[str] = set()
        self.created: list[str] = []
        self.deleted: list[str] = []

    def __call__(self, line: str) -> None:
        if m := TASK_START.search(line):
            self.current = m.group(1)
            self.started[self.current] = time.monotonic()
            print(f"▶ {m.group(1)}", flush=True)
        elif m := TASK_END.search(line):
            task = m.group(1)
            took = time.monotonic() - self.started.get(task, time.monotonic())
            print(f"{'✗' if task in self.failed else '✓'} {task} ({took:.1f} s)", flush=True)
        elif "Task failed with exception" in line:
            self.failed.add(self.current)
        elif m := STEP_LINE.search(line):
            message = m.group(1)
            print(f"    {message}", flush=True)
            if r := RESOURCE.match(message):
                (self.created if r.group(1) == "created" else self.deleted).append(f"{r.group(2)} {r.group(3)}")
        elif line.startswith(("botocore.", "image_factory.", "airflow.sdk.exceptions", "RuntimeError",
                              "TimeoutError")) or "RemoteCommandError" in line:
            print(f"    ! {line.rstrip()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dag", default="shopspinner-linux-image")
    parser.add_argument("--keep-cloud", action="store_true", help="leave the local cloud running afterwards")
    args = parser.parse_args()

    cloud = LocalCloud()
    started_cloud = not cloud.running()
    cloud.up()
    print(f"local cloud: {cloud.summary()}")
    try:
        env = airflow_env(cloud, PROJECT / ".airflow")
        print("airflow: preparing the metadata database (.airflow/)", flush=True)
        migrate(env)
        progress = Progress()
        print(f"airflow: running DAG {args.dag}", flush=True)
        result = run_dag(args.dag, env, on_line=progress)
        log_file = PROJECT / ".airflow" / "last-demo-run.log"
        log_file.write_text(result.output)
        return report(cloud, args.dag, result, progress, log_file)
    finally:
        if started_cloud and not args.keep_cloud:
            cloud.down()


def report(cloud: LocalCloud, dag_id: str, result, progress: Progress, log_file: Path) -> int:
    print()
    if not result.run_id:
        print(f"the DAG run did not finish; Airflow's output is in {log_file}")
        return 1
    build_id = build_id_for(dag_id, result.run_id)
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",  # noqa: S106
                            region_name="eu-west-1")
    ec2 = session.client("ec2", endpoint_url=cloud.endpoint)
    ssm = session.client("ssm", endpoint_url=cloud.endpoint)
    images = find_images(ec2, build_id)
    left = builder_resources(ec2, ssm, build_id)
    print(f"DAG run {result.run_id}: {result.state}  (build {build_id}; full log: {log_file})")
    for image in images:
        print(f"image: {image['ImageId']}  {image['Name']}  ({image['State']})")
        for tag in sorted(image.get("Tags", []), key=lambda t: t["Key"]):
            print(f"    {tag['Key']} = {tag['Value']}")
    if not images:
        print("image: none")
    if answer := ANSWER.search(result.task_logs.get("test_image", "")):
        print(f"the service's answer on the image's test boot (port {answer.group(1)}): {answer.group(2)}")
    elif "test_image" in result.task_logs:
        print("the service's answer on the image's test boot: not in the test_image log")
    print(f"builder resources: {len(progress.created)} created, {len(progress.deleted)} deleted, "
          f"{len(left)} left in the cloud")
    for kind, resource_id in left:
        print(f"    left behind: {kind} {resource_id}")
    return 0 if result.succeeded and images and not left else 1


if __name__ == "__main__":
    sys.exit(main())
