"""Build latency: one image build end to end on the local cloud with AWS-like state-change times, Image Factory
under a real Airflow scheduler vs HashiCorp Packer (amazon-ebs) measured in the same run.

``python -m bench.run build-latency`` (or ``python -m bench.build``, which writes bench/results-build-<date>.md),
from the project root with ``PYTHONPATH=plugins:.``.

The local cloud (a fresh one, in a temporary directory) emulates boot 20 s, stop 5 s, image 30 s and
terminate 5 s (localcloud/proxy.py), so a build cannot take less than 20 + 5 + 30 = 55 s to its image.
Both sides poll every 2 s (Image Factory: ``[image_factory] poll_interval``; Packer: ``AWS_POLL_DELAY_SECONDS``).
The API calls are counted by the local cloud's front, reset before each side.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3

from bench import Result, Row, install_debian_package
from localcloud.cloud import LocalCloud, free_port

PROJECT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
DAG_ID = "shopspinner-linux-image"
REGION = "eu-west-1"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
LATENCY = {"instance_running": 20, "instance_stopped": 5, "image_available": 30, "instance_terminated": 5}
MINIMUM = LATENCY["instance_running"] + LATENCY["instance_stopped"] + LATENCY["image_available"]
POLL = 2
BUILD_TIMEOUT = 900  # seconds one side may take at most
BUILD_TAG = "image-factory:build-id"


def _client(cloud: LocalCloud, service: str, direct: bool = False):
    """A client of the local cloud; ``direct`` goes to moto itself, so the bench's own reads are not counted."""
    return boto3.client(service, endpoint_url=cloud.moto_endpoint if direct else cloud.endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator


def _calls(cloud: LocalCloud) -> dict[str, int]:
    return {name: count for name, count in cloud.stats()["calls"].items()}


# --- Image Factory under a real scheduler ----------------------------------------------------------------------


def image_factory(cloud: LocalCloud, work: Path) -> dict:
    from bench import postgres
    from image_factory.build import TAG_COMPLETE, build_id_for
    from localcloud.airflow_stack import AirflowStack

    # A copy of the spec without its nightly schedule: unpausing it then starts no catch-up run.
    specs = work / "specs"
    specs.mkdir()
    spec = (PROJECT / "include/specs" / f"{DAG_ID}.yaml").read_text()
    (specs / f"{DAG_ID}.yaml").write_text("".join(line for line in spec.splitlines(keepends=True)
                                                  if not line.strip().startswith("schedule:")))

    # The builder subnet goes into the region's default VPC, where Packer's instance goes: a deployment's
    # builder VPC ([image_factory] builder_vpc_id), as in production, rather than a VPC per build.
    default_vpc = _client(cloud, "ec2", direct=True).describe_vpcs(
        Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]

    class Stack(AirflowStack):
        def env(self) -> dict[str, str]:
            return {**super().env(), "AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL": str(POLL),
                    "AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(specs),
                    "AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_ID": default_vpc,
                    "AIRFLOW__IMAGE_FACTORY__ROLES_FOLDER": str(PROJECT / "include/roles")}

    ec2 = _client(cloud, "ec2", direct=True)
    # Airflow's database on PostgreSQL, as a deployment has it: on SQLite the scheduler starts a new run only
    # once the clock has passed the whole second after its creation (SQLite's now() has no fraction).
    with postgres.server() as pg, Stack(work / "airflow", cloud, port=free_port(), database_url=pg.url,
                                        database_async_url=pg.async_url) as stack:
        stack.wait_until_healthy()
        stack.wait_for_dag(DAG_ID, timeout=300)
        cloud.reset_stats()
        started, started_wall = time.monotonic(), time.time()
        run = stack.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})
        stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        build_id = build_id_for(DAG_ID, run["dag_run_id"])
        to_complete = None
        state = run.get("state")
        for _ in range(BUILD_TIMEOUT):
            if to_complete is None:
                images = ec2.describe_images(Owners=["self"], Filters=[
                    {"Name": f"tag:{BUILD_TAG}", "Values": [build_id]},
                    {"Name": f"tag:{TAG_COMPLETE}", "Values": ["true"]}])["Images"]
                if images:
                    to_complete = time.monotonic() - started
                    image_id = images[0]["ImageId"]
            state = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")["state"]
            if state in ("success", "failed") or time.monotonic() - started > BUILD_TIMEOUT:
                break
            time.sleep(1)
        to_end = time.monotonic() - started
        calls = _calls(cloud)
        to_image = _available_after(cloud, image_id, started_wall) if to_complete is not None else None
        tasks = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    steps = {t["task_id"]: (t["state"], t.get("duration")) for t in tasks}
    # Seconds the run spent between its tasks up to the image (scheduling, task process start-up).
    spans = sorted((datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]))
                   for t in tasks if t.get("start_date") and t.get("end_date") and t["task_id"] != "tear_down")
    in_tasks = sum((end - start).total_seconds() for start, end in spans)
    if state != "success" or to_image is None:
        raise RuntimeError(f"the Image Factory build did not succeed: run {state}, tasks {steps}; "
                           f"logs in {stack.home}")
    return {"to_image": to_image, "to_complete": to_complete, "to_end": to_end, "calls": calls, "steps": steps,
            "in_tasks": in_tasks}


