"""Two costs every build pays, each against the way it was paid before, in the same run:

- **test_image's pytest run**: the CPU of one ``pytest.main`` over a tests folder, in a process that has
  imported what a task process has (Airflow's Task SDK, the DAG module, paramiko, pytest, testinfra), with
  the arguments tools/tests.py gives (``pytest_args``) against those it gave until 2026-12-04 (pytest's
  installed plugins autoloaded, its unraisable-exception plugins on). Each run in a fresh process whose heap
  is frozen out of the collector's way (as a Celery task process's inherited heap is); median of ``REPEAT``.
- **the local cloud's API**: moto's CPU per EC2 call (DescribeInstances, DescribeImages, CreateTags against
  200 instances and 50 images), localcloud.moto_server against moto's own server as shipped.

``python -m bench.run overheads``: about a minute; no machines, nothing but loopback.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

from bench import Result, Row, process_cpu_seconds
from localcloud.cloud import free_port, wait_for_port

PROJECT = Path(__file__).resolve().parent.parent
REPEAT = 5
REGION = "eu-west-1"
INSTANCES, IMAGES, CALLS = 200, 50, 900

#: The arguments tools/tests.py gave pytest until 2026-12-04.
EARLIER_ARGS = '''[*files, "-q", "-p", "no:cacheprovider", "-p", "no:testinfra", "--import-mode=importlib",
                   "--rootdir", str(folder), "-o", "addopts=", "-o", "python_files=test_*.py"]'''
PYTEST_RUN = f'''
import resource, sys
from pathlib import Path
import gc
import airflow.sdk, paramiko, pytest, testinfra.host  # what a task process has imported
import image_factory.dag
gc.freeze()  # as Airflow's Celery worker before it forks its pool: the task processes' inherited heap
from image_factory.tools.tests import pytest_args
folder = Path(sys.argv[1])
files = sorted(str(path) for path in folder.glob("test_*.py"))
args = pytest_args(folder) if sys.argv[2] == "ours" else {EARLIER_ARGS}
usage = resource.getrusage(resource.RUSAGE_SELF)
before = usage.ru_utime + usage.ru_stime
code = pytest.main(args)
usage = resource.getrusage(resource.RUSAGE_SELF)
print("cpu", usage.ru_utime + usage.ru_stime - before, "exit", int(code))
'''
TESTS = '''
def test_arithmetic():
    assert sum(range(10)) == 45


def test_text():
    assert "image".upper() == "IMAGE"
'''


def _pytest_cpu(folder: Path, side: str) -> float:
    env = {**os.environ, "PYTHONPATH": f"{PROJECT / 'plugins'}:{PROJECT}"}
    done = subprocess.run([sys.executable, "-c", PYTEST_RUN, str(folder), side], capture_output=True, text=True,
                          env=env, timeout=120, cwd=folder)
    line = next((line for line in done.stdout.splitlines() if line.startswith("cpu ")), None)
    if line is None or not line.endswith("exit 0"):
        raise RuntimeError(f"overheads: the {side} pytest run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(line.split()[1])


def _moto_cpu_per_call(command: list[str], log: Path) -> float:
    """Seconds of the server's CPU per call, over ``CALLS`` calls (its output in ``log``)."""
    port = free_port()
    with log.open("w") as output:
        server = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], cwd=PROJECT,
                                  env={**os.environ, "PYTHONPATH": str(PROJECT)}, stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, log, timeout=60)
        ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                           aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106 the emulator's
        origin = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        vpc = ec2.create_vpc(CidrBlock="198.18.16.0/20")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="198.18.16.0/22")["Subnet"]["SubnetId"]
        instances = [i["InstanceId"] for _ in range(INSTANCES // 20) for i in ec2.run_instances(
            ImageId=origin, MinCount=20, MaxCount=20, SubnetId=subnet)["Instances"]]
        images = [ec2.create_image(InstanceId=instances[n], Name=f"bench-{n}")["ImageId"] for n in range(IMAGES)]
        before = process_cpu_seconds(server.pid)
        for n in range(CALLS // 9 * 4):
            found = ec2.describe_instances(InstanceIds=[instances[n % INSTANCES]])["Reservations"]
            assert found[0]["Instances"][0]["InstanceId"] == instances[n % INSTANCES]
            assert ec2.describe_images(ImageIds=[images[n % IMAGES]])["Images"][0]["ImageId"] == images[n % IMAGES]
            if n % 4 == 0:
                ec2.create_tags(Resources=[images[n % IMAGES]], Tags=[{"Key": "n", "Value": str(n)}])
        return (process_cpu_seconds(server.pid) - before) / CALLS
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    with tempfile.TemporaryDirectory(prefix="bench-overheads-") as work:
        folder = Path(work) / "tests"
        folder.mkdir()
        (folder / "test_sample.py").write_text(TESTS)
        runs = {side: [_pytest_cpu(folder, side) for _ in range(REPEAT)] for side in ("ours", "earlier")}
        print(f"  pytest run CPU: ours {runs['ours']}, earlier {runs['earlier']}", flush=True)
        moto_ours = _moto_cpu_per_call([sys.executable, "-m", "localcloud.moto_server", "--regions", REGION],
                                       Path(work) / "moto-local-cloud.log")
        moto_shipped = _moto_cpu_per_call([sys.executable, "-m", "moto.server"], Path(work) / "moto-shipped.log")
    ours, earlier = statistics.median(runs["ours"]), statistics.median(runs["earlier"])
    print(f"  moto CPU per call: local cloud {moto_ours * 1000:.2f} ms, as shipped {moto_shipped * 1000:.2f} ms",
          flush=True)
    rows = [
        Row("overheads", f"test_image's pytest run: CPU (median of {REPEAT}, two tests)", f"{ours:.3f} s",
            f"{earlier:.3f} s", f"{earlier / ours:.2f}", "peer: the arguments of 2026-12-04 (installed plugins "
            "autoloaded, unraisable-exception plugins on)"),
        Row("overheads", f"local cloud: moto CPU per EC2 call ({CALLS} calls, {INSTANCES} instances)",
            f"{moto_ours * 1000:.2f} ms", f"{moto_shipped * 1000:.2f} ms", f"{moto_shipped / moto_ours:.2f}",
            "peer: moto's own server as shipped; ours: localcloud.moto_server (its lookups made once)"),
    ]
    details = ["**overheads.** test_image's pytest run: one `pytest.main` over a folder of two tests, each in a "
               "fresh process that has imported Airflow's Task SDK, the DAG module, paramiko, pytest and "
               "testinfra and then frozen its heap out of the garbage collector's way (as a Celery task process "
               "has: Airflow's worker calls gc.freeze() before forking its pool), with `tools.tests.pytest_args` "
               "against the arguments used "
               f"until 2026-12-04; CPU of the call (getrusage), median of {REPEAT}. moto: the server's CPU "
               f"(/proc) over {CALLS} calls (DescribeInstances and DescribeImages of one id each, a CreateTags "
               f"every fourth round) against {INSTANCES} instances and {IMAGES} images, each server on loopback."]
    return Result(rows, details)