def _available_after(cloud: LocalCloud, image_id: str, started_wall: float) -> float:
    """Seconds from the start to the moment the local cloud shows the image available (its CreateImage answer
    plus the emulated image time): the same clock for both sides, whatever their polling."""
    return cloud.stats()["changes"][image_id]["done"] - started_wall


# --- Packer -----------------------------------------------------------------------------------------------


def packer(cloud: LocalCloud, work: Path, source_ami: str) -> dict:
    binary = shutil.which("packer") or _install_packer()
    if binary is None:
        return {"error": "packer is not installed and could not be (apt-get install -y packer)"}
    version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=60).stdout.strip()
    ec2 = _client(cloud, "ec2")
    # Packer 1.6.6 cannot tag its temporary key pair, and the local sshd trusts only key pairs tagged
    # image-factory:build-id: Packer gets a key pair imported here, with that tag.
    key = work / "packer-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    key_name = f"packer-bench-{int(time.time())}"
    ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=(work / "packer-key.pub").read_bytes(),
                        TagSpecifications=[{"ResourceType": "key-pair",
                                            "Tags": [{"Key": BUILD_TAG, "Value": key_name}]}])
    role_dir = work / "packer-role"  # the "instance" is this machine: the role writes only in here
    role_dir.mkdir()
    template = {
        "builders": [{
            "type": "amazon-ebs",
            "access_key": "testing", "secret_key": "testing", "region": REGION,
            "custom_endpoint_ec2": cloud.endpoint, "skip_region_validation": True,
            "skip_metadata_api_check": True,
            "source_ami": source_ami, "instance_type": "t3.small", "ami_name": key_name,
            "ssh_keypair_name": key_name, "ssh_private_key_file": str(key),
            "ssh_host": "127.0.0.1", "ssh_port": cloud.state().ssh_port, "ssh_username": getpass.getuser(),
            "ssh_timeout": "2m",
            "tags": {"Name": key_name, "team": "shopspinner"},
        }],
        "provisioners": [{
            "type": "shell",
            "scripts": [str(p) for p in sorted((PROJECT / "include/roles/appserver").glob("*.sh"))],
            "environment_vars": ["IMAGE_FACTORY_SERVER_ROLE=appserver", f"IMAGE_FACTORY_IMAGE_NAME={DAG_ID}",
                                 f"IMAGE_FACTORY_BUILD_ID={key_name}"],
            "execute_command": f"cd {role_dir} && chmod +x {{{{ .Path }}}} && {{{{ .Vars }}}} {{{{ .Path }}}}",
        }],
    }
    (work / "packer.json").write_text(json.dumps(template, indent=2))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "AWS_POLL_DELAY_SECONDS": str(POLL),
           "AWS_MAX_ATTEMPTS": "300", "PACKER_CACHE_DIR": str(work / "packer-cache"), "CHECKPOINT_DISABLE": "1",
           "PACKER_LOG": "1", "PACKER_LOG_PATH": str(work / "packer.log")}
    cloud.reset_stats()
    started, started_wall = time.monotonic(), time.time()
    try:
        result = subprocess.run([binary, "build", "-machine-readable", str(work / "packer.json")], env=env,
                                cwd=work, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"packer build did not end within {BUILD_TIMEOUT} s", "version": version}
    to_end = time.monotonic() - started
    calls = _calls(cloud)
    (work / "packer.out").write_text(result.stdout + result.stderr)
    to_complete = _packer_image_time(result.stdout, started_wall)
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [key_name]}])["Images"]
    if result.returncode != 0 or not images:
        tail = "\n".join(line for line in result.stdout.splitlines() if ",error," in line or "ui,error" in line)
        return {"error": f"packer build exited {result.returncode}: {tail[-800:] or result.stdout[-800:]}",
                "version": version, "calls": calls}
    return {"to_image": _available_after(cloud, images[0]["ImageId"], started_wall), "to_complete": to_complete,
            "to_end": to_end, "calls": calls, "version": version}


def _install_packer() -> str | None:
    """Debian's packer, installed when missing."""
    try:
        install_debian_package("packer")
    except RuntimeError as exc:
        print(exc, flush=True)
        return None
    return shutil.which("packer")


def _packer_image_time(machine_readable: str, started_wall: float) -> float | None:
    """Seconds from the start to Packer's first line after its wait for the AMI (machine-readable time stamps,
    whole seconds): "Adding tags to AMI", or the next step when there are no tags."""
    waiting = False
    for line in machine_readable.splitlines():
        stamp = line.split(",", 1)[0]
        if not stamp.isdigit():
            continue
        if "Waiting for AMI to become ready" in line:
            waiting = True
        elif waiting and ",ui,say," in line:
            return max(0.0, int(stamp) - started_wall)
    return None


# --- the table ----------------------------------------------------------------------------------------------


def _ec2(calls: dict[str, int]) -> int:
    return sum(count for action, count in calls.items() if action.startswith("ec2:"))


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _ratio(peer: float | None, ours: float | None) -> str:
    return "-" if not peer or not ours else f"{peer / ours:.2f}"


def _warm_up(cloud: LocalCloud) -> str:
    """The origin AMI, resolved in the emulator itself (moto, not counted) before either side is timed, and
    an instance with an encrypted root volume launched and terminated there: the emulator's first-call costs
    (loading its public parameters and images, its first encrypted volume: 0.1-0.3 s) fall on neither side."""
    ec2 = _client(cloud, "ec2", direct=True)
    source_ami = _client(cloud, "ssm", direct=True).get_parameter(Name=AL2023)["Parameter"]["Value"]
    root = ec2.describe_images(ImageIds=[source_ami])["Images"][0]["RootDeviceName"]
    instance = ec2.run_instances(ImageId=source_ami, MinCount=1, MaxCount=1, BlockDeviceMappings=[
        {"DeviceName": root, "Ebs": {"Encrypted": True, "VolumeSize": 8}}])["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[instance])
    return source_ami


def measure() -> tuple[dict, dict]:
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    cloud = LocalCloud(work / "local-cloud")
    # Only the region built in: the local sshd's key lookup asks every region of the local cloud at each login.
    cloud.up(regions=REGION)
    try:
        cloud.configure(latency=LATENCY)
        print(f"local cloud {cloud.endpoint}, latency {LATENCY}; work in {work}", flush=True)
        source_ami = _warm_up(cloud)
        print("Image Factory: one shopspinner-linux-image build under the scheduler ...", flush=True)
        ours = image_factory(cloud, work)
        print(f"  {ours}", flush=True)
        print("Packer: the same build (amazon-ebs) ...", flush=True)
        try:
            peer = packer(cloud, work, source_ami)
        except Exception as exc:  # a failing peer is a result
            peer = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  {peer}", flush=True)
    finally:
        cloud.down()
    return ours, peer


def result(ours: dict, peer: dict) -> Result:
    name = "build-latency"
    note_peer = peer.get("error", "")
    rows = [
        Row(name, "time to image available", _s(ours["to_image"]), _s(peer.get("to_image")),
            _ratio(peer.get("to_image"), ours["to_image"]),
            f"emulated minimum {MINIMUM} s; ours/minimum {ours['to_image'] / MINIMUM:.2f}"
            + (f", Packer/minimum {peer['to_image'] / MINIMUM:.2f}" if peer.get("to_image") else "")),
        Row(name, "time until the build knows", _s(ours["to_complete"]), _s(peer.get("to_complete")),
            _ratio(peer.get("to_complete"), ours["to_complete"]),
            "image tagged complete / Packer's next line after its AMI wait (whole seconds)"),
        Row(name, "time to teardown done", _s(ours["to_end"]), _s(peer.get("to_end")),
            _ratio(peer.get("to_end"), ours["to_end"]), "trigger to run success / packer build exit"),
        Row(name, "EC2 API calls", str(_ec2(ours["calls"])), str(_ec2(peer["calls"])) if peer.get("calls") else "-",
            _ratio(_ec2(peer.get("calls", {})), _ec2(ours["calls"])), "the goal's count: no more than Packer's"),
        Row(name, "EC2+SSM API calls", str(sum(ours["calls"].values())),
            str(sum(peer["calls"].values())) if peer.get("calls") else "-",
            _ratio(sum(peer.get("calls", {}).values()), sum(ours["calls"].values())), note_peer[:200]),
    ]
    actions = sorted(set(ours["calls"]) | set(peer.get("calls", {})))
    lines = ["| API call | Image Factory | Packer |", "|---|---:|---:|"]
    lines += [f"| {a} | {ours['calls'].get(a, 0)} | {peer.get('calls', {}).get(a, 0) if 'calls' in peer else '-'} |"
              for a in actions]
    steps = ", ".join(f"{task} {d:.1f} s" for task, (_, d) in ours["steps"].items() if d is not None)
    details = [
        f"**build-latency.** One `{DAG_ID}` build on a fresh local cloud emulating AWS state-change times "
        f"(boot {LATENCY['instance_running']} s, stop {LATENCY['instance_stopped']} s, image "
        f"{LATENCY['image_available']} s, terminate {LATENCY['instance_terminated']} s: {MINIMUM} s to an image at "
        f"the least), both sides polling every {POLL} s. Image Factory: AirflowStack (scheduler, dag-processor, "
        "triggerer, api-server, LocalExecutor on SQLite), the run created by the REST API, the end when the run "
        "is success. Packer: `packer build` of an amazon-ebs template with `custom_endpoint_ec2` = the local "
        "cloud and a key pair imported beforehand with the image-factory:build-id tag (Packer 1.6.6 cannot tag "
        f"its temporary key pair, and the local sshd trusts only tagged key pairs). Packer: "
        f"{peer.get('version', '?')}. *Time to image available* is read from the local cloud for both sides: the "
        "moment its CreateImage answer plus the emulated image time have passed (when DescribeImages first shows "
        "the image available), whatever each side's polling. *Time until the build knows* adds each side's lag "
        "in seeing it: Image Factory's image tagged image-factory:complete=true (read from the emulator every "
        "second), Packer's first line after 'Waiting for AMI to become ready' (its time stamps are whole seconds).",
        f"Image Factory step durations (the last try's, as the REST API shows them): {steps}. Up to the image "
        f"tagged complete, {ours['in_tasks']:.1f} s of the {ours['to_complete']:.1f} s were spent inside tasks "
        "(deferred waits included) and the rest before the first and between tasks (scheduling, task process "
        "start-up).",
        "Not alike on both sides: Image Factory resolves the origin AMI from SSM, makes and deletes a subnet (in "
        "the default VPC, given as the deployment's builder VPC), a security group with its own ingress and "
        "egress rules, a key pair and an SSM parameter holding its private key, all counted; Packer was given "
        "the AMI id (resolved by the benchmark before counting) and the key pair (imported before counting), "
        "makes only a temporary security group and uses the default VPC. Image Factory runs each step as an "
        "Airflow task (a process each, under the scheduler), Packer is one process.",
        "API calls by action (counted by the local cloud's front, reset before each side):\n\n" + "\n".join(lines),
    ]
    if note_peer:
        details.append(f"Packer did not give a figure: {note_peer}")
    return Result(rows, details)


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    return result(*measure())


def main() -> int:
    from bench.run import machine, publish, report

    info = machine()
    started = time.perf_counter()
    outcome = run(argparse.Namespace())
    publish(report(info, outcome.rows, outcome.details, time.perf_counter() - started),
            HERE / f"results-build-{datetime.now(UTC):%Y-%m-%d}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
